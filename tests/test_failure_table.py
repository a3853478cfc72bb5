"""Every case of the README's failure table, through the real command line: ``python train.py …``.

:data:`ROWS` names the table's rows in order (:func:`test_cases_mirror_the_readme_table` checks them
against README.md one to one) and :data:`CASES` holds every case of every row, test ids ``<row>-<case>``.
Each asserts no traceback in stdout + stderr, the exit status (2 for a user error, 0 where the case is
handled and training goes on; 1 for a ``-m`` sweep with a failed job, as Hydra ends it), the message
(file:line:field or the config key) and, where files exist, that they are unchanged. Of the ``cli_error``
row's six, three are cases of their own rows: ``data_line-malformed_json``, ``bad_ckpt-missing`` and
``unknown_option-transform``.

The runs are tiny (random 2-layer GPT-2 / Llama folders, 40-line JSONL files, 2–6 PPO iterations), so
each costs about the start-up of an interpreter importing torch, Lightning and transformers (~7 s on an
idle core): the parametrised test is ``slow``. Faults inside a run — a crash, ``kill -9`` mid-iteration
or half-way through writing a checkpoint — come from a Lightning callback given on the command line and
armed by an environment variable, so the re-run is the same command; NaN, constant and huge rewards come
from reward-model folders whose weights were edited on disk (``tests/train_cli.py``).

What no command line can show, and where it is tested instead:

* ``sampling``: that rollouts follow softmax(logits / T) although a folder's ``generation_config.json``
  ships a repetition penalty, an n-gram ban, top-k and min-p is a property of the sampled distribution,
  not of a message or file a run leaves (``test_real_models.py``); here such a folder trains cleanly and
  ``task.module.top_k`` / ``top_p`` are refused.
* ``long_prompt``: which tokens truncation keeps is internal to the datamodule (``test_datamodules.py``);
  here a run on prompts longer than the context trains and says so, naming
  ``task.datamodule.max_prompt_tokens``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file
from train_cli import (
    ITERATIONS,
    POISON,
    ROOT,
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

from lit_rlhf.errors import EXIT_USER_ERROR, UserError, config_errors_exit_2

BAD = ROOT / "tests" / "bad_inputs"

# the README table's rows, in order: id → how its first cell begins
ROWS = {
    "data_line": "malformed JSON, line not an object",
    "data_file": "empty file, blank-lines-only file",
    "long_prompt": "prompt longer than the context",
    "unknown_option": "unknown group option",
    "cli_error": "any user-input error on the command line",
    "conversation": "conversational data:",
    "hint": "every hint's suggested override",
    "sampling": "a checkpoint's `generation_config.json`",
    "ckpt_cadence": "a skipped update (ratio explosion) with periodic checkpoints",
    "other_record": "re-run of a run folder whose `run.json` records another config",
    "finished": "the same command after the run finished",
    "sweep_kill": "`kill -9` during job 2 of a 4-job `-m` sweep",
    "one_sample": "`task=grpo` / `rloo` with `samples_per_prompt=1`",
    "missing_folder": "policy or reward-model folder missing",
    "nan_batch": "NaN/inf from a reward model",
    "nan_streak": "NaN/inf in K = 3 consecutive batches",
    "ratio": "ratio explosion (max π/π_old",
    "extreme_reward": "all-identical rewards in whitening",
    "crash": "crash mid-training, same command re-run",
    "kill": "`kill -9` mid-training, same command re-run",
    "kill_in_save": "kill during a checkpoint save",
    "bad_ckpt": "`ckpt_path` missing; checkpoint of another task",
    "bad_cache": "corrupt r_ref cache; a cache holding pickled code",
}


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> World:
    torch.set_num_threads(1)
    return World(tmp_path_factory.mktemp("failure_table"))


# ------------------------------------------------------------------ the cases
@dataclass(frozen=True)
class Case:
    row: str  # a key of ROWS
    name: str
    check: Callable[..., None]  # check(w, tmp, *args)
    args: tuple = ()


CASES: list[Case] = []


def case(row: str, name: str, *args):
    """Register the decorated ``check(w, tmp, *args)`` as the case ``<row>-<name>``."""

    def register(check: Callable[..., None]) -> Callable[..., None]:
        CASES.append(Case(row, name, check, args))
        return check

    return register


def refused(row: str, name: str, overrides: Callable[[World, Path], list[str]], *fragments: str) -> None:
    """A case that must stop with exit status 2 and ``lit_rlhf: error: …`` holding every fragment."""

    def check(w: World, tmp: Path) -> None:
        expect(w.train_py(tmp, *overrides(w, tmp)), EXIT_USER_ERROR, "lit_rlhf: error: ", *fragments)

    CASES.append(Case(row, name, check))


# ---- data_line: a bad line names file:line:field (9), or is skipped with on_error=skip
DATA_LINES = [  # (file in tests/bad_inputs, task, line, field, what is wrong)
    ("malformed_json", "reward_model", 2, None, "malformed JSON"),
    ("not_an_object", "reward_model", 2, None, "expected a JSON object"),
    ("missing_field", "reward_model", 3, "rejected", "missing"),
    ("empty_field", "reward_model", 2, "chosen", "expected a non-empty string, got an empty string"),
    ("wrong_type", "reward_model", 2, "chosen", "expected a non-empty string, got int"),
    ("chosen_equals_rejected", "reward_model", 2, "rejected", "identical to 'chosen'"),
    ("hh_no_assistant", "reward_model", 2, "rejected", "no '\\n\\nAssistant:' turn"),
    ("hh_prompt_mismatch", "reward_model", 3, "rejected", "differs"),
    ("sft_empty_response", "sft", 2, "response", "non-empty string"),
]


def bad_line(w: World, tmp: Path, name: str, task: str, line: int, field: str | None, problem: str) -> None:
    path = BAD / f"{name}.jsonl"
    before = sha(path)
    run = w.train_py(tmp, *(w.rm(path) if task == "reward_model" else w.sft_job(path)))
    where = f"{path}:{line}: field '{field}': " if field else f"{path}:{line}: "
    expect(run, EXIT_USER_ERROR, f"lit_rlhf: error: {where}", problem, "task.datamodule.on_error=skip")
    assert sha(path) == before


for _name, *_rest in DATA_LINES:
    case("data_line", _name, _name, *_rest)(bad_line)


@case("data_line", "on_error_skip")
def skip_bad_lines(w: World, tmp: Path) -> None:
    bad = [
        '{"prompt": "p", "chosen": 7, "rejected": "no"}',
        '{"prompt": "p"',
        '{"prompt": "p", "chosen": "a", "rejected": "a"}',
    ]
    path = tmp / "mixed.jsonl"
    path.write_text(w.pairs.read_text() + "\n".join(bad) + "\n")
    run = w.train_py(tmp, *w.rm(path), "task.datamodule.on_error=skip")
    expect(run, 0, f"skipped 3 of 43 lines in {path}: line 41 (chosen: expected a non-empty string")
    assert run.out.count("skipped 3 of 43 lines") == 1  # logged once, not once per line
    assert (tmp / "run" / "model" / "config.json").is_file()


# ---- data_file: empty, blank-only, missing, non-UTF-8, a 1.5 MB line, a BOM (accepted)
def bad_file(w: World, tmp: Path, make: Callable[[Path], Path], *fragments: str) -> None:
    path = make(tmp)
    before = sha(path) if path.is_file() else None
    run = w.train_py(tmp, *w.rm(path))
    expect(run, EXIT_USER_ERROR, *(f.format(path=path) for f in fragments))
    assert (sha(path) if path.is_file() else None) == before


def latin1(tmp: Path) -> Path:
    good = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    (path := tmp / "latin1.jsonl").write_bytes(good + good.replace(b'"a"', b'"caf\xe9"'))  # é at byte 15
    return path


def huge_line(tmp: Path) -> Path:
    huge = {"prompt": "a", "chosen": "x" * 1_500_000, "rejected": "c"}
    return write_jsonl(tmp / "huge.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, huge])


for _name, _make, _fragments in [
    ("empty", lambda tmp: BAD / "empty.jsonl", ["lit_rlhf: error: {path}: ", "empty (no JSON records)"]),
    ("blank_lines_only", lambda tmp: BAD / "blank_lines_only.jsonl", ["{path}: ", "empty (no JSON records)"]),
    ("missing", lambda tmp: tmp / "nope.jsonl", ["lit_rlhf: error: {path}: file not found"]),
    ("non_utf8", latin1, ["lit_rlhf: error: {path}:2: ", "UTF-8", "0xe9", "byte offset 15 of the line"]),
    ("huge_line", huge_line, ["lit_rlhf: error: {path}:2: ", "longer than 1000000 bytes"]),
]:
    case("data_file", _name, _make, *_fragments)(bad_file)


@case("data_file", "utf8_bom_accepted")
def bom(w: World, tmp: Path) -> None:
    (path := tmp / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + w.pairs.read_bytes())
    expect(w.train_py(tmp, *w.rm(path)), 0)
    assert (tmp / "run" / "model" / "config.json").is_file()


# ---- long_prompt: truncated, trained on, and said once
@case("long_prompt", "sft")
def long_prompt(w: World, tmp: Path) -> None:
    long = " ".join(["about cats and soup"] * 60)  # > 128 tokens: longer than task.datamodule.max_length
    path = write_jsonl(tmp / "long.jsonl", [{"prompt": f"{long} {i}", "response": "purr"} for i in range(40)])
    run = w.train_py(tmp, *w.sft_job(path))
    expect(run, 0, "prompts are longer than task.datamodule.max_prompt_tokens=16 tokens")
    assert (tmp / "run" / "model" / "config.json").is_file()


# ---- unknown_option: Hydra's own message, exit status 2
refused_options = ("Could not find 'transform/logsigmod'", "Available options in 'transform'", "\tlogsigmoid")


@case("unknown_option", "transform")
def unknown_option(w: World, tmp: Path) -> None:
    expect(w.train_py(tmp, "+transform=logsigmod"), EXIT_USER_ERROR, *refused_options)


# ---- cli_error: the table's 6; 3 are also rows of their own (data_line-malformed_json,
# bad_ckpt-missing, unknown_option-transform) and are run there
refused("cli_error", "missing_model", lambda w, t: [*w.rm(w.pairs), "model.name_or_path=/nonexistent"],
        "model folder /nonexistent does not exist (model.name_or_path)")  # fmt: skip
refused("cli_error", "missing_value", lambda w, t: w.rm(w.pairs)[:-4],  # data=jsonl without data.path
        "config key data.path has no value")  # fmt: skip
refused("cli_error", "bad_value", lambda w, t: [*w.ppo(), "task.module.temperature=0"],
        "task.module.temperature must be > 0, got 0")  # fmt: skip


@case("cli_error", "sweep_runs_the_other_jobs")
def sweep_with_bad_data(w: World, tmp: Path) -> None:
    bad = BAD / "malformed_json.jsonl"
    run = w.train_py(tmp, *w.rm(bad), "seed=0,1", multirun=True)
    expect(run, 1, "Error executing job with overrides")  # a failed sweep job ends as Hydra ends it
    assert run.out.count(f"[ERROR] - lit_rlhf: error: {bad}:2: malformed JSON") == 2  # job 2 still ran


# ---- conversation: conversational lines name file:line:field, a tokenizer without template its folder
Q, BLUE, GREEN = (
    {"role": r, "content": c} for r, c in [("user", "Sky?"), ("assistant", "Blue."), ("assistant", "Green.")]
)
SEA = {**Q, "content": "Sea?"}
PAIR = {"prompt": [Q], "chosen": [BLUE], "rejected": [GREEN]}
CONVERSATIONS = [  # (name, task, bad second line after a good one, field, what is wrong)
    ("no_role", "reward_model", {**PAIR, "prompt": [{"content": "hi"}]}, "prompt[0].role", "missing"),
    ("unknown_role", "reward_model", {**PAIR, "prompt": [{"role": "bot", "content": "hi"}]}, "prompt[0].role",
     "unknown role 'bot'"),
    ("content_not_a_string", "reward_model", {**PAIR, "chosen": [{"role": "assistant", "content": 3}]},
     "chosen[0].content", "expected a string, got int"),
    ("empty_list", "reward_model", {**PAIR, "prompt": []}, "prompt", "got an empty list"),
    ("list_for_a_string", "reward_model", {"prompt": "a", "chosen": [BLUE], "rejected": "c"}, "chosen",
     "expected a non-empty string (as 'prompt' is a string), got list"),
    ("implicit_prompts_differ", "reward_model", {"chosen": [Q, BLUE], "rejected": [SEA, GREEN]}, "rejected",
     "differs from the one in 'chosen'"),
    ("sft_not_ending_with_assistant", "sft", {"messages": [Q, BLUE, Q]}, "messages[2].role",
     "the last message must be the assistant's reply"),
]  # fmt: skip


def bad_conversation(w: World, tmp: Path, task: str, bad: dict, field: str, problem: str) -> None:
    first = (
        {"messages": [Q, BLUE]}
        if task == "sft"
        else PAIR
        if "prompt" in bad
        else {"chosen": [Q, BLUE], "rejected": [Q, GREEN]}
    )
    path = write_jsonl(tmp / "chat.jsonl", [first, bad])
    job = w.rm(path, "chat") if task == "reward_model" else w.sft_job(path, "chat")
    expect(w.train_py(tmp, *job), EXIT_USER_ERROR, f"lit_rlhf: error: {path}:2: field '{field}': ", problem)


for _name, *_rest in CONVERSATIONS:
    case("conversation", _name, *_rest)(bad_conversation)


@case("conversation", "tokenizer_without_template")
def no_template(w: World, tmp: Path) -> None:
    path = write_jsonl(tmp / "chat.jsonl", [PAIR, {**PAIR, "chosen": [GREEN], "rejected": [BLUE]}])
    run = w.train_py(tmp, *w.rm(path))  # the GPT-2 folder has no chat template
    expect(run, EXIT_USER_ERROR, f"tokenizer '{w.m['policy']}' has no chat template", "data.chat_template",
           "model.tokenizer_path")  # fmt: skip


# ---- hint: the override a message suggests is a real key and does what it says
@case("hint", "on_error_skip")
def follow_line_hint(w: World, tmp: Path) -> None:
    path = tmp / "one_bad.jsonl"
    path.write_text(w.pairs.read_text() + '{"prompt": "p", "chosen": 7, "rejected": "no"}\n')
    first = w.train_py(tmp / "a", *w.rm(path))
    expect(first, EXIT_USER_ERROR, f"{path}:41: field 'chosen'")
    (override,) = re.findall(r"set (\S+=\S+) to skip", first.out)
    expect(w.train_py(tmp / "b", *w.rm(path), override), 0, f"skipped 1 of 41 lines in {path}")


@case("hint", "data_path")
def follow_file_hint(w: World, tmp: Path) -> None:
    first = w.train_py(tmp / "a", *w.rm(tmp / "nope.jsonl"))
    expect(first, EXIT_USER_ERROR, "nope.jsonl: file not found")
    keys = re.findall(r"\bdata\.\w+", first.out.split("lit_rlhf: error: ")[1].splitlines()[0])
    assert keys and keys[0] == "data.path", first.out
    expect(w.train_py(tmp / "b", *w.rm(tmp / "nope.jsonl"), f"{keys[0]}={w.pairs}"), 0)


# ---- sampling: a folder's generation_config.json changes nothing; truncated sampling is refused
@case("sampling", "shipped_generation_config")
def shipped_generation_config(w: World, tmp: Path) -> None:
    expect(w.train_py(tmp, *w.ppo(policy="gencfg")), 0)
    assert json.loads((w.m["gencfg"] / "generation_config.json").read_text())["repetition_penalty"] == 3.0


refused("sampling", "top_k", lambda w, t: [*w.ppo(), "task.module.top_k=50"], "task.module.top_k=50")
refused("sampling", "top_p", lambda w, t: [*w.ppo(), "task.module.top_p=0.9"], "task.module.top_p=0.9")


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
    assert torch.load(folder / "1" / "checkpoints" / "last.ckpt", weights_only=True)["ppo_iteration"] == 3
    again = w.train_py(tmp / "a", *sweep, multirun=True)
    expect(again, 0, f"{folder / '0'}: finished before with ppo/kl", f"resuming from {folder / '1'}")
    assert [p.name for p in (tmp / "a" / "multirun" / "ppo").iterdir()] == [folder.name]  # the same folder
    expect(w.train_py(tmp / "b", *sweep, multirun=True), 0)  # uninterrupted
    for job in "0123":
        a, b = folder / job, tmp / "b" / "multirun" / "ppo" / folder.name / job
        assert done_value(a) == done_value(b), f"job {job}: the metrics differ"
        assert same_weights(a / "model", b / "model"), f"job {job}: the policies differ"


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
                     "task.datamodule.batch_size=2", *csv_logger(tmp / "run"))  # fmt: skip
    expect(run, 0)
    skipped = re.findall(r"ppo iteration (\d+) skipped: 1 non-finite reward-model scores", run.out)
    assert [int(k) for k in skipped] == expected
    assert logged(tmp / "run", "ppo/skipped_batches")[-1] == len(expected)
    after = load_file(tmp / "run" / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in after.values())
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


# ------------------------------------------------------------------ the tests
def test_cases_mirror_the_readme_table() -> None:
    """ROWS lists the README failure table's rows in order, and every row has cases here."""
    section = (ROOT / "README.md").read_text().split("## Failure handling")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]  # after the header and rule
    first_cells = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert len(first_cells) == len(ROWS)
    for cell, (row, start) in zip(first_cells, ROWS.items()):
        assert cell.startswith(start), f"row {row}: {cell!r}"
    assert [r for r in ROWS if not any(c.row == r for c in CASES)] == []
    assert all(c.row in ROWS for c in CASES)


def test_refused_checkpoint_is_a_user_error_only_where_lightning_loads_one(tmp_path: Path) -> None:
    """The classification behind ``bad_ckpt-pickled_code``, without a subprocess."""
    import pickle  # noqa: PLC0415

    from lightning.pytorch.strategies import SingleDeviceStrategy  # noqa: PLC0415

    from lit_rlhf.errors import user_message  # noqa: PLC0415

    torch.save({"x": Evil(tmp_path / "ran")}, ckpt := tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError) as info:
        SingleDeviceStrategy("cpu").load_checkpoint(ckpt, weights_only=True)  # what Trainer.fit calls
    message = user_message(info.value)
    assert message.startswith(f"cannot resume from {ckpt}: torch.load(weights_only=True) refuses it (")
    assert "GLOBAL exec" in message and "Check ckpt_path" in message and not (tmp_path / "ran").exists()
    with pytest.raises(pickle.UnpicklingError) as info:
        torch.load(ckpt, weights_only=True)  # not a checkpoint to resume from: a bug's traceback
    assert user_message(info.value) is None


@pytest.mark.parametrize(
    ("error", "status"),
    [(ConfigCompositionException("Could not find 'transform/x'"), 2), (UserError("a sweep job"), 1),
     (RuntimeError("a bug"), 1), (None, 1)],
)  # fmt: skip
def test_config_errors_exit_2(error: Exception | None, status: int) -> None:
    """Hydra reports a composition error, then exits 1 inside its ``except``: only that becomes 2."""

    def hydra_main() -> None:
        try:
            if error is not None:
                raise error
            sys.exit(1)
        except Exception:
            sys.exit(1)

    with pytest.raises(SystemExit) as info, config_errors_exit_2():
        hydra_main()
    assert info.value.code == status


@pytest.mark.slow  # ~70 runs of train.py: one interpreter start-up (torch, Lightning, transformers) each
@pytest.mark.parametrize("c", CASES, ids=[f"{c.row}-{c.name}" for c in CASES])
def test_failure_case_through_train_py(w: World, tmp_path: Path, c: Case) -> None:
    c.check(w, tmp_path, *c.args)
