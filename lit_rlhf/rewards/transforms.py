"""Reward transforms (config group ``transform/``): the reward PPO optimises, from a raw BT reward.

Wang et al. (2024) replace the raw Bradley-Terry reward ``r(x, y)`` by ``u(x, y) = log sigma(r(x, y) -
r_ref(x))``, where ``r_ref(x)`` is a per-prompt reference reward (e.g. the reward of a reference-policy
response). ``u`` is the log-probability that ``y`` beats the reference under the BT model: it rewards
fixing bad outputs (large gradient weight below ``r_ref``) over making good outputs better (weight -> 0
above ``r_ref``), which curbs reward hacking, and sums of ``u`` over properties are log-probabilities
of a conjunction (see :mod:`lit_rlhf.rewards.aggregators`).

Interface shared by every transform (a Hydra ``_target_``):

- ``transform(r, r_ref) -> u``: rewards ``(B,)`` (and references ``(B,)``) to transformed rewards
  ``(B,)``; element-wise given the statistics, so batch order does not matter. A transform with
  ``multi_reference = True`` (:class:`Sigmoid`) also takes several references per rollout, ``(B, M)``.
- ``needs_reference``: whether ``r_ref`` must be given (callers skip computing it otherwise).
- ``weight(r, r_ref) -> du/dr``: the gradient weight each rollout gets (telemetry
  ``reward/<name>_weight``); equals autograd's derivative.
- ``update(r)``: fold a batch of raw rewards into running statistics (no-op unless stateful). Call it
  once per rollout batch, before ``transform(r, r_ref)``.
- ``state_dict()`` / ``load_state_dict()``: for checkpoint resume (empty for stateless transforms).
- ``samples`` / ``quantiles``: the references the transform asks for (``None`` = each reward model's own
  ``reward.<name>.reference``); the ``RewardTransformCallback`` derives them from its cached samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def check_finite(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or inf, e.g. "reward contains 2 NaN/inf values (of 8)"."""
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/inf values (of {t.numel()})")


class RewardTransform:
    """Base class: raw reward, no reference, no state. Subclasses override what they change."""

    needs_reference: bool = False
    multi_reference: bool = False  # accepts r_ref of shape (*r.shape, M): M references per rollout
    samples: int | None = None  # asks for the rewards of M sampled π_ref responses as references
    quantiles: tuple[float, ...] | None = None  # asks for these quantiles of them as references

    def _inputs(self, r: Tensor, r_ref: Tensor | None) -> Tensor | None:
        """Validate ``r`` (and ``r_ref``); return ``r_ref`` (None when not needed)."""
        check_finite("reward", r)
        if not self.needs_reference:
            return None
        if r_ref is None:
            raise ValueError(f"{type(self).__name__} needs a reference reward r_ref, got None")
        several = self.multi_reference and r_ref.dim() == r.dim() + 1 and r_ref.shape[:-1] == r.shape
        if r_ref.shape != r.shape and not several:
            extra = " (or that shape plus M references)" if self.multi_reference else ""
            raise ValueError(
                f"r_ref shape {tuple(r_ref.shape)} must match reward shape {tuple(r.shape)}{extra}"
            )
        check_finite("reference reward", r_ref)
        return r_ref

    def __call__(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def weight(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        """``du/dr`` per element; 1 unless overridden."""
        self._inputs(r, r_ref)
        return torch.ones_like(r)

    def update(self, r: Tensor) -> None:
        """Fold a batch of raw rewards into running statistics; no-op for stateless transforms."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless, got state keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(RewardTransform):
    """The raw reward: ``u = r`` (the paper's baseline); ``du/dr = 1``."""

    def __call__(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        self._inputs(r, r_ref)
        return r


class LogSigmoid(RewardTransform):
    """The paper's LSC (log-sigmoid-centered) transform (Wang et al., 2024): ``u = log sigma(r - r_ref)``.

    ``u <= 0`` is the log-probability, under the BT model, that the response beats the reference.
    Computed with ``F.logsigmoid``, so it is finite (about ``r - r_ref``) for very negative margins.
    ``du/dr = sigma(r_ref - r)``: near 1 for rollouts below the reference, near 0 far above it.
    """

    needs_reference = True

    def __call__(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        r_ref = self._inputs(r, r_ref)
        return F.logsigmoid(r - r_ref)

    def weight(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        r_ref = self._inputs(r, r_ref)
        return torch.sigmoid(r_ref - r)


class Sigmoid(RewardTransform):
    """Preference As Reward (PAR; Fu et al., 2025, "Reward Shaping to Mitigate Reward Hacking in RLHF"):
    ``u = (1/M) sum_m sigma(r - r_ref,m)``.

    Under the Bradley-Terry model ``sigma(r - r_ref,m)`` is the probability that the response beats the
    m-th reference response, so ``u`` in ``(0, 1)`` is its expected win rate against M references. It is
    bounded (the paper's first principle) and grows fastest near the references, then flattens (its
    second), and it is a function of the centred reward ``r - r_ref`` only. Unlike the log-sigmoid it is
    also flat far BELOW the references: ``du/dr = (1/M) sum_m sigma_m (1 - sigma_m)`` (at most 1/4, at
    ``r = r_ref``), so β compares with the log-sigmoid's at about half the scale.

    The references: with neither argument, each reward model's own r_ref (``reward.<name>.reference``:
    a quantile of π_ref's sampled rewards, or the reward of a fixed refusal), M = 1. Otherwise, for every
    reward model whose reference is sampled (not a fixed response), PAR's references from the n responses
    sampled per prompt from π_ref (``task.callbacks.reward_transform.n_samples``, cached):

    Args:
        samples: M — the rewards of the first M sampled responses of each prompt (PAR uses the reference
            policy's responses; the paper finds one already enough). At most n.
        quantiles: the rewards at these quantiles of the n sampled rewards, e.g. ``[0.25, 0.5, 0.75]``.
    """

    needs_reference = True
    multi_reference = True

    def __init__(self, samples: int | None = None, quantiles: Sequence[float] | None = None) -> None:
        if samples is not None and quantiles is not None:
            raise ValueError(
                "transform.samples and transform.quantiles are both set; choose one (or neither)"
            )
        if samples is not None and (isinstance(samples, bool) or int(samples) != samples or samples < 1):
            raise ValueError(f"transform.samples must be an integer >= 1 or null, got {samples!r}")
        if quantiles is not None:
            quantiles = tuple(float(q) for q in quantiles)
            if not quantiles or not all(0.0 <= q <= 1.0 for q in quantiles):
                raise ValueError(
                    f"transform.quantiles must be a non-empty list in [0, 1], got {list(quantiles)}"
                )
        self.samples = None if samples is None else int(samples)
        self.quantiles = quantiles

    def _sigmoids(self, r: Tensor, r_ref: Tensor | None) -> Tensor:
        r_ref = self._inputs(r, r_ref)
        if r_ref.shape == r.shape:
            r_ref = r_ref.unsqueeze(-1)
        return torch.sigmoid(r.unsqueeze(-1) - r_ref)  # (..., M)

    def __call__(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        return self._sigmoids(r, r_ref).mean(-1)

    def weight(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        s = self._sigmoids(r, r_ref)  # (..., M)
        return (s * (1 - s)).mean(-1)

    def __repr__(self) -> str:
        return f"Sigmoid(samples={self.samples}, quantiles={self.quantiles})"


class Center(RewardTransform):
    """Per-prompt centering: ``u = r - r_ref``; ``du/dr = 1``.

    The BT reward is only defined up to a per-prompt constant; centering removes it without the
    log-sigmoid's saturation (an ablation of the paper).
    """

    needs_reference = True

    def __call__(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        r_ref = self._inputs(r, r_ref)
        return r - r_ref


class Whiten(RewardTransform):
    """Whitening: ``u = (r - mu) / sigma``; ``du/dr = 1 / sigma`` (statistics are constants to autograd).

    With ``running=True``, ``mu`` and ``sigma`` are running statistics updated by :meth:`update`:
    exact over all rewards seen so far (Chan et al.'s parallel Welford) when ``momentum`` is None, or
    exponential moving averages ``s <- (1 - momentum) s + momentum s_batch`` otherwise. Until two rewards
    have been seen, and always with ``running=False``, the current batch's statistics are used. ``sigma``
    is floored at ``eps``, so a constant batch whitens to 0 instead of NaN.

    Args:
        running: Use running statistics (True) or per-batch statistics (False).
        momentum: EMA weight of a new batch in ``(0, 1]``; None for exact cumulative statistics.
        eps: Floor on ``sigma`` (> 0).
    """

    def __init__(self, running: bool = True, momentum: float | None = None, eps: float = 1e-6) -> None:
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"transform.momentum must be in (0, 1] or null, got {momentum}")
        if not eps > 0:
            raise ValueError(f"transform.eps must be > 0, got {eps}")
        self.running = running
        self.momentum = momentum
        self.eps = eps
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations (Welford) or EMA variance times count

    @property
    def var(self) -> float:
        """Running (population) variance."""
        return self.m2 / self.count if self.count else 0.0

    def update(self, r: Tensor) -> None:
        check_finite("reward", r)
        if not self.running or r.numel() == 0:
            return
        x = r.detach().double().flatten()
        n_b, mean_b = x.numel(), float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        if self.momentum is None or self.count == 0:
            # Chan et al. (1979): merge (count, mean, M2) with the batch's.
            n = self.count + n_b
            delta = mean_b - self.mean
            self.m2 += m2_b + delta**2 * self.count * n_b / n
            self.mean += delta * n_b / n
            self.count = n
        else:
            var = (1 - self.momentum) * self.var + self.momentum * m2_b / n_b
            self.mean = (1 - self.momentum) * self.mean + self.momentum * mean_b
            self.count += n_b
            self.m2 = var * self.count

    def _stats(self, r: Tensor) -> tuple[float, float]:
        if self.running and self.count >= 2:
            return self.mean, max(math.sqrt(self.var), self.eps)
        x = r.detach().double()
        std = float(x.std(unbiased=False)) if x.numel() > 1 else 0.0
        return float(x.mean()), max(std, self.eps)

    def __call__(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        self._inputs(r, r_ref)
        mean, std = self._stats(r)
        return (r - mean) / std

    def weight(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        self._inputs(r, r_ref)
        _, std = self._stats(r)
        return torch.full_like(r, 1.0 / std)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])

    def __repr__(self) -> str:
        return f"Whiten(running={self.running}, momentum={self.momentum}, count={self.count})"


class Clip(RewardTransform):
    """Clipping: ``u = clamp(r - r_ref, low, high)`` if ``center`` else ``u = clamp(r, low, high)``.

    ``du/dr = 1`` inside ``[low, high]`` (boundaries included, as autograd does) and 0 outside:
    rollouts beyond the range get no gradient (a hard version of the log-sigmoid's saturation).

    Args:
        low: Lower bound, or None for none.
        high: Upper bound, or None for none.
        center: Subtract the per-prompt reference before clipping.
    """

    def __init__(self, low: float | None = None, high: float | None = None, center: bool = False) -> None:
        if low is None and high is None:
            raise ValueError("transform.low and transform.high are both null; set at least one")
        if low is not None and high is not None and not low < high:
            raise ValueError(f"transform.low must be < transform.high, got low={low}, high={high}")
        self.low, self.high, self.center = low, high, center
        self.needs_reference = center

    def _centered(self, r: Tensor, r_ref: Tensor | None) -> Tensor:
        r_ref = self._inputs(r, r_ref)
        return r - r_ref if self.center else r

    def __call__(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        return torch.clamp(self._centered(r, r_ref), self.low, self.high)

    def weight(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        x = self._centered(r, r_ref)
        inside = torch.ones_like(x, dtype=torch.bool)
        if self.low is not None:
            inside &= x >= self.low
        if self.high is not None:
            inside &= x <= self.high
        return inside.to(r.dtype)

    def __repr__(self) -> str:
        return f"Clip(low={self.low}, high={self.high}, center={self.center})"
