"""A conservative ensemble of reward models of ONE property (``reward.<name>.ensemble``).

Coste et al. (2024, "Reward Model Ensembles Help Mitigate Overoptimization") train several reward models
of the same preferences from different seeds and optimise a conservative aggregate of their scores: the
mean minus ``k`` standard deviations (a lower confidence bound), their uncertainty-weighted mean minus
``k`` variances (UWO), or the minimum (worst-case optimisation, WCO). Where the members agree (on the
data they were trained on) the aggregate is their common score; where the policy drifts to responses
they disagree on, it is pulled down — what over-optimisation exploits.

:class:`RewardEnsemble` gives ONE score per sequence, so the rest of lit_rlhf sees one reward model of
the property: r_ref, the transform (``+transform=…``) and the aggregator across properties
(``aggregator=…``) all act on the ensemble's aggregate, and the telemetry is ``reward/<name>_*``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from lit_rlhf.models.heads import position_ids, score_head
from lit_rlhf.rewards.aggregators import Mean, MeanMinusStd, MeanMinusVar, Min

AGGREGATES = ("mean_minus_std", "mean_minus_var", "min", "mean")


@dataclass(frozen=True)
class EnsembleSpec:
    """How one property's ensemble is built and aggregated (``reward.<name>.ensemble``).

    Args:
        name: the property (the ``reward`` entry), for error messages.
        seeds: one member per seed, each trained as the ``reward=<name>`` stage with ``seed=<s>`` and
            cached (seed 0 is the property's usual reward model).
        paths: instead of ``seeds``, one trained reward-model folder per member.
        aggregate: ``mean_minus_std`` | ``mean_minus_var`` (UWO) | ``min`` (WCO) | ``mean``.
        k: weight of the std (or variance); >= 0.
    """

    name: str
    seeds: tuple[int, ...] = (0, 1, 2)
    paths: tuple[str, ...] | None = None
    aggregate: str = "mean_minus_std"
    k: float = 1.0

    def __post_init__(self) -> None:
        key = f"reward.{self.name}.ensemble"
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"{key}.aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if (
            isinstance(self.k, bool)
            or not isinstance(self.k, int | float)
            or not math.isfinite(self.k)
            or self.k < 0
        ):
            raise ValueError(f"{key}.k must be a finite number >= 0, got {self.k!r}")
        members = self.paths if self.paths is not None else self.seeds
        if len(members) < 2:
            what = "paths" if self.paths is not None else "seeds"
            raise ValueError(f"{key}.{what} must list at least 2 members, got {list(members)}")
        if len(set(members)) != len(members):
            what = "paths" if self.paths is not None else "seeds"
            raise ValueError(f"{key}.{what} lists a member twice: {list(members)}")

    @classmethod
    def from_config(cls, name: str, cfg: Any) -> EnsembleSpec:
        """From the ``reward.<name>.ensemble`` mapping (``seeds``, ``paths``, ``aggregate``, ``k``)."""
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - {"seeds", "paths", "aggregate", "k"})
        if unknown:
            raise ValueError(
                f"reward.{name}.ensemble has unknown keys {unknown}; expected seeds, paths, aggregate, k"
            )
        paths = cfg.get("paths")
        seeds = cfg.get("seeds")
        return cls(
            name=name,
            seeds=tuple(int(s) for s in seeds) if seeds is not None else (),
            paths=tuple(str(p) for p in paths) if paths is not None else None,
            aggregate=str(cfg.get("aggregate", "mean_minus_std")),
            k=cfg.get("k", 1.0),
        )

    def aggregator(self) -> Any:
        """The aggregate as an aggregator of :mod:`lit_rlhf.rewards.aggregators` over (B, M) member scores."""
        return {
            "mean_minus_std": lambda: MeanMinusStd(self.k),
            "mean_minus_var": lambda: MeanMinusVar(self.k),
            "min": Min,
            "mean": Mean,
        }[self.aggregate]()


class _Aggregate(nn.Module):
    """(N, M) member scores → (N, 1) aggregate: the ensemble's "score head" (no parameters)."""

    def __init__(self, aggregator: Any, members: Sequence[str]) -> None:
        super().__init__()
        self.aggregator, self.members = aggregator, list(members)

    def forward(self, scores: Tensor) -> Tensor:
        return self.aggregator(scores.float(), self.members)[:, None]  # (N, 1)


class RewardEnsemble(nn.Module):
    """M frozen reward models of one property scored as one: the aggregate of their scores.

    It exposes ``base_model`` and ``score`` the way a ``*ForSequenceClassification`` does, so
    :func:`lit_rlhf.models.scoring.reward_scores` scores it unchanged: ``base_model`` returns, as its
    "hidden states", every member's score at every position (N, T, M), and ``score`` aggregates the M
    scores read at the last attended token. ``forward(input_ids, attention_mask)`` returns the same (N,)
    scores directly.

    Args:
        members: the M reward models (``*ForSequenceClassification`` with one label).
        aggregate: see :class:`EnsembleSpec`.
        k: see :class:`EnsembleSpec`.
    """

    def __init__(
        self, members: Sequence[nn.Module], aggregate: str = "mean_minus_std", k: float = 1.0
    ) -> None:
        super().__init__()
        spec = EnsembleSpec("<ensemble>", seeds=tuple(range(len(members))), aggregate=aggregate, k=k)
        self.aggregate, self.k = spec.aggregate, float(spec.k)
        self.members = nn.ModuleList(members)
        self.score = _Aggregate(spec.aggregator(), [str(i) for i in range(len(members))])

    def settings(self) -> dict[str, Any]:
        """What the aggregate depends on besides the weights (part of the r_ref cache key)."""
        return {"aggregate": self.aggregate, "k": self.k, "members": len(self.members)}

    def member_scores(
        self, input_ids: Tensor, attention_mask: Tensor, positions: Tensor | None = None
    ) -> Tensor:
        """Every member's score at every position: (N, T, M)."""
        positions = position_ids(attention_mask) if positions is None else positions
        out = []
        for m in self.members:
            hidden = m.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
            ).last_hidden_state  # (N, T, H)
            out.append(score_head(m)(hidden)[..., 0].float())  # (N, T)
        return torch.stack(out, -1)  # (N, T, M)

    def base_model(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None
    ) -> BaseModelOutput:
        """The ``base_model`` call of a sequence classifier: member scores as hidden states (N, T, M)."""
        return BaseModelOutput(last_hidden_state=self.member_scores(input_ids, attention_mask, position_ids))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(N,) aggregate scores at the last attended token of each row."""
        from lit_rlhf.models.scoring import reward_scores  # noqa: PLC0415  (the one scoring rule)

        return reward_scores(self, input_ids, attention_mask)

    def extra_repr(self) -> str:
        return f"aggregate={self.aggregate}, k={self.k}"
