"""Resume: a PPO run that dies mid-training and is re-run with the same command ends bit-for-bit where an
uninterrupted run with the same seed ends (CPU), with step, β, optimizer and sampler state restored."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import ROOT, TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.run.pipeline import run

pytestmark = pytest.mark.slow  # every test trains PPO on the tiny world

RESUMABLE = [
    "+transform=logsigmoid",
    "task.iterations=6",
    "task.val_check_interval=3",
    "task.checkpoint_every_n_steps=2",  # in iterations (not the 8 optimizer steps of each)
    "task.datamodule.batch_size=8",
    "task.module.eval_samples_per_prompt=1",
    "task.module.kl_target=1.0",  # adaptive β: its state must survive the restart
    "task.callbacks.reward_transform.n_samples=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


class Crash(L.Callback):
    """Dies like a killed process at the start of a given PPO iteration."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if getattr(pl_module, "iteration", None) == self.at:
            raise SystemError("simulated crash")


def run_ppo(tmp: Path, cache: Path, callbacks: list[L.Callback] = ()):
    import lit_rlhf.run.pipeline as pipeline

    real = pipeline.make_trainer
    captured = {}

    def make_trainer(cfg, extra=None):
        trainer = real(cfg, extra)
        trainer.callbacks[:0] = list(callbacks)
        captured["trainer"] = trainer
        return trainer

    pipeline.make_trainer = make_trainer
    try:
        with hydra_cfg(tmp, [*TINY_WORLD, *TINY_STAGES, *RESUMABLE], cache=cache) as cfg:
            run(cfg)
    finally:
        pipeline.make_trainer = real
    return captured["trainer"]


def test_crash_then_rerun_equals_uninterrupted(tmp_path, stage_cache, crashed_ppo):
    """The crashed run, re-run with the same command, restores step, β and optimizer state exactly as the
    checkpoint holds them, and ends where an uninterrupted run ends."""
    full = run_ppo(tmp_path / "full", stage_cache).lightning_module
    shutil.copytree(crashed_ppo, tmp_path / "crashed" / "run")
    ckpt = torch.load(tmp_path / "crashed" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["ppo_iteration"] == 2  # the last checkpoint before the crash
    seen = {}

    class Inspect(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen["iteration"] = pl_module.iteration
            seen["beta"] = pl_module.kl_ctl.value
            seen["global_step"] = trainer.global_step
            seen["exp_avg"] = next(iter(trainer.optimizers[0].state.values()))["exp_avg"].clone()

    resumed = run_ppo(tmp_path / "crashed", stage_cache, [Inspect()]).lightning_module  # same command
    # right after loading: what the checkpoint holds
    assert seen["iteration"] == ckpt["ppo_iteration"] == 2
    assert seen["beta"] == ckpt["kl_controller"]["value"]
    assert seen["global_step"] == ckpt["global_step"] > 0
    saved = next(iter(ckpt["optimizer_states"][0]["state"].values()))["exp_avg"]
    assert torch.equal(seen["exp_avg"], saved)
    # at the end: what the uninterrupted run reached
    assert resumed.iteration == full.iteration == 6
    assert resumed.kl_ctl.value == full.kl_ctl.value
    assert resumed.kl_ctl.value != 0.05  # the adaptive controller moved β, and the resumed run agrees
    for (name, a), b in zip(full.actor.state_dict().items(), resumed.actor.state_dict().values()):
        assert torch.equal(a, b), f"actor weight {name} differs after resume"
    for (name, a), b in zip(full.critic.state_dict().items(), resumed.critic.state_dict().values()):
        assert torch.equal(a, b), f"critic weight {name} differs after resume"


@pytest.mark.slow
def test_sigkill_mid_training_then_same_command_resumes(tmp_path, stage_cache):
    """The real thing: SIGKILL the process, re-run the exact command, it continues from last.ckpt."""
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={stage_cache}",
        *TINY_WORLD,
        *TINY_STAGES,
        *[a for a in RESUMABLE if not a.startswith("task.iterations")],
        "task.iterations=30",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = list((tmp_path / "outputs").rglob("last.ckpt"))
    deadline = time.time() + 300
    while not ckpts and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        ckpts = list((tmp_path / "outputs").rglob("last.ckpt"))
    assert ckpts, "no checkpoint written before the deadline"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpts[0], weights_only=True)
    assert 0 < saved["ppo_iteration"] < 30
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from" in out.stderr + out.stdout
    final = torch.load(ckpts[0], weights_only=True)
    assert final["ppo_iteration"] == 30
    assert (ckpts[0].parents[1] / "model" / "config.json").is_file()
