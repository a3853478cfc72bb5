"""How a task ends: its headline metrics, a model card in the saved folder, and the closing summary.

The pipeline calls :func:`finish` on rank 0 after a task saved its model. What counts as headline depends
on the task (:data:`HEADLINES`); standard errors come from the number of held-out comparisons.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lit_rlhf.run.card import write_model_card
from lit_rlhf.run.summary import format_summary, proportion_errors, write_summary

log = logging.getLogger("lit_rlhf")
HEADLINES: dict[str, tuple[str, ...]] = {
    "sft": ("val/loss", "val/loss_initial"),
    "reward_model": ("val/rm_acc", "val/margin", "val/loss"),
    "policy": (
        "gold/win_rate_helpful",
        "gold/win_rate_harmless",
        "gold/win_rate_both",
        "gold/kl_to_sft",
        "gold/proxy_minus_gold",
        "val/kl",
        "val/response_length",
        "reward/total",
    ),
}
KIND = {"sft": "sft", "reward_model": "reward_model", "policy": "policy"}


def overrides_of(cfg: DictConfig) -> list[str]:
    """The overrides this config was composed with: a built stage's own, else the command line's."""
    if cfg.get("stage_overrides") is not None:
        return list(cfg.stage_overrides)
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def headline(trainer: L.Trainer, family: str, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """The task's headline metrics from ``trainer.callback_metrics`` (those that were logged)."""
    out: dict[str, float] = {}
    names = list(HEADLINES[family])
    if family == "policy":  # per reward: raw and transformed means, share above r_ref, transform weight
        ends = (
            "_above_ref",
            "_weight",
            "_raw",
            "_transformed",
            "_applicable",
        )  # per reward: models and functions
        names += sorted(k for k in trainer.callback_metrics if k.startswith("reward/") and k.endswith(ends))
    for name in names:
        value = trainer.callback_metrics.get(name)
        if value is not None:
            out[name] = float(value)
    out.update(extra or {})
    return out


def finish(
    cfg: DictConfig,
    trainer: L.Trainer,
    family: str,
    model_dir: Path,
    base_model: str,
    data: Sequence[str],
    n_comparisons: int | None,
    stage_times: Mapping[str, float],
    extra: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write the model card and ``summary.json``/``summary.txt``, print the summary; returns it.

    Args:
        family: ``sft``, ``reward_model`` or ``policy``.
        n_comparisons: held-out comparisons behind each rate (its standard error); ``None`` = unknown.
        extra: metrics measured outside ``callback_metrics`` (e.g. the share above r_ref at the start).
    """
    metrics = headline(trainer, family, extra)
    errors = proportion_errors(metrics, n_comparisons) if n_comparisons else None
    write_model_card(model_dir, KIND[family], base_model, data, overrides_of(cfg), metrics, errors)
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger else None
    summary = write_summary(
        cfg.paths.output_dir, cfg.task.name, metrics, errors, stage_times, model_dir, log_dir
    )
    log.info("\n%s", format_summary(summary))
    return summary
