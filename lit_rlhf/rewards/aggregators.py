"""Reward aggregators (config group ``aggregator/``): K per-property rewards -> one PPO score.

Every aggregator maps transformed rewards ``(B, K)`` and the K reward-model names to ``(B,)``.

With log-sigmoid transformed rewards ``u_i = log sigma(r_i - r_ref,i)`` (Wang et al., 2024),
:class:`Sum` is the paper's "logical AND":
``sum_i u_i = log prod_i sigma(r_i - r_ref,i) = log P(good on every property)`` when the properties are
judged independently. A rollout cannot buy a high score by excelling on one property while failing
another, because each failing factor drives the product towards 0. On raw rewards the same
:class:`Sum` is the usual baseline, which lets one property compensate for another.

The conservative aggregates of Coste et al. (2024, "Reward Model Ensembles Help Mitigate
Overoptimization") — :class:`MeanMinusStd`, :class:`MeanMinusVar` (their UWO) and :class:`Min` (their
WCO) — have the same interface; :class:`lit_rlhf.rewards.ensemble.RewardEnsemble` applies them over
the members of a reward-model ensemble (``reward.<name>.ensemble``), the columns then being M scores of
ONE property.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def _check(rewards: Tensor, names: Sequence[str]) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B, K), got shape {tuple(rewards.shape)}")
    if rewards.shape[1] != len(names):
        raise ValueError(f"rewards have K={rewards.shape[1]} columns but {len(names)} names: {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {list(names)}")


def weight_vector(weights: Mapping[str, float], names: Sequence[str], like: Tensor) -> Tensor:
    """``(K,)`` weights in ``names`` order, on ``like``'s dtype and device; ``weights`` must name exactly the
    reward models."""
    missing, unknown = sorted(set(names) - set(weights)), sorted(set(weights) - set(names))
    if missing or unknown:
        raise ValueError(
            f"aggregator.weights must name exactly the reward models {list(names)}: "
            f"missing {missing}, unknown {unknown}"
        )
    return torch.tensor([weights[n] for n in names], dtype=like.dtype, device=like.device)


class Sum:
    """``R = sum_i u_i``; over log-sigmoid rewards, ``log P(good on every property)``."""

    def __call__(self, rewards: Tensor, names: Sequence[str]) -> Tensor:
        _check(rewards, names)
        return rewards.sum(dim=1)  # (B,)

    def __repr__(self) -> str:
        return "Sum()"


class WeightedSum:
    """``R = sum_i w_i u_i`` with one weight per reward name (e.g. the raw-reward baseline).

    Args:
        weights: Mapping from reward-model name to its weight; must cover exactly the reward names.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        if not weights:
            raise ValueError("aggregator.weights is empty; give one weight per reward model")
        self.weights = {str(k): float(v) for k, v in weights.items()}
        bad = {k: v for k, v in self.weights.items() if not math.isfinite(v)}
        if bad:
            raise ValueError(f"aggregator.weights must be finite, got {bad}")

    def __call__(self, rewards: Tensor, names: Sequence[str]) -> Tensor:
        _check(rewards, names)
        return rewards @ weight_vector(self.weights, names, rewards)  # (B,)

    def subset(self, names: Sequence[str]) -> WeightedSum:
        """The weighted sum over ``names`` alone (for rows where only those rewards apply)."""
        return WeightedSum({n: self.weights[n] for n in names if n in self.weights} or {"": 0.0})

    def __repr__(self) -> str:
        return f"WeightedSum(weights={self.weights})"


class Min:
    """``R = min_i u_i``: the worst-case property (a hard "AND" that ignores all but one reward); over an
    ensemble's members, Coste et al.'s (2024) worst-case optimisation (WCO)."""

    def __call__(self, rewards: Tensor, names: Sequence[str]) -> Tensor:
        _check(rewards, names)
        return rewards.amin(dim=1)  # (B,)

    def __repr__(self) -> str:
        return "Min()"


class SoftMin:
    """Smooth minimum ``R = -tau log sum_i exp(-u_i / tau)``; tends to :class:`Min` as ``tau -> 0``.

    ``min_i u_i - tau log K <= R <= min_i u_i``; the gradient spreads over the worst properties with
    softmax weights ``softmax(-u / tau)``.

    Args:
        temperature: ``tau`` (> 0).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise ValueError(f"aggregator.temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, rewards: Tensor, names: Sequence[str]) -> Tensor:
        _check(rewards, names)
        return -self.temperature * torch.logsumexp(-rewards / self.temperature, dim=1)  # (B,)

    def __repr__(self) -> str:
        return f"SoftMin(temperature={self.temperature})"


class Mean:
    """``R = (1/K) sum_i u_i``: the plain average (an ensemble's mean prediction)."""

    def __call__(self, rewards: Tensor, names: Sequence[str]) -> Tensor:
        _check(rewards, names)
        return rewards.mean(dim=1)  # (B,)

    def __repr__(self) -> str:
        return "Mean()"


class MeanMinusStd:
    """``R = mean_i u_i - k std_i u_i``: a lower confidence bound over ensemble members (Coste et al.,
    2024; std in the reward's own units, population std over the K columns, 0 for K = 1).

    Where the members disagree — typically off the reward models' data, where over-optimisation
    happens — the score is pulled down by ``k`` standard deviations.

    Args:
        k: weight of the standard deviation (>= 0; 0 = :class:`Mean`).
    """

    def __init__(self, k: float = 1.0) -> None:
        if not (math.isfinite(k) and k >= 0):
            raise ValueError(f"aggregator.k must be a finite number >= 0, got {k}")
        self.k = float(k)

    def __call__(self, rewards: Tensor, names: Sequence[str]) -> Tensor:
        _check(rewards, names)
        return rewards.mean(dim=1) - self.k * rewards.std(dim=1, correction=0)  # (B,)

    def __repr__(self) -> str:
        return f"MeanMinusStd(k={self.k})"


class MeanMinusVar:
    """``R = mean_i u_i - k var_i u_i``: Coste et al.'s (2024) uncertainty-weighted optimisation (UWO),
    with the population variance over the K columns.

    Args:
        k: the paper's λ, the weight of the variance (>= 0).
    """

    def __init__(self, k: float = 1.0) -> None:
        if not (math.isfinite(k) and k >= 0):
            raise ValueError(f"aggregator.k must be a finite number >= 0, got {k}")
        self.k = float(k)

    def __call__(self, rewards: Tensor, names: Sequence[str]) -> Tensor:
        _check(rewards, names)
        return rewards.mean(dim=1) - self.k * rewards.var(dim=1, correction=0)  # (B,)

    def __repr__(self) -> str:
        return f"MeanMinusVar(k={self.k})"


def aggregate(aggregator, rewards: Tensor, names: Sequence[str]) -> Tensor:
    """``aggregator(rewards, names)``, where a NaN means "does not apply" (a reward function returned None):
    each row is aggregated over its applicable rewards alone, as if the others were not configured (the
    aggregator's ``subset(names)`` if it has one, e.g. :meth:`WeightedSum.subset`); a row with none gets 0.

    Args:
        aggregator: any aggregator of this module.
        rewards: (B, K) transformed rewards, NaN where not applicable.
        names: the K reward names.

    Returns:
        (B,) aggregated rewards.
    """
    ok = torch.isfinite(rewards)  # (B, K)
    if bool(ok.all()):
        return aggregator(rewards, names)
    _check(rewards, names)
    aggregator(torch.zeros(1, len(names), dtype=rewards.dtype), names)  # the settings fit every reward
    out = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for pattern in torch.unique(ok, dim=0):  # rows with the same applicable rewards together
        rows, cols = (ok == pattern).all(1), pattern.nonzero()[:, 0]
        if len(cols):
            sub = [names[c] for c in cols.tolist()]
            agg = aggregator.subset(sub) if hasattr(aggregator, "subset") else aggregator
            out[rows] = agg(rewards[rows][:, cols], sub)
    return out
