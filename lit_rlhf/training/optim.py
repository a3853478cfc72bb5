"""The `optimizer/` config group: optimizer factories and the warm-up schedule every task uses.

Optimizers are Hydra partials (``_partial_: true``): the task completes them with its parameters and its
learning rate, so one group serves the policy, the value model and the reward model alike.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


def _bitsandbytes() -> Any:
    """Import bitsandbytes without its import-time notices, or raise an ImportError naming the extra.

    On CPU it warns (``warnings``) about CUDA and logs (logger ``bitsandbytes``) that an optional 4-bit
    matmul kernel (the ``kernels`` package) is missing, or ``kernels`` logs that it cannot check the kernel's
    publisher offline; none of it concerns 8-bit AdamW.
    """
    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "kernels")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes as bnb  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(
            "optimizer=adamw8bit / paged_adamw8bit need bitsandbytes: "
            "pip install 'lit_rlhf[bnb]' (or pip install bitsandbytes)"
        ) from err
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return bnb


def adamw8bit(params: Iterable[torch.nn.Parameter], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW with 8-bit optimizer states (bitsandbytes); same arguments as ``torch.optim.AdamW``."""
    return _bitsandbytes().optim.AdamW8bit(params, lr=lr, **kwargs)


def paged_adamw8bit(params: Iterable[torch.nn.Parameter], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Paged 8-bit AdamW (bitsandbytes): states page to CPU memory under GPU memory pressure.

    On CPU there is nothing to page to; bitsandbytes warns once and behaves as ``adamw8bit``.
    """
    return _bitsandbytes().optim.PagedAdamW8bit(params, lr=lr, **kwargs)


def warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None
) -> LambdaLR:
    """Linear warm-up from ~0 to the optimizer's learning rate over ``warmup_steps`` steps.

    Then constant (``total_steps=None``) or a cosine decay to 0 at ``total_steps`` (a run no longer than
    its warm-up only warms up).
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None or total_steps <= warmup_steps:
            return 1.0
        done = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * done))

    return LambdaLR(optimizer, factor)
