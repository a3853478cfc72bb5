"""Regime study: the log-sigmoid transform's gain over the raw reward vs the reward model's margin range.

    python studies/regime_plot.py MULTIRUN_DIR [MORE_DIRS...] [--out DIR] [--at-kl X]

Reads the raw (``identity``) and ``logsigmoid`` jobs of one or more multirun folders (e.g. the output of
``bash studies/study.sh regime``), groups them by reward-model variant (``+experiment/rm_variant=…`` in a
job's overrides; ``default`` when absent), keeps the β values every variant has, and for each variant
measures:

* the **margin range**: the standard deviation of ``r − r_ref`` over the SFT policy's rollouts — read from
  each job's first ``reward/<name>_margin`` histogram (the first PPO batch, still the SFT policy) and
  averaged over the variant's jobs. It is in reward-model logits, the unit in which ``log σ`` saturates.
* the **gain at matched KL**: each run's ``gold/win_rate_helpful`` where its training passed KL =
  ``--at-kl`` (linear between the two evaluations that bracket it; default KL: the middle of the range
  both methods pass through for that variant), averaged per seed over the β that reach it; gain =
  log-sigmoid − raw, paired by seed, mean ± s.e. over the seeds where both methods reach that KL.

Writes ``regime.png`` (gain vs margin range, error bars ± s.e. on both axes) and ``regime.md`` to ``--out``
(default: the first folder's ``analysis/``).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

_here = Path(__file__).resolve().parent
if "analyze_sweep" not in sys.modules:  # shared loading and statistics
    _spec = importlib.util.spec_from_file_location("analyze_sweep", _here / "analyze_sweep.py")
    sys.modules["analyze_sweep"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["analyze_sweep"])
from analyze_sweep import Run, load_runs, mean_se, one_line_warnings, per_seed_at_kl, warn  # noqa: E402

METHODS = ("raw", "logsigmoid")
WIN, KL = "gold/win_rate_helpful", "gold/kl_to_sft"


@dataclass
class Variant:
    """One reward-model variant: its margin range and the transform's gain at matched KL."""

    name: str
    margin_std: tuple[float, float]  # mean, s.e. over jobs
    kl: float  # the matched KL
    raw: tuple[float, float]  # win rate at that KL, mean, s.e. over seeds
    logsigmoid: tuple[float, float]
    gain: tuple[float, float]
    n_seeds: int


def variant_of(job: Path) -> str:
    """``+experiment/rm_variant=X`` from the job's overrides, else ``default``."""
    try:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    except OSError:
        return "default"
    for o in overrides:
        key, _, value = str(o).partition("=")
        if key.lstrip("+~") == "experiment/rm_variant":
            return value
    return "default"


def first_margin_std(job: Path, reward: str = "helpful") -> float:
    """Std of r − r_ref in the job's first ``reward/<reward>_margin`` histogram (NaN if none)."""
    tag = f"reward_hist/{reward}_margin"
    first = None
    for folder in sorted({p.parent for p in job.rglob("events.out.tfevents.*")}):
        acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.HISTOGRAMS: 0})
        acc.Reload()
        if tag in acc.Tags()["histograms"]:
            ev = min(acc.Histograms(tag), key=lambda e: e.step)
            if first is None or ev.step < first.step:
                first = ev
    if first is None or first.histogram_value.num < 2:
        return math.nan
    h = first.histogram_value
    mean = h.sum / h.num
    return math.sqrt(max(0.0, h.sum_squares / h.num - mean * mean))


def matched_kl(runs: list[Run]) -> float:
    """The middle of the KL range both methods' runs pass through during training.

    A method covers [median of its runs' smallest evaluated KL, median of their largest]; NaN if the two
    methods' ranges do not overlap.
    """
    lo, hi = [], []
    for method in METHODS:
        spans = [[k for k, _ in r.trajectory(WIN)] for r in runs if r.method == method]
        spans = [s for s in spans if s]
        if not spans:
            return math.nan
        lo.append(float(np.median([min(s) for s in spans])))
        hi.append(float(np.median([max(s) for s in spans])))
    a, b = max(lo), min(hi)
    return (a + b) / 2 if a <= b else math.nan


def summarise_variant(name: str, runs: list[Run], at_kl: float | None) -> Variant:
    runs = [r for r in runs if r.method in METHODS]
    kl = at_kl if at_kl is not None else matched_kl(runs)
    along = per_seed_at_kl(runs, kl, WIN) if not math.isnan(kl) else {}
    raw, ls = along.get("raw", {}), along.get("logsigmoid", {})
    seeds = sorted(set(raw) & set(ls))
    if not seeds:
        warn(f"variant {name}: no seed where both methods pass KL {kl:.3g}")
    gains = [ls[s] - raw[s] for s in seeds]
    return Variant(
        name=name,
        margin_std=mean_se([first_margin_std(r.path) for r in runs]),
        kl=kl,
        raw=mean_se(list(raw.values())),
        logsigmoid=mean_se(list(ls.values())),
        gain=mean_se(gains),
        n_seeds=len(gains),
    )


def fmt(pair: tuple[float, float], digits: int = 3) -> str:
    mean, se = pair
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def table(variants: list[Variant]) -> str:
    lines = [
        "| reward model | margin range (std of r − r_ref, logits) | matched KL | raw win rate | "
        "log-sigmoid win rate | gain | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        lines.append(
            f"| {v.name} | {fmt(v.margin_std, 2)} | {v.kl:.2f} | {fmt(v.raw)} | {fmt(v.logsigmoid)} | "
            f"{fmt(v.gain)} | {v.n_seeds} |"
        )
    return "\n".join(lines)


def plot(variants: list[Variant], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for v in variants:
        if math.isnan(v.gain[0]):
            continue
        ax.errorbar(
            v.margin_std[0],
            v.gain[0],
            xerr=None if math.isnan(v.margin_std[1]) else v.margin_std[1],
            yerr=None if math.isnan(v.gain[1]) else v.gain[1],
            fmt="o",
            capsize=3,
        )
        ax.annotate(
            f"{v.name} (KL {v.kl:.2f})",
            (v.margin_std[0], v.gain[0]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("margin range: std of r − r_ref on SFT rollouts (logits)")
    ax.set_ylabel("log-sigmoid − raw gold win rate at matched KL")
    ax.set_title("When does the transform pay? (mean ± s.e. over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyse(
    dirs: list[str | Path], out: str | Path | None = None, at_kl: float | None = None
) -> list[Variant]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for d in dirs:
        for run in load_runs(d):
            groups[variant_of(run.path)].append(run)
    # the same β grid for every variant (a variant's runs may come from a wider sweep)
    betas = set.intersection(*({r.beta for r in runs} for runs in groups.values())) if groups else set()
    groups = {name: [r for r in runs if r.beta in betas] for name, runs in groups.items()}
    variants = sorted(
        (summarise_variant(name, runs, at_kl) for name, runs in groups.items()),
        key=lambda v: (math.isnan(v.margin_std[0]), v.margin_std[0]),
    )
    out = Path(out) if out else Path(dirs[0]) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    plot(variants, out / "regime.png")
    text = table(variants)
    (out / "regime.md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out / 'regime.png'} and {out / 'regime.md'}")
    return variants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dirs", nargs="+", help="multirun folders, e.g. multirun/study/regime")
    parser.add_argument("--out", default=None, help="output folder (default: FIRST_DIR/analysis)")
    parser.add_argument("--at-kl", type=float, default=None, help="matched KL (default: per variant)")
    args = parser.parse_args(argv)
    one_line_warnings()
    analyse(args.multirun_dirs, args.out, args.at_kl)


if __name__ == "__main__":
    main()
