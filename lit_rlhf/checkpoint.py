"""Atomic checkpoint writes: a kill during a save leaves the previous checkpoint usable.

Lightning's ``TorchCheckpointIO`` writes the file in place, so a ``kill -9`` in the middle of a save can
leave a truncated ``last.ckpt``. This plugin writes to a temporary file in the same folder, flushes it to
disk and renames it over the old one (``os.replace`` is atomic on POSIX file systems).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is all-or-nothing."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # after a failed save, drop the partial file; the old one stays
