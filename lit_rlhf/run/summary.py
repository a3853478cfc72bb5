"""The closing summary of a run (``summary.json``, ``summary.txt``) and the table of a sweep (``summary.md``).

A run ends with a short block: its headline metrics (± standard error where known), the wall time of
each stage it ran or built, where the model and the logs are, and the ``tensorboard`` command. A sweep
ends with one markdown line per job: the overrides that differ between jobs, and the same metrics.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("lit_rlhf")
PROPORTIONS = ("win_rate", "acc")  # metric names that are fractions of n comparisons (binomial s.e.)


# ------------------------------------------------------------------ numbers
def win_rate_se(p: float, n: int) -> float:
    """Standard error of a win rate ``p`` measured over ``n`` independent comparisons: √(p(1−p)/n).

    Args:
        p: The observed fraction of wins, in [0, 1] (a tie counted as ½ win keeps it in range).
        n: The number of comparisons, ≥ 1.
    """
    if n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"a win rate needs 0 <= p <= 1 and n >= 1, got p={p}, n={n}")
    return math.sqrt(p * (1.0 - p) / n)


def mean_se(values: Sequence[float]) -> float:
    """Standard error of the mean of per-item values (e.g. per-prompt ``w_helpful·w_harmless``): s/√n.

    ``s`` is the sample standard deviation (n − 1 in the denominator); for a win rate whose items are
    not only 0/1 (ties as ½, products of wins) this is the s.e. to use rather than :func:`win_rate_se`.
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"a standard error needs at least 2 values, got {n}")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def proportion_errors(metrics: Mapping[str, float], n: int, match: tuple[str, ...] = PROPORTIONS) -> dict:
    """:func:`win_rate_se` of each metric whose name contains one of ``match`` (win rates, accuracies).

    Args:
        metrics: Metric name → value, e.g. ``{"gold/win_rate_both": 0.6, "ppo/kl": 3.2}``.
        n: The number of comparisons each of those metrics averages (e.g. held-out prompts or pairs).
        match: Substrings that mark a metric as a proportion.
    """
    return {
        k: win_rate_se(v, n)
        for k, v in metrics.items()
        if any(m in k for m in match) and v is not None and 0.0 <= v <= 1.0
    }


def format_estimate(value: float | None, se: float | None = None) -> str:
    """``value ± se`` with the value rounded where the s.e. (2 significant digits) stops; ``n/a`` for none.

    >>> format_estimate(0.63412, 0.01523)
    '0.634 ± 0.015'
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    if se is None or not math.isfinite(se) or se <= 0:
        return f"{value:.4g}"
    decimals = max(0, 1 - math.floor(math.log10(se)))
    return f"{value:.{decimals}f} ± {se:.{decimals}f}"


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@contextmanager
def timed(stage_times: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the ``with`` body to ``stage_times[stage]`` (seconds), even if it raises."""
    start = time.perf_counter()
    try:
        yield
    finally:
        stage_times[stage] = stage_times.get(stage, 0.0) + time.perf_counter() - start


# ------------------------------------------------------------------ one run
def _finite(d: Mapping[str, float] | None) -> dict[str, float | None]:
    """Floats that JSON can hold: NaN/inf become None (shown as ``n/a``)."""
    return {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in (d or {}).items()}


def write_summary(
    run_dir: str | Path,
    task: str,
    metrics: Mapping[str, float],
    errors: Mapping[str, float] | None,
    stage_times: Mapping[str, float],
    model_dir: str | Path | None,
    log_dir: str | Path | None,
) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.txt`` (:func:`format_summary`) into ``run_dir``.

    Args:
        run_dir: The run's folder (``paths.output_dir``).
        task: ``sft``, ``reward_model`` or ``ppo``.
        metrics: Headline metric name → value (e.g. ``gold/win_rate_both``, ``ppo/kl``).
        errors: Metric name → standard error, for the metrics that have one (:func:`proportion_errors`).
        stage_times: Stage → wall seconds, in the order run (e.g. ``{"sft": 98.0, "ppo": 72.0}``).
        model_dir: The saved model folder, or None.
        log_dir: The TensorBoard folder, or None (no logger).

    Returns:
        The summary as written to ``summary.json``.
    """
    run_dir = Path(run_dir)
    summary: dict[str, Any] = {
        "task": task,
        "metrics": _finite(metrics),
        "errors": {k: v for k, v in _finite(errors).items() if k in metrics},
        "stage_times": {k: float(v) for k, v in stage_times.items()},
        "wall_time": float(sum(stage_times.values())),
        "model_dir": str(model_dir) if model_dir is not None else None,
        "log_dir": str(log_dir) if log_dir is not None else None,
        "tensorboard": f"tensorboard --logdir {log_dir}" if log_dir is not None else None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "summary.txt").write_text(format_summary(summary) + "\n")
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """A compact block: metrics (± s.e.), time per stage, model and log folders, the TensorBoard command."""
    metrics, errors = summary.get("metrics") or {}, summary.get("errors") or {}
    lines = [f"lit_rlhf {summary.get('task')}: done in {format_duration(summary.get('wall_time') or 0.0)}"]
    width = max((len(k) for k in metrics), default=0)
    lines += [f"  {k:<{width}}  {format_estimate(v, errors.get(k))}" for k, v in metrics.items()]
    if times := summary.get("stage_times"):
        lines.append("  time:   " + " · ".join(f"{k} {format_duration(v)}" for k, v in times.items()))
    if summary.get("model_dir"):
        lines.append(f"  model:  {summary['model_dir']}")
    if summary.get("log_dir"):
        lines.append(f"  logs:   {summary['log_dir']}  (view: {summary['tensorboard']})")
    return "\n".join(lines)
