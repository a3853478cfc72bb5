"""GRPO, RLOO and REINFORCE++ end to end on the tiny world: the same reward transform and telemetry as
PPO, no critic in memory, the actor moves, the update is the algorithm's, and a crash resumes exactly."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_ppo import RewardSpy, ppo, sft_and_rm_paths
from test_resume import Crash
from transformers import AutoModelForCausalLM

from lit_rlhf.rlhf import group_advantages, rloo_advantages

TASKS = ["grpo", "rloo", "reinforce_pp"]
SMALL = ["task.datamodule.batch_size=4", "task.module.samples_per_prompt=2"]


def small(task: str) -> list[str]:
    return [f"task={task}", "+transform=logsigmoid", *(SMALL if task != "reinforce_pp" else [])]


@pytest.mark.parametrize("task", TASKS)
def test_critic_free_tasks_train_with_the_transform(tmp_path: Path, stage_cache: Path, task: str) -> None:
    sft_path, _ = sft_and_rm_paths(tmp_path / "probe", stage_cache)
    sft = AutoModelForCausalLM.from_pretrained(sft_path).state_dict()
    spy = RewardSpy()
    trainer, cbs, run_dir = ppo(tmp_path, stage_cache, small(task), spy=spy)
    module = trainer.lightning_module
    assert module.algorithm == task
    assert not hasattr(module, "critic")  # no critic in memory
    assert len(trainer.optimizers) == 1
    assert any(not torch.equal(v, sft[k]) for k, v in module.actor.state_dict().items())
    assert cbs["RewardTransformCallback"].calls == 4
    assert all((r <= 0).all() for r in spy.rewards)  # the sum of log σ(·) reached the algorithm
    if task != "reinforce_pp":  # groups of 2 consecutive samples of one prompt
        for ids in spy.prompt_ids:
            assert torch.equal(ids[0::2], ids[1::2])
    acc = EventAccumulator(glob.glob(str(run_dir / "tensorboard" / "events.*"))[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        f"{task}/kl",
        f"{task}/clipfrac",
        f"{task}/reward",
        "reward/helpful_above_ref",
        "gold/win_rate_both",
    ):
        assert tag in tags, tag
    assert (run_dir / "summary.json").is_file() and (run_dir / "model" / "README.md").is_file()


def test_grpo_and_rloo_advantages_are_what_the_update_uses(tmp_path: Path, stage_cache: Path, monkeypatch):
    """The module's advantages are the estimator of the rewards it was given (groups in rollout order)."""
    from lit_rlhf.tasks.grpo import GRPOModule
    from lit_rlhf.tasks.rloo import RLOOModule

    seen = {}
    for cls, name in ((GRPOModule, "grpo"), (RLOOModule, "rloo")):
        real = cls.advantages

        def spy(self, ro, reward, kl, real=real, name=name):
            out = real(self, ro, reward, kl)
            seen.setdefault(name, (reward.clone(), kl.sum(-1).clone(), out.clone(), self.kl_ctl.value))
            return out

        monkeypatch.setattr(cls, "advantages", spy)
        ppo(tmp_path / name, stage_cache, [*small(name), "task.iterations=1", "task.val_check_interval=1"])
    reward, _, adv, _ = seen["grpo"]
    torch.testing.assert_close(adv, group_advantages(reward, 2))
    reward, kl, adv, beta = seen["rloo"]
    torch.testing.assert_close(adv, rloo_advantages(reward - beta * kl, 2))
    # k = 2: each sample's baseline is the other one, so the pair's advantages are opposite
    torch.testing.assert_close(adv[0::2], -adv[1::2])


def test_group_size_one_is_refused_naming_the_key(tmp_path: Path, stage_cache: Path) -> None:
    for task in ("grpo", "rloo"):
        with pytest.raises(Exception, match="task.module.samples_per_prompt"):
            ppo(tmp_path / task, stage_cache, [f"task={task}", "task.module.samples_per_prompt=1"])


@pytest.mark.parametrize("task", TASKS)
def test_critic_free_tasks_resume_bit_for_bit(tmp_path: Path, stage_cache: Path, task: str) -> None:
    extra = [*small(task), "task.iterations=4", "task.checkpoint_every_n_steps=2", "logger=none"]
    full = ppo(tmp_path / "full", stage_cache, extra)[0].lightning_module
    with pytest.raises(SystemError):
        ppo(tmp_path / "crashed", stage_cache, extra, spy=Crash(at=3))
    resumed = ppo(tmp_path / "crashed", stage_cache, extra)[0].lightning_module
    assert resumed.iteration == full.iteration == 4
    for (name, a), b in zip(full.actor.state_dict().items(), resumed.actor.state_dict().values()):
        assert torch.equal(a, b), f"actor weight {name} differs after resume"
