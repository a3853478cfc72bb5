"""Checkpoints: atomic writes, and a periodic cadence counted in iterations for policy optimisation.

Atomic writes: a kill during a save leaves the previous checkpoint usable.

Lightning's ``TorchCheckpointIO`` writes the file in place, so a ``kill -9`` in the middle of a save can
leave a truncated ``last.ckpt``. This plugin writes to a temporary file in the same folder, flushes it to
disk and renames it over the old one (``os.replace`` is atomic on POSIX file systems).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_rlhf.utils.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is all-or-nothing."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_write(path, "wb") as f:  # after a failed save the old file stays
            torch.save(checkpoint, f)


class IterationCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``every_n_train_steps`` counts what the task calls a step.

    Policy-optimisation tasks (manual optimization) take several optimizer steps per iteration, so
    ``trainer.global_step`` — what ``ModelCheckpoint`` counts — grows by ``ppo_epochs × minibatches ×
    optimizers`` per iteration, and one skipped update makes it miss every later multiple of N: the periodic
    checkpoints stop. Here a module with an ``iteration`` counter is checkpointed every N iterations;
    other modules behave as with ``ModelCheckpoint``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_iteration_saved = -1

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        iteration = getattr(pl_module, "iteration", None)
        if iteration is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self._every_n_train_steps
        if n < 1 or iteration % n or iteration == self._last_iteration_saved:
            return None
        if trainer.fast_dev_run or trainer.sanity_checking:
            return None
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._last_iteration_saved = iteration
        return None
