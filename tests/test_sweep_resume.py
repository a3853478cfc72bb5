"""A ``-m`` sweep re-run with the same command goes to the same folder, skips the jobs that finished and
resumes the others from their ``last.ckpt``: after a ``kill -9`` it ends where an uninterrupted sweep ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_STAGES, TINY_WORLD

ITERATIONS = 8
SWEEP = [
    *TINY_WORLD,
    *TINY_STAGES,
    f"task.iterations={ITERATIONS}",
    "task.val_check_interval=3",  # evaluations at 3 and 6, and at the end (8 is not a multiple)
    "task.checkpoint_every_n_steps=1",  # every iteration (the cadence counts iterations)
    "task.datamodule.batch_size=8",
    "task.module.eval_samples_per_prompt=1",
    "task.module.kl_target=1.0",  # adaptive β: state that must survive the kill
    "task.callbacks.reward_transform.n_samples=2",
    "+transform=identity,logsigmoid",
    "task.module.kl_coef=0.05,0.1",  # 4 jobs; PPO-only keys, so every job shares the cached stages
]


def train(root: Path, *args: str) -> list[str]:
    """``python train.py -m <args>`` writing under ``root``."""
    return [sys.executable, str(ROOT / "train.py"), "-m", f"paths.root_dir={root}", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # train.py in a subprocess
def test_sweep_folder_is_named_after_the_sweep_overrides(tmp_path):
    """Every job of `-m` lands in one folder named after the command (not the date): a re-run finds it."""
    out = subprocess.run(
        train(tmp_path, "seed=0,1", "resume=sometimes", f"paths.cache_dir={tmp_path / 'c'}"),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "resume must be one of ('auto', 'force'), got 'sometimes'" in out.stderr
    # resume, paths.root_dir and paths.cache_dir do not name folders: the same run, wherever files go
    jobs = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "multirun").glob("*/*/*") if p.is_dir()]
    assert sorted(jobs) == ["multirun/ppo/seed=0,1/0", "multirun/ppo/seed=0,1/1"]


def job_metrics(sweep: Path) -> dict[str, float | None]:
    """Job number → the optimized metric it returned (``done.json``)."""
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    return {job.name: json.loads((job / "done.json").read_text())["value"] for job in jobs}


def stamps(job: Path) -> list[int]:
    """Modification times of a job's result files: unchanged if the job was not run again."""
    return [(job / f).stat().st_mtime_ns for f in ("done.json", "run.json", "model/model.safetensors")]


def sweep_dir(root: Path) -> Path:
    (sweep,) = (root / "multirun" / "ppo").iterdir()
    return sweep


@pytest.mark.slow
def test_sweep_killed_mid_job_then_rerun_equals_uninterrupted(tmp_path, stage_cache):
    common = [f"paths.cache_dir={stage_cache}", *SWEEP]
    full = subprocess.run(
        train(tmp_path / "full", *common), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert full.returncode == 0, full.stderr[-3000:]

    # kill -9 during job 1, once its checkpoint has reached a random iteration
    at = random.randint(1, ITERATIONS - 2)
    root = tmp_path / "killed"
    root.mkdir()
    args = train(root, *common)
    proc = subprocess.Popen(args, cwd=root, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved, deadline = 0, time.time() + 300
    while saved < at and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        ckpts = list((root / "multirun").glob("ppo/*/1/checkpoints/last.ckpt"))
        if ckpts:
            saved = torch.load(ckpts[0], weights_only=True)["ppo_iteration"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sweep = sweep_dir(root)
    saved = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)["ppo_iteration"]
    assert at <= saved < ITERATIONS, f"killed at iteration {saved}, aimed at {at}"
    assert (sweep / "0" / "done.json").is_file() and not (sweep / "1" / "done.json").exists()
    assert not (sweep / "3").exists()
    job0 = stamps(sweep / "0")

    again = subprocess.run(args, cwd=root, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "finished before" in log and "resuming from" in log
    assert sweep_dir(root) == sweep  # the same folder, not a new one
    assert stamps(sweep / "0") == job0  # the finished job was skipped

    reference = sweep_dir(tmp_path / "full")
    assert sweep.name == reference.name
    metrics = job_metrics(sweep)
    assert list(metrics) == ["0", "1", "2", "3"] and all(v is not None for v in metrics.values())
    assert metrics == job_metrics(reference), f"killed in job 1 at iteration {saved}"
    for job in metrics:
        a = load_file(sweep / job / "model" / "model.safetensors")
        b = load_file(reference / job / "model" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"job {job} policy differs"
