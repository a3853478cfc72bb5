"""Numerical faults and bad checkpoints: skipped and counted, or stopped with a clear error — never NaN
weights, never a bare stack trace from inside torch."""

from __future__ import annotations

import lightning as L
import pytest
import test_resume
import torch
from test_resume import RESUMABLE, run_ppo
from transformers import AutoModelForCausalLM

from conftest import TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.run.pipeline import ensure_stage

pytestmark = pytest.mark.slow  # every test trains PPO on the tiny world


class NaNScores(L.Callback):
    """Makes the reward models return NaN at the given iterations (a broken reward model)."""

    def __init__(self, at: set[int] | None) -> None:
        self.at = at

    def on_fit_start(self, trainer, pl_module) -> None:
        if not hasattr(pl_module, "score"):
            return
        inner = pl_module.score

        def score(ids, mask):
            out = inner(ids, mask)
            if pl_module.training and (self.at is None or pl_module.iteration in self.at):
                out = out.clone()
                out[0, 0] = float("nan")
            return out

        pl_module.score = score


def all_finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def test_nan_reward_batch_is_skipped_and_training_goes_on(tmp_path, stage_cache):
    module = run_ppo(tmp_path, stage_cache, [NaNScores(at={1, 3})]).lightning_module
    assert module.skipped_batches == 2
    assert module.iteration == 6
    assert all_finite(module.actor) and all_finite(module.critic)


def test_consecutive_nan_batches_stop_with_a_clear_error(tmp_path, stage_cache):
    with pytest.raises(
        FloatingPointError, match=r"3 consecutive PPO batches.*non-finite reward-model scores"
    ):
        run_ppo(tmp_path, stage_cache, [NaNScores(at=None)])


def test_ratio_explosion_skips_the_update(tmp_path, stage_cache, monkeypatch):
    """With max_ratio below 1 every policy update counts as an explosion: the actor must not move."""
    monkeypatch.setattr(
        test_resume,
        "RESUMABLE",
        [*RESUMABLE, "task.module.max_ratio=0.5", "task.iterations=2", "task.val_check_interval=2"],
    )
    module = run_ppo(tmp_path, stage_cache).lightning_module
    with hydra_cfg(tmp_path / "p", [*TINY_WORLD, *TINY_STAGES], cache=stage_cache) as cfg:
        sft = AutoModelForCausalLM.from_pretrained(ensure_stage(cfg, "sft"))
    assert module.skipped_updates == 2 * 2 * 2  # iterations × epochs × minibatches
    for k, v in sft.state_dict().items():
        assert torch.equal(module.actor.state_dict()[k], v)


def test_periodic_checkpoints_survive_skipped_updates(tmp_path, stage_cache, monkeypatch):
    """One ratio explosion in iteration 1 skips one update, so global_step (8 optimizer steps an iteration)
    falls off the multiples of N for good; the cadence counts iterations, so every periodic checkpoint is
    still written."""

    class ExplodeOnce(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            real, calls = pl_module.ratio_ok, []

            def ratio_ok(loss, stats):  # the first policy update of iteration 1 "explodes"
                if pl_module.iteration == 1 and not calls:
                    calls.append(1)
                    pl_module.skipped_updates += 1
                    return False
                return real(loss, stats)

            pl_module.ratio_ok = ratio_ok

    saved = []

    class Saved(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            saved.append(pl_module.iteration)

    monkeypatch.setattr(
        test_resume,
        "RESUMABLE",
        [*RESUMABLE, "task.iterations=4", "task.val_check_interval=4", "task.checkpoint_every_n_steps=2"],
    )
    module = run_ppo(tmp_path, stage_cache, [ExplodeOnce(), Saved()]).lightning_module
    assert module.skipped_updates == 1
    assert {2, 4} <= set(saved)


def test_checkpoint_of_another_task_is_refused(tmp_path, stage_cache, crashed_ppo, monkeypatch):
    ckpt = torch.load(crashed_ppo / "checkpoints" / "last.ckpt", weights_only=True)
    del ckpt["kl_controller"]  # what a checkpoint of another task looks like to PPO
    bad = tmp_path / "other.ckpt"
    torch.save(ckpt, bad)
    before = bad.read_bytes()
    monkeypatch.setattr(test_resume, "RESUMABLE", [*RESUMABLE, f"ckpt_path={bad}"])
    with pytest.raises(ValueError, match="not written by task=ppo"):
        run_ppo(tmp_path / "b", stage_cache)
    assert bad.read_bytes() == before  # nothing already written is damaged


def test_missing_checkpoint_path_is_named(tmp_path, stage_cache, monkeypatch):
    monkeypatch.setattr(test_resume, "RESUMABLE", [*RESUMABLE, "ckpt_path=/no/such.ckpt"])
    with pytest.raises(FileNotFoundError, match="ckpt_path=/no/such.ckpt"):
        run_ppo(tmp_path, stage_cache)


def test_reward_folder_of_the_wrong_kind_is_refused(tmp_path, stage_cache):
    """An SFT (causal LM) folder given as a reward model would score with a random head: refused."""
    with hydra_cfg(tmp_path / "p", [*TINY_WORLD, *TINY_STAGES], cache=stage_cache) as cfg:
        sft = ensure_stage(cfg, "sft")
    overrides = [*TINY_WORLD, *TINY_STAGES, "reward=helpful", f"reward.helpful.path={sft}"]
    with hydra_cfg(tmp_path, overrides, cache=stage_cache) as cfg:
        from lit_rlhf.run.pipeline import run

        with pytest.raises(ValueError, match=r"reward.helpful.path: .* not a reward model"):
            run(cfg)
