"""Gathering from every process (DDP), so that telemetry and running statistics are global.

Outside ``torch.distributed`` (one process) every function returns its input unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(t: Tensor) -> tuple[Tensor, slice]:
    """Every process's rows of ``t``, concatenated in rank order (row counts may differ).

    Args:
        t: (B, ...) this process's rows.

    Returns:
        ``(rows, mine)``: (N, ...) the rows of all processes, N = Σ B, and the slice of ``rows`` that is
        this process's ``t``.
    """
    rank, size = world()
    if size == 1:
        return t, slice(0, len(t))
    parts = gather_all_tensors(t)  # torchmetrics: pads uneven shapes, gathers, trims
    start = sum(len(p) for p in parts[:rank])
    return torch.cat(parts), slice(start, start + len(t))


def gather_objects(items: list[Any]) -> list[Any]:
    """Every process's list of picklable items, concatenated in rank order."""
    _, size = world()
    if size == 1:
        return list(items)
    parts: list[list[Any] | None] = [None] * size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part or []]
