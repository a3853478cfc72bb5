"""GDPO's aggregation (``aggregator=normalize_then_sum``; arXiv 2601.05242): normalise each reward within its
prompt's group, take the weighted sum, then whiten over the batch.

Its authors' argument: GRPO on a plain sum gives every reward combination with the same total the same
advantage — (1, 0) and (0, 1) tie — so it cannot tell which property a sample got right. Normalising each
reward within the group first makes each one's spread count on its own. TRL offers it as
``multi_objective_aggregation="normalize_then_sum"``, verl as the ``gdpo`` estimator.

The paper lit_rlhf reproduces answers the same question with an AND: ``Σ_i log σ(r_i − r_ref,i)``. The two
compose: GDPO over log-sigmoid-transformed rewards is ``+transform=logsigmoid aggregator=normalize_then_sum``.

Without groups (PPO and REINFORCE++ with ``samples_per_prompt=1``) "the group" is the whole batch: each reward
is normalised over the batch, then summed and whitened.

The result is already an advantage (zero mean, unit spread over the batch): GRPO uses it as is instead of
normalising it per group again (as TRL does); RLOO, PPO and REINFORCE++ treat it as their reward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lit_rlhf.rewards.aggregators import _check, weight_vector

FLAT = 1e-4  # a sum of normalised terms with less spread than this is taken as no signal


def group_normalise(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """Each column normalised within consecutive groups of ``group_size`` rows: (r − mean_G)/(std_G + eps).

    ``std`` is the Bessel-corrected sample std, as GRPO's group advantage. A group whose values are all equal
    carries no signal and gets exactly 0 (not the float rounding of its mean divided by ``eps``).

    Args:
        rewards: ``(B, K)``, ``B = P·G`` in consecutive blocks of ``G`` per prompt.
        group_size: ``G`` (1 = the whole batch is one group).

    Returns:
        ``(B, K)`` normalised rewards.
    """
    B, K = rewards.shape
    G = B if group_size <= 1 else group_size
    if B % G:
        raise ValueError(f"normalize_then_sum: batch of {B} rows is not a whole number of groups of {G}")
    groups = rewards.reshape(B // G, G, K)  # (P, G, K)
    centred = groups - groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(groups[:, :1])
    flat = (groups == groups[:, :1]).all(dim=1, keepdim=True)  # (P, 1, K): no spread at all
    out = torch.where(flat, torch.zeros_like(centred), centred / (std + eps))
    return out.reshape(B, K)


def normalize_then_sum(rewards: Tensor, weights: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GDPO: ``A = whiten(Σ_k w_k · group_normalise(r)_k)`` over the batch.

    Args:
        rewards: ``(B, K)`` per-reward values (raw or transformed).
        weights: ``(K,)`` weights of the sum.
        group_size: ``G`` samples per prompt (1: per-reward batch normalisation).
        eps: added to every std.

    Returns:
        ``(B,)`` advantages: zero mean over the batch, std 1 unless every total is equal (then 0).
    """
    total = group_normalise(rewards, group_size, eps) @ weights.to(rewards)  # (B,)
    centred = total - total.mean()
    # the terms are in units of each reward's group std, so a total whose spread is below FLAT is rounding
    # (e.g. G = 2 and two rewards that always move in opposite directions: every term pair cancels);
    # whitening it would turn float noise into unit-variance advantages
    if len(total) < 2 or float(total.std()) < FLAT * float(weights.abs().sum().clamp_min(1)):
        return torch.zeros_like(total)
    return centred / (total.std() + eps)


class NormalizeThenSum:
    """GDPO's aggregator: per-reward group normalisation, weighted sum, batch whitening.

    Args:
        weights: reward-model name → weight; ``None`` = 1 for every reward.
        eps: added to every std.
    """

    gives_advantages = True  # GRPO takes the result as its advantage (no second group normalisation)
    needs_groups = True  # called with group_size = samples_per_prompt

    def __init__(self, weights: Mapping[str, float] | None = None, eps: float = 1e-6) -> None:
        if not eps > 0:
            raise ValueError(f"aggregator.eps must be > 0, got {eps}")
        self.weights = None if weights is None else {str(k): float(v) for k, v in weights.items()}
        self.eps = float(eps)

    def weight_vector(self, names: Sequence[str], like: Tensor) -> Tensor:
        if self.weights is None:
            return torch.ones(len(names), dtype=like.dtype, device=like.device)
        return weight_vector(self.weights, names, like)

    def per_reward(self, rewards: Tensor, names: Sequence[str], group_size: int = 1) -> Tensor:
        """``(B, K)`` weighted, group-normalised terms before the sum (telemetry: each reward's advantage)."""
        _check(rewards, names)
        return group_normalise(rewards, group_size, self.eps) * self.weight_vector(names, rewards)

    def __call__(self, rewards: Tensor, names: Sequence[str], group_size: int = 1) -> Tensor:
        _check(rewards, names)
        return normalize_then_sum(rewards, self.weight_vector(names, rewards), group_size, self.eps)

    def __repr__(self) -> str:
        return f"NormalizeThenSum(weights={self.weights}, eps={self.eps})"
