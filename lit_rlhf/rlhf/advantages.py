"""Masked statistics and generalised advantage estimation (GAE).

Every function is pure: tensors in, tensors out, no module state. Masks are boolean (or 0/1) tensors of
the same shape as the data; ``True`` marks a response token that takes part in the statistic. Masked
positions never leak into a result, even when they hold NaN or inf (they are selected away with
``torch.where``, not multiplied by zero).

Under data parallelism each process holds a shard of the batch. The batch statistics (:func:`masked_mean`,
:func:`masked_var`, :func:`masked_whiten`) take an ``all_sum`` that sums a tensor over the processes (an
all-reduce): they are then statistics of the GLOBAL batch, the same on every process and equal, up to the
order of floating-point additions, to those one process holding the whole batch computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

AllSum = Callable[[Tensor], Tensor]
"""Sums a tensor over the data-parallel processes and returns the sum (the same on every process)."""


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, all_sum: AllSum | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True.

    ``mean = sum_i m_i x_i / sum_i m_i``; an all-False mask gives 0 rather than NaN.

    Args:
        x: Values, any shape, e.g. ``(B, T)``.
        mask: Boolean (or 0/1) tensor of the same shape as ``x``.
        dim: Dimension to reduce; ``None`` reduces over all elements.
        all_sum: Sums over the data-parallel processes (``dim=None`` only): the mean of the global batch.

    Returns:
        Scalar tensor, or ``x`` reduced along ``dim``.
    """
    mask = mask.bool()
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if all_sum is not None:
        if dim is not None:
            raise ValueError("masked_mean: all_sum reduces over every element (dim=None)")
        total, count = all_sum(torch.stack([x.sum(), mask.sum().to(x.dtype)]))  # one all-reduce
        return total / count.clamp_min(1)
    if dim is None:
        return x.sum() / mask.sum().clamp_min(1)
    return x.sum(dim) / mask.sum(dim).clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True, all_sum: AllSum | None = None) -> Tensor:
    """Variance of ``x`` over the masked positions (all of them pooled).

    ``var = sum_i m_i (x_i - mean)^2 / (n - 1)`` with ``n = sum_i m_i`` (Bessel-corrected when
    ``unbiased``). With fewer than two masked elements the correction is skipped, so one element gives
    0 and none gives 0.

    Args:
        x: Values, any shape.
        mask: Boolean (or 0/1) tensor of the same shape as ``x``.
        unbiased: Divide by ``n - 1`` instead of ``n``.
        all_sum: Sums over the data-parallel processes: the variance of the global batch (two passes, the
            global mean first, as in one process).

    Returns:
        Scalar tensor.
    """
    mask = mask.bool()
    mean = masked_mean(x, mask, all_sum=all_sum)
    var = masked_mean((x - mean) ** 2, mask, all_sum=all_sum)
    n = mask.sum() if all_sum is None else all_sum(mask.sum())
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, all_sum: AllSum | None = None
) -> Tensor:
    """Whiten ``x`` with the mean and variance of its masked positions.

    ``x_hat = (x - mean) / sqrt(var + eps)``, plus ``mean`` added back when ``shift_mean`` is False
    (PPO whitens advantages with ``shift_mean=True`` and rewards with ``shift_mean=False``). A constant
    tensor has ``var = 0`` and ``x - mean = 0``, so it whitens to zeros, not NaN. Masked positions are 0.

    Args:
        x: Values, e.g. advantages ``(B, T)``.
        mask: Boolean (or 0/1) tensor of the same shape as ``x``.
        shift_mean: If False, keep the original mean (only rescale).
        eps: Added to the variance before the square root.
        all_sum: Sums over the data-parallel processes: whiten with the global batch's mean and variance
            (PPO's and REINFORCE++'s advantage whitening under DDP).

    Returns:
        Tensor of the shape of ``x``.
    """
    mask = mask.bool()
    mean = masked_mean(x, mask, all_sum=all_sum)
    var = masked_var(x, mask, all_sum=all_sum)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016, eq. 16) over response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    ``V = A = 0`` after the last response token (the episode ends there). Steps run over the masked
    tokens only: a masked position is skipped (its neighbours are joined), so a prompt prefix and right
    padding are handled alike. ``returns = A + V`` is the value target.

    Args:
        rewards: Per-token rewards ``(B, T)``, e.g. from :func:`per_token_rewards`.
        values: Value-head estimates ``(B, T)``.
        mask: Response-token mask ``(B, T)``.
        gamma: Discount factor in ``[0, 1]``.
        lam: GAE lambda in ``[0, 1]``.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and 0 at masked positions. Call under
        ``torch.no_grad()`` (or pass detached tensors): these are targets, not part of the graph.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"gae needs rewards, values and mask of one shape, got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = rewards.new_zeros(B)  # (B,) V of the next response token, 0 past the end
    next_adv = rewards.new_zeros(B)  # (B,) A of the next response token, 0 past the end
    for t in reversed(range(T)):
        m = mask[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        adv = delta + gamma * lam * next_adv  # (B,)
        advantages[:, t] = torch.where(m, adv, 0.0)
        next_adv = torch.where(m, adv, next_adv)
        next_value = torch.where(m, values[:, t], next_value)
    returns = torch.where(mask, advantages + values, 0.0)  # (B, T)
    return advantages, returns
