"""A skipped update keeps the checkpoint cadence. NaN rewards, ratio explosions, bad checkpoints and
reward folders of the wrong kind are the failure table's cases (``tests/failure_table_training.py``, run
through ``python train.py``: rows ``nan_batch``, ``nan_streak``, ``ratio``, ``bad_ckpt``,
``missing_folder``)."""

from __future__ import annotations

import lightning as L
import pytest
import test_resume
from test_resume import RESUMABLE, run_ppo

pytestmark = pytest.mark.slow  # every test trains PPO on the tiny world


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
