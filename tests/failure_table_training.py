"""The failure table's cases about what happens during and between runs (``tests/test_failure_table.py``
runs them through ``python train.py``): rows ``ckpt_cadence`` to ``bad_cache`` of docs/failures.md's table —
exploding updates with periodic checkpoints, re-runs of a run folder (another config, a finished run, a
killed sweep), group baselines with one sample, missing folders, NaN / constant / huge rewards, a crash or
``kill -9`` mid-run or mid-save and the same command again, bad checkpoints and r_ref caches. Each case is
a ``check(w, tmp, *args)`` added to :data:`CASES` with ``@case(row, name)`` or ``refused(…)`` (exit
status 2).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_cli import (
    ITERATIONS,
    POISON,
    Cases,
    Evil,
    World,
    csv_logger,
    expect,
    logged,
    same_result,
    same_weights,
    sha,
    snapshot,
    write_jsonl,
)

from lit_rlhf.run.errors import EXIT_USER_ERROR

CASES = Cases()
case, refused = CASES.case, CASES.refused


# ---- ckpt_cadence and ratio: every update explodes (max_ratio < 1): skipped, counted, checkpoints kept
def exploding(w: World) -> Path:
    """4 iterations whose every policy update is skipped; checkpoints every 2 iterations, recorded."""
    root = w.tmp / "shared" / "exploding"
    return w.shared("exploding", lambda: [
        *w.ppo(), "task.iterations=4", "task.val_check_interval=4", "task.checkpoint_every_n_steps=2",
        "task.module.max_ratio=0.5", "+callbacks.saves._target_=train_cli.RecordSaves",
        f"+callbacks.saves.path={root / 'saves.json'}", *csv_logger(root / "run")])  # fmt: skip


@case("ckpt_cadence", "every_periodic_checkpoint_written")
def cadence(w: World, tmp: Path) -> None:
    run_dir = exploding(w)
    # counted in iterations: a cadence of optimizer steps (4 an iteration here) would save at 1, 2, 3, 4
    assert json.loads((run_dir.parent / "saves.json").read_text()) == [2, 4]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["ppo_iteration"] == 4


@case("ratio", "updates_skipped_and_counted")
def ratio(w: World, tmp: Path) -> None:
    run_dir = exploding(w)
    assert logged(run_dir, "ppo/skipped_updates")[-1] == 4 * 2 * 2  # iterations × epochs × minibatches
    assert same_weights(w.m["policy"], run_dir / "model")  # the actor never moved


# ---- other_record and finished: a run folder is continued only by the command that made it
@case("other_record", "other_config")
def other_config(w: World, tmp: Path) -> None:
    run_dir = w.finished_rm()
    before = snapshot(run_dir)
    run = w.train_py(tmp, *w.rm(w.pairs), "seed=1", f"hydra.run.dir={run_dir}")
    expect(run, EXIT_USER_ERROR, str(run_dir), "seed: 0 → 1", "delete or rename", "resume=force")
    assert snapshot(run_dir) == before


@case("other_record", "last_ckpt_without_run_json")
def no_record(w: World, tmp: Path) -> None:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    ckpt = shutil.copy(w.finished_rm() / "checkpoints" / "last.ckpt", tmp / "run" / "checkpoints")
    expect(w.train_py(tmp, *w.rm(w.pairs)), EXIT_USER_ERROR, "run.json: absent", "resume=force")
    assert sha(Path(ckpt)) == sha(w.finished_rm() / "checkpoints" / "last.ckpt")
    assert not (tmp / "run" / "run.json").exists()


@case("finished", "not_run_again")
def finished(w: World, tmp: Path) -> None:
    run_dir = w.finished_rm()
    before = snapshot(run_dir)
    run = w.train_py(tmp, *w.rm(w.pairs), f"hydra.run.dir={run_dir}")
    expect(run, 0, f"finished before with val/rm_acc = {done_value(run_dir)}; not run again")
    assert snapshot(run_dir) == before


def done_value(run_dir: Path) -> float:
    return json.loads((run_dir / "done.json").read_text())["value"]


# ---- sweep_kill: kill -9 in job 2 of 4, the same -m command again = an uninterrupted sweep
@case("sweep_kill", "same_command_resumes")
def sweep_kill(w: World, tmp: Path) -> None:
    sweep = [*w.resumable(), "task.checkpoint_every_n_steps=1", "task.module.kl_coef=0.05,0.1,0.2,0.4"]
    killed = w.train_py(tmp / "a", *sweep, multirun=True, env={"LIT_RLHF_TEST_FAULT": "kill@3@job1"})
    assert killed.rc == -9, killed.out[-3000:]
    (folder,) = (tmp / "a" / "multirun" / "ppo").iterdir()
    assert (folder / "0" / "done.json").is_file() and not (folder / "1" / "done.json").exists()
    assert not (folder / "2").exists() and not (folder / "3").exists()  # the sweep died with job 1
    assert torch.load(folder / "1" / "checkpoints" / "last.ckpt", weights_only=True)["ppo_iteration"] == 3
    job0 = stamps(folder / "0")
    again = w.train_py(tmp / "a", *sweep, multirun=True)
    expect(again, 0, f"{folder / '0'}: finished before with ppo/kl", f"resuming from {folder / '1'}")
    assert [p.name for p in (tmp / "a" / "multirun" / "ppo").iterdir()] == [folder.name]  # the same folder
    assert stamps(folder / "0") == job0  # the finished job was not run again
    expect(w.train_py(tmp / "b", *sweep, multirun=True), 0)  # uninterrupted
    for job in "0123":
        a, b = folder / job, tmp / "b" / "multirun" / "ppo" / folder.name / job
        assert done_value(a) == done_value(b), f"job {job}: the metrics differ"
        assert same_weights(a / "model", b / "model"), f"job {job}: the policies differ"


def stamps(job: Path) -> list[int]:
    """Modification times of a job's result files: unchanged if the job was not run again."""
    return [(job / f).stat().st_mtime_ns for f in ("done.json", "run.json", "model/model.safetensors")]


# ---- one_sample: group baselines need 2 samples per prompt
for _task in ("grpo", "rloo"):
    refused("one_sample", _task, lambda w, t, task=_task: [*w.ppo(), f"task={task}",
            "task.module.samples_per_prompt=1"], "task.module.samples_per_prompt")  # fmt: skip


# ---- missing_folder: the message names the key that points at the folder
refused("missing_folder", "policy", lambda w, t: [*w.ppo(), "task.policy_path=/no/such/sft"],
        "/no/such/sft", "(task.policy_path)")  # fmt: skip
refused("missing_folder", "reward_model", lambda w, t: [*w.ppo(), "reward.helpful.path=/no/such/rm"],
        "/no/such/rm", "(reward.helpful.path)")  # fmt: skip
refused("missing_folder", "init_from", lambda w, t: [*w.rm(w.pairs), "task.init_from=/no/such/dir"],
        "task.init_from=/no/such/dir")  # fmt: skip
refused("missing_folder", "causal_lm_as_reward_model",
        lambda w, t: [*w.ppo(), f"reward.helpful.path={w.m['policy']}"],
        "reward.helpful.path: ", "not a reward model")  # fmt: skip


# ---- nan_batch and nan_streak: reward models that score NaN
@case("nan_batch", "skipped_counted_training_goes_on")
def nan_batch(w: World, tmp: Path) -> None:
    from lit_rlhf.data.datamodules import CycledBatchSampler  # noqa: PLC0415

    prompts = [f"about cats {i}" + (POISON if i == 0 else "") for i in range(8)]  # prompt 0 scores NaN
    train = write_jsonl(tmp / "train.jsonl", [{"prompt": p} for p in prompts])
    val = write_jsonl(tmp / "val.jsonl", [{"prompt": f"about cats {i}", "id": 100 + i} for i in range(4)])
    batches = list(CycledBatchSampler(8, 2, num_batches=ITERATIONS, seed=0))  # what the run will draw
    expected = [k for k, batch in enumerate(batches) if 0 in batch]
    assert 0 < len(expected) < ITERATIONS and len(expected) < 3  # some skipped, never 3 in a row
    run = w.train_py(tmp, *w.ppo("policy_nan", "rm_poison", train), f"data.val_path={val}",
                     f"task.iterations={ITERATIONS}", f"task.val_check_interval={ITERATIONS}",
                     f"task.checkpoint_every_n_steps={ITERATIONS}", "task.datamodule.batch_size=2",
                     *csv_logger(tmp / "run"))  # fmt: skip
    expect(run, 0)
    skipped = re.findall(r"ppo iteration (\d+) skipped: 1 non-finite reward-model scores", run.out)
    assert [int(k) for k in skipped] == expected
    assert logged(tmp / "run", "ppo/skipped_batches")[-1] == len(expected)
    after = load_file(tmp / "run" / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in after.values())
    ckpt = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", weights_only=True)  # the end of the run
    assert ckpt["ppo_iteration"] == ITERATIONS
    critic = [v for k, v in ckpt["state_dict"].items() if k.startswith("critic.")]
    assert critic and all(torch.isfinite(v).all() for v in critic)  # the critic too
    assert not same_weights(w.m["policy_nan"], tmp / "run" / "model")  # the other batches trained it


refused("nan_streak", "stops_naming_the_key", lambda w, t: [*w.ppo(rm="rm_nan"), "task.iterations=4",
        "task.val_check_interval=4"],  # a first evaluation after 2 iterations would stop on NaN scores first
        "3 consecutive PPO batches had non-finite values", "non-finite reward-model scores",
        "task.module.max_bad_batches")  # fmt: skip


# ---- extreme_reward: constant rewards whitened, |r| ~ 1e4 through log-sigmoid
@case("extreme_reward", "whiten_identical_rewards")
def whiten_constant(w: World, tmp: Path) -> None:
    expect(w.train_py(tmp, *w.ppo(rm="rm_const"), "+transform=whiten", *csv_logger(tmp / "run")), 0)
    assert set(logged(tmp / "run", "reward/helpful_raw")) == {0.0}
    assert set(logged(tmp / "run", "reward/helpful_transformed")) == {0.0}  # zeros, not NaN
    assert logged(tmp / "run", "ppo/skipped_batches") == [0.0, 0.0]


@case("extreme_reward", "logsigmoid_of_huge_margins")
def logsigmoid_huge(w: World, tmp: Path) -> None:
    expect(w.train_py(tmp, *w.ppo(rm="rm_huge"), "+transform=logsigmoid", *csv_logger(tmp / "run")), 0)
    assert max(abs(m) for m in logged(tmp / "run", "reward/helpful_margin")) > 1e3  # the case is real
    u = logged(tmp / "run", "reward/helpful_transformed")
    assert len(u) == 2 and all(-1e6 < x <= 0 for x in u)  # finite and ≤ 0
    assert logged(tmp / "run", "ppo/skipped_batches") == [0.0, 0.0]


# ---- crash, kill, kill_in_save: the same command again ends where an uninterrupted run ends
def interrupted_then_rerun(w: World, tmp: Path, fault: str, status: int) -> None:
    first = w.train_py(tmp, *w.resumable(), env={"LIT_RLHF_TEST_FAULT": fault})
    assert first.rc == status, first.out[-3000:]
    last = tmp / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["ppo_iteration"] == 2  # the last one before the fault
    expect(w.train_py(tmp, *w.resumable()), 0, f"resuming from {last}")
    same_result(tmp / "run", w.uninterrupted())


@case("crash", "rerun_equals_uninterrupted")
def crash(w: World, tmp: Path) -> None:
    interrupted_then_rerun(w, tmp, "crash@3", 1)  # the simulated crash is a bug: it keeps its traceback


@case("kill", "rerun_continues_to_the_end")
def kill(w: World, tmp: Path) -> None:
    interrupted_then_rerun(w, tmp, "kill@3", -9)


@case("kill_in_save", "previous_checkpoint_stays_loadable")
def kill_in_save(w: World, tmp: Path) -> None:
    first = w.train_py(tmp, *w.resumable(), env={"LIT_RLHF_TEST_FAULT": "kill_in_save@4"})
    assert first.rc == -9, first.out[-3000:]
    ckpts = tmp / "run" / "checkpoints"
    (partial,) = ckpts.glob(".last.ckpt.tmp*")  # killed half-way through writing iteration 4's
    assert partial.read_bytes() == b"half a checkpoint"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["ppo_iteration"] == 2
    expect(w.train_py(tmp, *w.resumable()), 0, f"resuming from {ckpts / 'last.ckpt'}")
    same_result(tmp / "run", w.uninterrupted())


# ---- bad_ckpt: a missing file, another task's checkpoint, a checkpoint holding code
refused("bad_ckpt", "missing", lambda w, t: [*w.ppo(), "ckpt_path=/no/such.ckpt"],
        "ckpt_path=/no/such.ckpt does not exist")  # fmt: skip


@case("bad_ckpt", "other_task")
def other_task(w: World, tmp: Path) -> None:
    ckpt = Path(shutil.copy(w.finished_rm() / "checkpoints" / "last.ckpt", tmp / "rm.ckpt"))
    before = sha(ckpt)
    run = w.train_py(tmp, *w.ppo(), f"ckpt_path={ckpt}")
    expect(run, EXIT_USER_ERROR, "error: this checkpoint was not written by task=ppo", "check ckpt_path")
    assert sha(ckpt) == before


@case("bad_ckpt", "pickled_code")
def pickled_code(w: World, tmp: Path) -> None:
    torch.save({"state_dict": {}, "ppo_iteration": 1, "x": Evil(tmp / "ran")}, ckpt := tmp / "evil.ckpt")
    before = sha(ckpt)
    run = w.train_py(tmp, *w.ppo(), f"ckpt_path={ckpt}")
    expect(run, EXIT_USER_ERROR, f"error: cannot resume from {ckpt}", "weights_only=True", "ckpt_path")
    assert not (tmp / "ran").exists() and sha(ckpt) == before


# ---- bad_cache: a damaged r_ref cache is recomputed; code in it never runs
def damaged_cache(w: World, tmp: Path, damage: Callable[[Path], None]) -> None:
    cache = Path(shutil.copytree(w.uninterrupted().parents[1] / "uninterrupted_cache", tmp / "cache"))
    files = sorted((cache / "reference").glob("samples-*.pt"))
    assert files
    for f in files:
        damage(f)
    run = w.train_py(tmp, *w.resumable(), cache=cache)
    expect(run, 0, *(f"reference cache {f} is unreadable" for f in files), "recomputing")
    for f in files:  # rewritten: tensors that load with weights_only=True
        assert all(isinstance(v, torch.Tensor) for v in torch.load(f, weights_only=True).values())
    same_result(tmp / "run", w.uninterrupted())  # the same r_ref again


@case("bad_cache", "corrupt")
def corrupt_cache(w: World, tmp: Path) -> None:
    damaged_cache(w, tmp, lambda f: f.write_bytes(f.read_bytes()[:100]))


@case("bad_cache", "pickled_code")
def code_in_cache(w: World, tmp: Path) -> None:
    damaged_cache(w, tmp, lambda f: torch.save({"helpful": Evil(tmp / "ran")}, f))
    assert not (tmp / "ran").exists()
