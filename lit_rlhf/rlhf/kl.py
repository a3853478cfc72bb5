"""Per-token KL estimators and the KL-penalised PPO reward.

The PPO reward of Ziegler et al. (2019) is ``R(x, y) = score(x, y) - beta * KL(pi || pi_ref)``, spread
over the response: every token pays ``-beta * kl_t`` and the last token also receives the (transformed,
aggregated) sequence score.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from samples of ``pi`` (Schulman, 2020).

    With ``log r = log pi_ref(y_t) - log pi(y_t)``:

    - ``k1 = -log r = log pi - log pi_ref`` (unbiased, can be negative),
    - ``k2 = 1/2 (log r)^2`` (biased, low variance, >= 0),
    - ``k3 = (r - 1) - log r`` (unbiased, >= 0), computed with ``expm1`` for precision.

    Args:
        logprobs: ``log pi`` of the sampled tokens ``(B, T)``.
        ref_logprobs: ``log pi_ref`` of the same tokens ``(B, T)``.
        estimator: One of ``"k1"``, ``"k2"``, ``"k3"``.

    Returns:
        Per-token KL estimates ``(B, T)`` (masking is the caller's job).
    """
    log_ratio = logprobs - ref_logprobs  # (B, T) = -log r
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        log_r = -log_ratio
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kl estimator must be one of 'k1', 'k2', 'k3', got {estimator!r}")


def masked_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """:func:`kl_penalty` on the tokens of ``mask`` ``(B, T)``, exactly 0 elsewhere, whatever the log-probs
    hold there (selected away, not multiplied by 0: ``-inf * 0`` is NaN)."""
    mask = mask.bool()
    kl = kl_penalty(torch.where(mask, logprobs, 0.0), torch.where(mask, ref_logprobs, 0.0), estimator)
    return torch.where(mask, kl, 0.0)  # (B, T)


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last True position in each row of ``mask`` ``(B, T)`` -> ``(B,)``.

    Raises:
        ValueError: If a row has no True position (a response without tokens).
    """
    mask = mask.bool()
    empty = ~mask.any(dim=1)  # (B,)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"mask rows {rows} have no response tokens; every response needs >= 1 token")
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask, positions, -1).amax(dim=1)  # (B,)


def per_token_rewards(scores: Tensor, kl: Tensor, beta: float, mask: Tensor) -> Tensor:
    """Per-token PPO rewards: KL penalty on every response token, score on the last one.

    ``rewards_t = -beta * kl_t + [t == last response token] * score`` (Ziegler et al., 2019, eq. 2
    spread over tokens). Masked positions are 0, whatever ``kl`` holds there.

    Args:
        scores: Sequence rewards ``(B,)`` (already transformed and aggregated).
        kl: Per-token KL estimates ``(B, T)`` from :func:`kl_penalty`.
        beta: KL coefficient (e.g. ``KLController.value``).
        mask: Response-token mask ``(B, T)``; every row needs at least one True.

    Returns:
        Rewards ``(B, T)``.
    """
    if scores.dim() != 1 or kl.shape != mask.shape or kl.shape[0] != scores.shape[0]:
        raise ValueError(
            f"per_token_rewards needs scores (B,) and kl, mask (B, T), got {tuple(scores.shape)}, "
            f"{tuple(kl.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    rewards = torch.where(mask, -beta * kl, 0.0)  # (B, T)
    last = last_token_index(mask)  # (B,)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards
