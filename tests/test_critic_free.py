"""GRPO, RLOO and REINFORCE++ end to end on the tiny world: the same reward transform and telemetry as
PPO, no critic in memory, the actor moves, the update is the algorithm's, and a crash resumes exactly."""

from __future__ import annotations

import glob
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_ppo import RewardSpy, ppo, sft_and_rm_paths
from test_resume import Crash
from transformers import AutoModelForCausalLM

from lit_rlhf.rlhf import group_advantages, rloo_advantages

pytestmark = pytest.mark.slow  # every test trains on the tiny world

TASKS = ["grpo", "rloo", "reinforce_pp"]
SMALL = ["task.datamodule.batch_size=4", "task.module.samples_per_prompt=2"]


def small(task: str) -> list[str]:
    return [f"task={task}", "+transform=logsigmoid", *(SMALL if task != "reinforce_pp" else [])]


# checkpoints every 2 iterations, so that the grpo run is also the uninterrupted run of the resume test
CHECKPOINTS = ["task.checkpoint_every_n_steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, stage_cache: Path):
    """``runs(task)``: one 4-iteration run per task, made on first use and shared by the tests below, with
    the reward PPO got (a RewardSpy) and, for grpo and rloo, the first batch's (reward, KL, advantages, β)."""
    from lit_rlhf.tasks.grpo import GRPOModule
    from lit_rlhf.tasks.rloo import RLOOModule

    done: dict[str, SimpleNamespace] = {}

    def get(task: str) -> SimpleNamespace:
        if task not in done:
            spy, seen = RewardSpy(), []
            with pytest.MonkeyPatch.context() as mp:
                for cls in (GRPOModule, RLOOModule):
                    real = cls.advantages

                    def advantages(self, ro, reward, kl, real=real):
                        out = real(self, ro, reward, kl)
                        seen.append((reward.clone(), kl.sum(-1).clone(), out.clone(), self.kl_ctl.value))
                        return out

                    mp.setattr(cls, "advantages", advantages)
                trainer, cbs, run_dir = ppo(
                    tmp_path_factory.mktemp(task), stage_cache, [*small(task), *CHECKPOINTS], spy
                )
            done[task] = SimpleNamespace(trainer=trainer, cbs=cbs, run_dir=run_dir, spy=spy, advantages=seen)
        return done[task]

    return get


@pytest.mark.parametrize("task", TASKS)
def test_critic_free_tasks_train_with_the_transform(
    tmp_path: Path, stage_cache: Path, runs, task: str
) -> None:
    sft_path, _ = sft_and_rm_paths(tmp_path / "probe", stage_cache)
    sft = AutoModelForCausalLM.from_pretrained(sft_path).state_dict()
    r = runs(task)
    trainer, cbs, run_dir, spy = r.trainer, r.cbs, r.run_dir, r.spy
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


def test_grpo_and_rloo_advantages_are_what_the_update_uses(runs) -> None:
    """The module's advantages are the estimator of the rewards it was given (groups in rollout order)."""
    reward, _, adv, _ = runs("grpo").advantages[0]
    torch.testing.assert_close(adv, group_advantages(reward, 2))
    reward, kl, adv, beta = runs("rloo").advantages[0]
    torch.testing.assert_close(adv, rloo_advantages(reward - beta * kl, 2))
    # k = 2: each sample's baseline is the other one, so the pair's advantages are opposite
    torch.testing.assert_close(adv[0::2], -adv[1::2])
    assert not torch.equal(adv, torch.zeros_like(adv))


def test_a_critic_free_task_resumes_bit_for_bit(tmp_path: Path, stage_cache: Path, runs) -> None:
    """GRPO, RLOO and REINFORCE++ share CriticFreeModule's state and checkpoint path: one of them stands
    for all three here (PPO's, with its critic: the failure table's crash, kill and kill_in_save cases).
    ``samples_per_prompt=1`` refused: tests/test_estimators.py and the failure table's ``one_sample``."""
    extra = [*small("grpo"), *CHECKPOINTS]
    full = runs("grpo").trainer.lightning_module  # the same command, uninterrupted
    with pytest.raises(SystemError):
        ppo(tmp_path / "crashed", stage_cache, extra, spy=Crash(at=3))
    ckpt = torch.load(tmp_path / "crashed" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["ppo_iteration"] == 2  # the last checkpoint before the crash
    resumed = ppo(tmp_path / "crashed", stage_cache, extra)[0].lightning_module
    assert resumed.iteration == full.iteration == 4
    for (name, a), b in zip(full.actor.state_dict().items(), resumed.actor.state_dict().values()):
        assert torch.equal(a, b), f"actor weight {name} differs after resume"
