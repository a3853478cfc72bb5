"""Resume: a PPO run that dies mid-training and is re-run with the same command restores step, β, optimizer
state and weights from its checkpoint (in process). That it then ends bit for bit where an uninterrupted
run ends (CPU) is tested through ``python train.py`` by the failure table's ``crash``, ``kill`` and
``kill_in_save`` cases; GRPO's by tests/test_critic_free.py, LoRA's by tests/test_lora.py. :data:`RESUMABLE`,
:class:`Crash` and :func:`run_ppo` serve the other in-process PPO tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import TINY_STAGES, TINY_WORLD, hydra_cfg
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


def test_rerun_restores_the_saved_state_and_runs_to_the_end(tmp_path, stage_cache, crashed_ppo):
    """The crashed run, re-run with the same command, starts from exactly the step, β and optimizer state
    its checkpoint holds and runs to the end. That it ends bit for bit where an uninterrupted run ends
    (actor, critic, β), after a crash, a ``kill -9`` or a kill mid-save, is the failure table's ``crash``,
    ``kill`` and ``kill_in_save`` cases through ``python train.py`` (tests/failure_table_training.py)."""
    shutil.copytree(crashed_ppo, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["ppo_iteration"] == 2  # the last checkpoint before the crash
    seen = {}

    class Inspect(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen["iteration"] = pl_module.iteration
            seen["beta"] = pl_module.kl_ctl.value
            seen["global_step"] = trainer.global_step
            seen["exp_avg"] = next(iter(trainer.optimizers[0].state.values()))["exp_avg"].clone()
            seen["actor"] = {k: v.clone() for k, v in pl_module.actor.state_dict().items()}

    resumed = run_ppo(tmp_path, stage_cache, [Inspect()]).lightning_module  # same command, same run dir
    # right after loading: what the checkpoint holds
    assert seen["iteration"] == 2
    assert seen["beta"] == ckpt["kl_controller"]["value"] != 0.05  # the adaptive β had moved by then
    assert seen["global_step"] == ckpt["global_step"] > 0
    saved = next(iter(ckpt["optimizer_states"][0]["state"].values()))["exp_avg"]
    assert torch.equal(seen["exp_avg"], saved)
    for k, v in seen["actor"].items():
        assert torch.equal(v, ckpt["state_dict"][f"actor.{k}"]), f"actor weight {k} not restored"
    # then it trained on to the end
    assert resumed.iteration == 6
    assert any(not torch.equal(v, resumed.actor.state_dict()[k]) for k, v in seen["actor"].items())
