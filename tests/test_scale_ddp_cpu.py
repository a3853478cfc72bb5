"""Scaling out, DDP on CPU (2 gloo processes of ``python train.py`` against 1 process with the same global
batch): a reward model, PPO and REINFORCE++ (the same computation up to rounding), GRPO / RLOO, a ``-m``
sweep writing one folder per job, and prompt batches sharded over ranks. 8-bit optimizers:
``test_scale_8bit_adamw.py``; the trainer group's configs: ``test_scale_trainers.py``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_STAGES, TINY_WORLD, hydra_cfg

TINY_MODEL = [o for o in TINY_STAGES if not o.startswith("pipeline.")]
RM_RUN = [
    "task=reward_model",
    "reward=helpful",
    *TINY_WORLD,
    *TINY_MODEL,
    "callbacks=none",
    "task.max_epochs=1",
    "task.datamodule.on_error=skip",
    "task.module.warmup_steps=0",
    "task.module.lr=3e-3",
    "task.init_from=model",  # a fresh backbone: the comparison needs no SFT stage
]
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the tiny embedded world (generated once for this module's runs)."""
    from lit_rlhf.run.pipeline import prepare_data

    tmp = tmp_path_factory.mktemp("ddp")
    with hydra_cfg(tmp, TINY_WORLD) as cfg:
        prepare_data(cfg)
    return tmp / "cache"


def train_py(root: Path, cache: Path, *overrides: str, multirun: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else [])]
    cmd += [f"paths.root_dir={root}", f"paths.cache_dir={cache}"]
    log = (root / "stdout.txt").open("w")
    return subprocess.Popen([*cmd, *overrides], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, root: Path, timeout: float = 240) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, (root / "stdout.txt").read_text()[-3000:]


def csv_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of each metric in a CSVLogger's metrics.csv."""
    (path,) = run_dir.rglob("metrics.csv")
    last: dict[str, float] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            last |= {k: float(v) for k, v in row.items() if v != ""}
    return last


def one_and_ddp(
    tmp_path: Path,
    world: Path,
    overrides: list[str],
    batches: tuple[int, int],
    loggers: list[str] = (),
    multi: list[str] = DDP_CPU,
) -> dict[str, tuple[Path, subprocess.Popen]]:
    """Run ``train.py`` once in one process and once with 2 gloo processes (``multi``: DDP by default) with
    the per-rank batch, both at once, each in its own folder with its own copy of the stage cache and a CSV
    logger; wait for both. The runs are named ``one`` and ``ddp``."""
    runs = {}
    for name, batch, extra in (("one", batches[0], []), ("ddp", batches[1], multi)):
        root = tmp_path / name
        root.mkdir()
        csv_logger = [*loggers, "+logger.csv._target_=lightning.pytorch.loggers.CSVLogger"]
        csv_logger += [f"+logger.csv.save_dir={root}/run"]
        args = [*overrides, *extra, *csv_logger, f"task.datamodule.batch_size={batch}"]
        cache = root / "cache"  # own stages and r_ref cache: the two runs share no files
        shutil.copytree(world, cache)
        runs[name] = (root, train_py(root, cache, *args, f"hydra.run.dir={root}/run"))
    for root, proc in runs.values():
        wait(proc, root)
    return runs


@pytest.mark.slow
def test_ddp_on_cpu_matches_one_process_with_the_same_global_batch(tmp_path: Path, world: Path) -> None:
    """2 processes × 16 pairs ≈ 1 process × 32 pairs: the same steps, the same data, another order.

    Both runs see the same 57 global batches of 32 pairs (1800 training pairs), but DistributedSampler
    shuffles with its own generator, so the order differs: after one epoch the metrics agree to within
    what the order changes (|Δ val/rm_acc| ≤ 0.08 on 200 held-out pairs, |Δ val/loss| ≤ 0.04).
    """
    runs = one_and_ddp(tmp_path, world, RM_RUN, batches=(32, 16), loggers=["logger=none"])

    one, ddp = (csv_metrics(root / "run") for root, _ in runs.values())
    assert ddp["step"] == one["step"] == 56  # 57 steps (logged at index 56); unsharded DDP: 113
    assert (
        one["val/rm_acc"] > 0.55 and ddp["val/rm_acc"] > 0.55
    )  # both learned: the comparison means something
    assert abs(ddp["val/rm_acc"] - one["val/rm_acc"]) <= 0.08
    assert abs(ddp["val/loss"] - one["val/loss"]) <= 0.04
    assert (tmp_path / "ddp" / "run" / "train_ddp_process_1.log").is_file()  # rank 1 wrote into the same run


@pytest.mark.slow
def test_ddp_multirun_writes_one_folder_per_job(tmp_path: Path, world: Path) -> None:
    short = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]
    proc = train_py(tmp_path, world, *RM_RUN, *DDP_CPU, *short, "seed=0,1", multirun=True)
    wait(proc, tmp_path)

    (sweep,) = (tmp_path / "multirun" / "reward_model").iterdir()  # one sweep, not one per rank
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert (sweep / job / "model" / "config.json").is_file()
        assert (sweep / job / "train_ddp_process_1.log").is_file()  # this job's rank 1 ran this job


PPO_RUN = [
    *TINY_WORLD,
    *TINY_STAGES,
    "task.iterations=8",
    "task.val_check_interval=8",
    "task.module.lr=3e-4",  # enough to move the tiny policy measurably in 8 iterations
    "task.module.warmup_steps=0",
    "task.module.eval_samples_per_prompt=4",
    "task.callbacks.reward_transform.n_samples=2",
]


def iteration_rows(run_dir: Path, algorithm: str) -> list[dict[str, float]]:
    """The training rows (one per iteration) of a CSVLogger's metrics.csv."""
    (path,) = run_dir.rglob("metrics.csv")
    with path.open() as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return [r for r in rows if f"{algorithm}/kl" in r]


def eval_samples(run_dir: Path) -> dict[tuple[int, int], tuple[str, str]]:
    """(prompt id, sample) → (policy response, SFT response) of the last evaluation (gold_eval.jsonl)."""
    (path,) = run_dir.rglob("gold_eval.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["prompt_id"], r["sample"]): (r["policy"], r["sft"]) for r in rows}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def assert_same_run(tmp_path: Path, task: str, iterations: int = 8, min_kl: float = 0.05) -> None:
    """The 2-process run (``ddp``) of :func:`one_and_ddp` did what the one-process run did: the same rollouts
    and updates at every iteration, the same evaluation samples and the same final policy (bounds: see
    ``test_ppo_ddp_on_cpu_matches_one_process_with_the_same_global_batch``)."""
    runs = ("one", "ddp")
    one, ddp = (csv_metrics(tmp_path / name / "run") for name in runs)
    assert ddp["step"] == one["step"]  # the same number of iterations and optimizer steps
    assert one["val/kl"] > min_kl  # the policy learned: the comparison means something
    # the same rollouts at every iteration, and the same updates of them
    iters = {name: iteration_rows(tmp_path / name / "run", task) for name in runs}
    assert len(iters["one"]) == len(iters["ddp"]) == iterations
    same = [f"{task}/response_length", f"{task}/eos_rate", "reward/total"]
    close = [
        f"{task}/{k}" for k in ("kl", "pg_loss", "approx_kl", "entropy_proxy", "advantage_abs", "vf_loss")
    ]
    for i, (a, b) in enumerate(zip(iters["one"], iters["ddp"])):
        for key in same:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (i, key)
        for key in [k for k in close if k in a] + ["train/loss"]:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (i, key)
    # the same evaluation samples, KL and gold win rate
    assert eval_samples(tmp_path / "ddp" / "run") == eval_samples(tmp_path / "one" / "run")
    assert ddp["val/kl"] == pytest.approx(one["val/kl"], rel=1e-5)
    assert ddp["gold/win_rate_helpful"] == pytest.approx(one["gold/win_rate_helpful"], abs=1e-6)
    # the same final policy
    w_one, w_ddp = (load_file(tmp_path / name / "run" / "model" / "model.safetensors") for name in runs)
    assert w_one.keys() == w_ddp.keys()
    for name, a in w_one.items():
        b = w_ddp[name]
        if name.endswith("attn.c_attn.bias"):  # (3E,) query, key and value biases
            (qa, ka, va), (qb, kb, vb) = a.chunk(3), b.chunk(3)
            assert relative(qa, qb) <= 1e-5 and relative(va, vb) <= 1e-5, name
            assert (ka - kb).abs().max() <= 1e-3, name  # zero gradient: Adam's noise, bounded by lr · steps
        else:
            assert relative(a, b) <= 1e-5, name
    run = tmp_path / "ddp" / "run"
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran in (and logged into) the same run dir
    assert len(list(run.rglob("metrics.csv"))) == 1  # one logger: rank 0's
    assert (run / "model" / "config.json").is_file()  # the final policy, saved once (by rank 0)
    assert [p.name for p in run.iterdir() if p.name.startswith("model")] == ["model"]


@pytest.mark.slow  # ~40 s each: both runs at once (3 processes on 2 cores), the stages built once (a lock)
@pytest.mark.parametrize("task", ["ppo", "reinforce_pp"])
def test_ppo_ddp_on_cpu_matches_one_process_with_the_same_global_batch(
    tmp_path: Path, world: Path, task: str
) -> None:
    """PPO (and REINFORCE++), 2 processes × 8 prompts vs 1 process × 16: the same computation up to rounding.

    PromptDataModule gives rank r the r-th half of each global batch of 16, so both runs see the same prompts
    in the same order. Every batch-wide step is global, so DDP computes what one process does:

    * sampling: row i of the global batch draws from its own seed (seed, iteration, i) by Gumbel-max, not
      from a stream of the rank; evaluation samples from (prompt id, sample index) → the same responses;
    * the advantage whitening (PPO's, REINFORCE++'s) all-reduces its sums; minibatches are cut from one
      permutation of the global batch, each rank taking its rows; the losses divide by the global
      minibatch's token count / 2, so DDP's gradient average is the gradient of the global token mean.

    What remains is floating-point rounding: another batch size and padding changes the logits by ~1e-7.
    Measured with seeds 0, 1, 2 (8 iterations each): identical responses in training (per-iteration response
    lengths, EOS rates and rewards) and in evaluation (all 256 samples); val/kl ratio 0.99999989,
    0.99999992, 1.0 (≤ 1.1e-7 relative); per-iteration KL, losses, approx-KL and entropy within 9.5e-7
    absolute (≤ 6e-5 relative, on values as small as 1e-3); every weight tensor of the final policy within
    5.4e-7 relative — except the attention KEY bias, whose gradient is exactly 0 in exact arithmetic
    (softmax(q·(k + b)) = softmax(q·k + q·b) shifts every score of a row alike): Adam turns its rounding-level
    gradient into steps of up to lr, differently in each run (1.4e-5 to 4.3e-5 apart after 32 updates, for a
    norm of 2.7e-5 to 4.2e-5), so only its size is bounded. Before (per-rank sampling streams, whitening,
    minibatches and token means) the KL ratio was 0.74 and 0.46 (seeds 0 and 1; a CI run measured 0.42) and
    the final weights differed by up to 12 % and 17 % (relative norm of a tensor). REINFORCE++ (seed 0):
    the same responses, val/kl 9.3e-8 relative, per-iteration stats within 4.8e-7 absolute, weights 1.1e-7
    (key bias 2.0e-5 apart).

    The bounds keep a margin of 10× or more over these. A sampled token could still flip if two perturbed
    scores of a row came within the logits' rounding (~1e-6) of each other; none of the 1920 responses
    (~2e4 tokens: 128 rollouts and 2 × 256 evaluation samples per run) of the measured runs did.
    """
    one_and_ddp(tmp_path, world, [*PPO_RUN, f"task={task}"], batches=(16, 8))

    assert_same_run(tmp_path, task)


def test_prompt_batches_are_sharded_over_ranks() -> None:
    """Rank r's batch k is the r-th slice of the 1-process batch k with W × the batch size; resumable."""
    from lit_rlhf.data.datamodules import CycledBatchSampler

    one = list(CycledBatchSampler(50, 8, num_batches=7, seed=3))
    ranks = [list(CycledBatchSampler(50, 4, num_batches=7, seed=3, rank=r, world_size=2)) for r in range(2)]
    for k, batch in enumerate(one):
        assert ranks[0][k] + ranks[1][k] == batch
        assert not set(ranks[0][k]) & set(ranks[1][k])
    resumed = list(CycledBatchSampler(50, 4, num_batches=7, seed=3, start=5, rank=1, world_size=2))
    assert resumed == ranks[1][5:]
    with pytest.raises(ValueError, match="batch_size"):
        CycledBatchSampler(10, 8, num_batches=1, seed=0, rank=0, world_size=2)


@pytest.mark.slow  # ~40 s
@pytest.mark.parametrize("task", ["grpo", "rloo"])
def test_critic_free_tasks_run_under_ddp_on_cpu(tmp_path: Path, world: Path, task: str) -> None:
    """GRPO / RLOO, 2 processes × 4 prompts × 2 samples: groups stay whole on their rank (the prompt is
    repeated after sharding), the run learns and rank 0 saves the policy once."""
    cache = tmp_path / "cache"
    shutil.copytree(world, cache)
    csv_logger = [
        "+logger.csv._target_=lightning.pytorch.loggers.CSVLogger",
        f"+logger.csv.save_dir={tmp_path}/run",
    ]
    overrides = [*PPO_RUN, *DDP_CPU, *csv_logger, f"task={task}", "task.datamodule.batch_size=4"]
    proc = train_py(
        tmp_path, cache, *overrides, "task.module.samples_per_prompt=2", f"hydra.run.dir={tmp_path}/run"
    )
    wait(proc, tmp_path)
    metrics = csv_metrics(tmp_path / "run")
    assert metrics["val/kl"] > 0.005  # the policy moved (measured: grpo 0.024 after 8 iterations)
    assert (tmp_path / "run" / "train_ddp_process_1.log").is_file()
    assert (tmp_path / "run" / "model" / "config.json").is_file()
