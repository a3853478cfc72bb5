"""Analyse a PPO sweep: the paper's figures and a table of means ± standard errors over seeds.

    python studies/analyze_sweep.py multirun/ppo/<date> [--out DIR] [--at-kl 2.0]

Reads every job folder under MULTIRUN_DIR (one with ``.hydra/config.yaml``): its method and β from the
config, its TensorBoard scalars with tensorboard's ``EventAccumulator``, and the per-prompt rows of its last
evaluation from ``tensorboard/gold_eval.jsonl``. Jobs are grouped by (method, β) — method is the transform
(raw/logsigmoid/center/whiten/clip) and, with ≥ 2 reward models, the aggregator (``raw+sum``, ``raw+min``,
``logsigmoid+sum``…) — and it writes to ``--out`` (default ``MULTIRUN_DIR/analysis``):

* ``win_rate_vs_kl.png`` — gold win rate (helpful) vs final ``gold/kl_to_sft``, one point per (method, β),
  error bars ± s.e. over seeds on both axes (Wang et al., 2024, fig. 3);
* ``both_vs_kl.png`` — ``gold/win_rate_both`` vs KL (combination study; only when logged);
* ``hacking.png`` — proxy (learned reward) vs gold win rate over training, per method;
* ``underfitting.png`` — share of held-out prompts not improved over SFT (easy/hard), and the distribution
  of per-prompt improvement mean(gold_helpful − gold_helpful_sft);
* ``results.md`` — one row per (method, β).

``--at-kl X`` compares methods at matched KL = X twice: each method's mean win rate interpolated linearly
between consecutive β (final values), and each run's win rate where its own training passed KL = X (between
the two evaluations that bracket it; mean over β, ± s.e. over seeds, gain over the raw reward paired by
seed) — the second works when the methods' final KLs do not overlap. Gains are over the raw reward
(``raw`` or ``raw+sum``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_runs import (  # noqa: E402, F401  (re-exported: the scripts and tests import them from here)
    AGGREGATORS,
    DEFAULT_Q,
    TRANSFORMS,
    Run,
    SweepWarning,
    interpolate,
    load_runs,
    mean_se,
    method_of,
    one_line_warnings,
    read_prompts,
    read_scalars,
    warn,
    with_ensembles,
)

METHOD_ORDER = ["raw", "logsigmoid", "center", "whiten", "clip"]
AGG_ORDER = ["sum", "weighted_sum", "min"]
# table columns: (header, key in Row.stats)
COLUMNS = [
    ("KL to SFT", "gold/kl_to_sft"),
    ("win rate helpful", "gold/win_rate_helpful"),
    ("win rate harmless", "gold/win_rate_harmless"),
    ("better on both", "gold/win_rate_both"),
    ("proxy − gold", "gold/proxy_minus_gold"),
    ("not improved (all)", "not_improved/all"),
    ("not improved (easy)", "not_improved/easy"),
    ("not improved (hard)", "not_improved/hard"),
    # the transform's activity on the first reward model (training rollouts): first → last logged value
    ("above r_ref (helpful) first", "first:reward/helpful_above_ref"),
    ("above r_ref (helpful) last", "reward/helpful_above_ref"),
    ("du/dr (helpful) first", "first:reward/helpful_weight"),
    ("du/dr (helpful) last", "reward/helpful_weight"),
]
ALGORITHM_ORDER = ["ppo", "grpo", "rloo", "reinforce_pp"]


@dataclass
class Row:
    """One (method, β): ``stats`` maps a metric to (mean, standard error) over the group's seeds.

    ``n`` counts the seeds that logged ``gold/win_rate_helpful``; ``runs`` are all of the group's jobs.
    """

    method: str
    beta: float
    n: int
    stats: dict[str, tuple[float, float]]
    runs: list[Run]


# -------------------------------------------------------------------------------------------- summaries
def per_prompt_improvement(rows: list[dict], prop: str = "helpful") -> dict[int, tuple[float, str]]:
    """prompt_id → (mean over its samples of gold_<prop> − gold_<prop>_sft, difficulty)."""
    diffs: dict[int, list[float]] = defaultdict(list)
    difficulty: dict[int, str] = {}
    for r in rows:
        if f"gold_{prop}" not in r or f"gold_{prop}_sft" not in r:
            continue
        diffs[r["prompt_id"]].append(r[f"gold_{prop}"] - r[f"gold_{prop}_sft"])
        difficulty[r["prompt_id"]] = r.get("difficulty", "?")
    return {p: (float(np.mean(d)), difficulty[p]) for p, d in diffs.items()}


def not_improved_shares(rows: list[dict]) -> dict[str, float]:
    """Share of prompts whose mean improvement is ≤ 0: ``all``, ``easy``, ``hard`` (NaN when none)."""
    imp = per_prompt_improvement(rows)
    out = {}
    for group in ("all", "easy", "hard"):
        vals = [d for d, g in imp.values() if group in ("all", g)]
        out[group] = float(np.mean([d <= 0 for d in vals])) if vals else math.nan
    return out


def method_key(method: str) -> tuple[int, int, int, str]:
    algorithm, _, rest = method.rpartition(":")
    base, _, agg = rest.partition("@")[0].partition("+")
    rank = lambda xs, x: xs.index(x) if x in xs else len(xs)  # noqa: E731
    return (
        rank(ALGORITHM_ORDER, algorithm or "ppo"),
        rank(AGG_ORDER, agg) if agg else -1,
        rank(METHOD_ORDER, base),
        method,
    )


def summarise(runs: list[Run]) -> list[Row]:
    """One row per (method, β): final gold scalars and not-improved shares, mean ± s.e. over seeds."""
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.method, run.beta)].append(run)
    rows = []
    for (method, beta), group in sorted(groups.items(), key=lambda kv: (method_key(kv[0][0]), kv[0][1])):
        stats = {tag: mean_se([r.final(tag) for r in group]) for _, tag in COLUMNS if "/" in tag}
        shares = [not_improved_shares(r.prompts) for r in group if r.prompts]
        for g in ("all", "easy", "hard"):
            stats[f"not_improved/{g}"] = mean_se([s[g] for s in shares])
        n = sum(not math.isnan(r.final("gold/win_rate_helpful")) for r in group)  # seeds that evaluated
        rows.append(Row(method, beta, n, stats, group))
    return rows


def interpolate_at_kl(rows: list[Row], kl: float, tag: str = "gold/win_rate_helpful") -> dict[str, float]:
    """Each method's mean ``tag`` at KL = ``kl``, linear between consecutive β (NaN if never bracketed)."""
    out = {}
    for method in dict.fromkeys(r.method for r in rows):
        pts = sorted(
            (r.beta, r.stats["gold/kl_to_sft"][0], r.stats[tag][0]) for r in rows if r.method == method
        )
        out[method] = interpolate([(k, y) for _, k, y in pts], kl)
        if len(pts) == 1 and pts[0][1] == kl:
            out[method] = pts[0][2]
    return out


def per_seed_at_kl(
    runs: list[Run], kl: float, tag: str = "gold/win_rate_helpful"
) -> dict[str, dict[int, float]]:
    """method → seed → ``tag`` at KL = ``kl`` along training, averaged over the β whose runs reach it."""
    vals: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        v = run.at_kl(kl, tag)
        if not math.isnan(v):
            vals[run.method][run.seed].append(v)
    return {m: {seed: float(np.mean(v)) for seed, v in by_seed.items()} for m, by_seed in vals.items()}


def baseline_of(method: str, methods: list[str]) -> str | None:
    """The raw-reward baseline of ``method``'s algorithm: ``[alg:]raw``, else ``[alg:]raw+sum``."""
    algorithm, colon, _ = method.rpartition(":")
    prefix = algorithm + colon
    return next((prefix + m for m in ("raw", "raw+sum") if prefix + m in methods), None)


# ---------------------------------------------------------------------------------------------- outputs
def fmt(mean: float, se: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def table(rows: list[Row]) -> str:
    """Markdown table of the rows; columns whose metric no run logged are left out."""
    cols = [(h, k) for h, k in COLUMNS if any(not math.isnan(r.stats[k][0]) for r in rows)]
    lines = [
        "| method | β | n | " + " | ".join(h for h, _ in cols) + " |",
        "| --- | --- | --- |" + " --- |" * len(cols),
    ]
    for r in rows:
        cells = [fmt(*r.stats[k]) for _, k in cols]
        lines.append(f"| {r.method} | {r.beta:g} | {r.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _colors(rows: list[Row]) -> dict[str, str]:
    methods = list(dict.fromkeys(r.method for r in rows))
    return {m: f"C{i}" for i, m in enumerate(methods)}


def algorithms_of(rows: list[Row]) -> list[str]:
    """A multi-algorithm study's algorithms (``grpo:raw`` → ``grpo``) in study order; [] otherwise."""
    algs = dict.fromkeys(r.method.rpartition(":")[0] for r in rows)
    return [] if "" in algs else sorted(algs, key=lambda a: method_key(a + ":")[0])


def plot_metric_vs_kl(rows: list[Row], tag: str, path: Path, ylabel: str) -> None:
    """``tag`` vs final KL to SFT, one point per (method, β) with ± s.e. bars on both axes; one panel per
    algorithm in a multi-algorithm study (shared axes)."""
    algs = algorithms_of(rows) or [None]
    fig, axes = plt.subplots(
        1, len(algs), figsize=(6 * len(algs), 4.5), sharex=True, sharey=True, squeeze=False
    )
    for ax, alg in zip(axes[0], algs):
        panel = [r for r in rows if alg is None or r.method.startswith(alg + ":")]
        _draw_vs_kl(ax, panel, tag, ylabel)
        if alg is not None:
            ax.set_title(
                f"{alg}: mean ± s.e. over seeds (n = {', '.join(map(str, sorted({r.n for r in panel})))})",
                fontsize=9,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _draw_vs_kl(ax, rows: list[Row], tag: str, ylabel: str) -> None:
    for method, color in _colors(rows).items():
        pts = sorted((r for r in rows if r.method == method), key=lambda r: r.beta)
        x = [r.stats["gold/kl_to_sft"] for r in pts]
        y = [r.stats[tag] for r in pts]
        ax.errorbar(
            [m for m, _ in x],
            [m for m, _ in y],
            xerr=[np.nan_to_num(s) for _, s in x],
            yerr=[np.nan_to_num(s) for _, s in y],
            marker="o",
            capsize=3,
            color=color,
            label=method,
        )
        for r, (kx, _), (ky, _) in zip(pts, x, y):
            ax.annotate(f"β={r.beta:g}", (kx, ky), fontsize=7, xytext=(3, 3), textcoords="offset points")
            _, kls = _mean_curve(r.runs, "gold/kl_to_sft")  # the path there: mean over seeds per evaluation
            _, vals = _mean_curve(r.runs, tag)
            if len(kls) == len(vals) > 1:
                ax.plot(kls, vals, ":", color=color, lw=0.8, alpha=0.7)
    n = sorted({r.n for r in rows})
    ax.set(xlabel="KL(π ‖ π_SFT) at the last evaluation (dotted: along training)", ylabel=ylabel)
    ax.set_title(f"mean ± s.e. over seeds (n = {', '.join(map(str, n))})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _mean_curve(runs: list[Run], tag: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for step, v in run.scalars.get(tag, []):
            by_step[step].append(v)
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps]


def plot_hacking(rows: list[Row], path: Path) -> None:
    """Proxy (dashed) vs gold (solid) helpful win rate over training: a panel per method, a colour per β."""
    methods = list(dict.fromkeys(r.method for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.5), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        for i, r in enumerate(r for r in rows if r.method == method):
            for tag, style, what in (
                ("gold/proxy_win_rate_helpful", "--", "proxy"),
                ("gold/win_rate_helpful", "-", "gold"),
            ):
                steps, vals = _mean_curve(r.runs, tag)
                ax.plot(steps, vals, style, color=f"C{i}", marker=".", label=f"{what} β={r.beta:g}")
        ax.set(title=method, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("win rate vs SFT (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_underfitting(rows: list[Row], path: Path) -> None:
    """Top: share of prompts not improved (easy/hard) per (method, β), ± s.e. Bottom: per-prompt ECDF."""
    rows = [r for r in rows if any(run.prompts for run in r.runs)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.8 * len(rows) + 2), 7))
    x = np.arange(len(rows))
    for off, group in ((-0.2, "easy"), (0.2, "hard")):
        m = [r.stats[f"not_improved/{group}"][0] for r in rows]
        s = [np.nan_to_num(r.stats[f"not_improved/{group}"][1]) for r in rows]
        top.bar(x + off, m, width=0.4, yerr=s, capsize=2, label=group)
    top.set_xticks(x, [f"{r.method}\nβ={r.beta:g}" for r in rows], fontsize=7)
    top.set(ylabel="share of prompts not improved\n(mean gold gain ≤ 0)")
    top.legend(fontsize=8)
    colors = _colors(rows)
    styles = ["-", "--", ":", "-."]
    for method in colors:
        for j, r in enumerate(r for r in rows if r.method == method):
            gains = [d for run in r.runs for d, _ in per_prompt_improvement(run.prompts).values()]
            xs = np.sort(gains)
            ys = np.arange(1, len(xs) + 1) / len(xs)
            bottom.step(
                xs, ys, styles[j % 4], where="post", color=colors[method], label=f"{method} β={r.beta:g}"
            )
    bottom.axvline(0, color="k", lw=0.8)
    bottom.set(xlabel="per-prompt mean(gold_helpful − gold_helpful_sft)", ylabel="ECDF (prompts × seeds)")
    bottom.legend(fontsize=6, ncol=2)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def at_kl_report(rows: list[Row], kl: float, tag: str = "gold/win_rate_helpful") -> str:
    """Lines of each method's interpolated ``tag`` at KL = ``kl`` and its gain over the raw reward."""
    wins = interpolate_at_kl(rows, kl, tag)
    lines = [f"{tag} at matched KL = {kl:g} (linear between consecutive β, means over seeds):"]
    for method, w in wins.items():
        base = baseline_of(method, list(wins))
        gain = w - wins[base] if base and method != base else math.nan
        gain = "" if math.isnan(gain) else f"  gain over {base}: {gain:+.3f}"
        lines.append(f"- {method}: {'not bracketed by its β sweep' if math.isnan(w) else f'{w:.3f}'}{gain}")
    runs = [run for r in rows for run in r.runs]
    along = per_seed_at_kl(runs, kl, tag)
    lines += [
        "",
        f"{tag} where training passed KL = {kl:g} (each run's evaluations, mean over the β that reach it; "
        "mean ± s.e. over seeds; gain paired by seed):",
    ]
    for method in dict.fromkeys(r.method for r in rows):
        by_seed = along.get(method, {})
        if not by_seed:
            lines.append(f"- {method}: no run passed KL = {kl:g}")
            continue
        text = f"- {method}: {fmt(*mean_se(list(by_seed.values())))} (n = {len(by_seed)})"
        base = baseline_of(method, list(along))
        if base and method != base and along.get(base):
            seeds = sorted(set(by_seed) & set(along[base]))
            if seeds:
                gain = mean_se([by_seed[s] - along[base][s] for s in seeds])
                text += f"  gain over {base}: {fmt(*gain)} (n = {len(seeds)})"
        lines.append(text)
    return "\n".join(lines)


def analyse(multirun_dir: str | Path, out: str | Path | None = None, at_kl: float | None = None) -> list[Row]:
    """Load, summarise, plot and write ``results.md``; returns the table's rows."""
    out = Path(out) if out else Path(multirun_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(multirun_dir)
    rows = summarise(runs)
    if not rows:
        return rows
    plot_metric_vs_kl(rows, "gold/win_rate_helpful", out / "win_rate_vs_kl.png", "gold win rate (helpful)")
    has_both = any(not math.isnan(r.stats["gold/win_rate_both"][0]) for r in rows)
    if has_both:
        plot_metric_vs_kl(rows, "gold/win_rate_both", out / "both_vs_kl.png", "better on both (gold)")
    plot_hacking(rows, out / "hacking.png")
    if any(run.prompts for run in runs):
        plot_underfitting(rows, out / "underfitting.png")
    text = [
        f"# Sweep {multirun_dir}",
        "",
        f"{len(runs)} jobs. Values are at the last evaluation: mean ± s.e. over the n seeds of each row "
        "(s.e. = sample std / √n). 'not improved' = share of held-out prompts whose mean gold helpfulness "
        "gain over SFT is ≤ 0.",
        "",
        table(rows),
    ]
    if at_kl is not None:
        text += ["", at_kl_report(rows, at_kl)]
        if has_both:
            text += ["", at_kl_report(rows, at_kl, "gold/win_rate_both")]
    (out / "results.md").write_text("\n".join(text) + "\n")
    print("\n".join(text[4:]))
    print(f"\nwrote {out}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", help="a Hydra multirun folder, e.g. multirun/ppo/<date>")
    parser.add_argument("--out", default=None, help="output folder (default: MULTIRUN_DIR/analysis)")
    parser.add_argument("--at-kl", type=float, default=None, help="compare methods at this matched KL")
    args = parser.parse_args(argv)
    one_line_warnings()
    analyse(args.multirun_dir, args.out, args.at_kl)


if __name__ == "__main__":
    main()
