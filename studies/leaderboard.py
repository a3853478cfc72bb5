"""Reward-shaping leaderboard (issue #18): every (algorithm, method) of one or more sweeps, ranked.

    python studies/leaderboard.py DIR [DIR ...] [--out docs/results/leaderboard] [--at-kl X | STUDY=X ...]

Loads every job of the given sweep folders with ``analyze_sweep.load_runs``, names each job's method from
its config (the transform, the aggregator with two rewards, and a reward ensemble's aggregate:
``ens_min``, ``ens_mean-1std``) and splits the jobs into studies by their number of reward models:
``single`` (one reward, ranked by the gold win rate in helpfulness) and ``combination`` (two rewards,
ranked by the gold share better on both). Per study it ranks the (algorithm, method) groups by the
ranking metric **at matched KL = X**: each run's value where its own training passed KL = X (linear
between the two evaluations that bracket it, ``Run.at_kl``), averaged over the β whose runs reach X,
mean ± s.e. over seeds (``analyze_sweep.per_seed_at_kl``). Without ``--at-kl``, X is chosen per study as
the KL that the most groups reach in all their seeds (:func:`auto_at_kl`). Writes to ``--out``:

* ``leaderboard.md`` — one ranked table per study: the metric at matched KL, its gain over the same
  algorithm's raw reward (``raw`` / ``raw+sum``) paired by seed, the method's own best β (the β whose
  final metric has the best mean over seeds) and, at that β, the final metric, KL, win rates, proxy −
  gold and the share of hard prompts not improved over SFT;
* ``leaderboard.png`` — per study, a horizontal bar of each group's metric at matched KL ± s.e., in rank
  order, one colour per algorithm (dashed: that algorithm's raw reward);
* ``<study>_vs_kl.png`` — the metric vs final KL per (method, β), a panel per algorithm
  (``analyze_sweep.plot_metric_vs_kl``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analyze_sweep import (  # noqa: E402
    ALGORITHM_ORDER,
    Row,
    Run,
    baseline_of,
    fmt,
    load_runs,
    mean_se,
    method_key,
    method_of,
    one_line_warnings,
    per_seed_at_kl,
    plot_metric_vs_kl,
    summarise,
    warn,
)

# study → (ranking metric, its name in tables and plots, heading)
STUDIES = {
    "single": ("gold/win_rate_helpful", "gold win rate (helpful)", "One reward (helpfulness)"),
    "combination": ("gold/win_rate_both", "better on both (gold)", "Two rewards (helpful + harmless)"),
}
# final values shown at each method's best β: (header, Row.stats key, studies)
END_COLUMNS = [
    ("KL at end", "gold/kl_to_sft", ("single", "combination")),
    ("win rate helpful", "gold/win_rate_helpful", ("single", "combination")),
    ("win rate harmless", "gold/win_rate_harmless", ("combination",)),
    ("better on both", "gold/win_rate_both", ("single", "combination")),
    ("proxy − gold", "gold/proxy_minus_gold", ("single", "combination")),
    ("hard prompts not improved", "not_improved/hard", ("single", "combination")),
]


@dataclass
class Entry:
    """One (algorithm, method) of a study's leaderboard.

    Attributes:
        method: ``<algorithm>:<method>`` (``grpo:logsigmoid``).
        at_kl: mean and s.e. over seeds of the ranking metric at matched KL (NaN: no run reached it).
        n_at_kl: seeds with a value at matched KL.
        gain: mean and s.e. over the shared seeds of (metric − the algorithm's raw reward's), paired.
        n_gain: seeds shared with the baseline (0 for the baseline itself or without one).
        baseline: the raw-reward method it is compared with (None when the study has none).
        best: the (method, β) row of the best final metric (None when no β logged it).
    """

    method: str
    at_kl: tuple[float, float]
    n_at_kl: int
    gain: tuple[float, float]
    n_gain: int
    baseline: str | None
    best: Row | None

    @property
    def algorithm(self) -> str:
        return self.method.partition(":")[0]

    @property
    def name(self) -> str:
        return self.method.partition(":")[2]


# ---------------------------------------------------------------------------------------------- naming
def method_label(cfg: dict) -> str:
    """``analyze_sweep.method_of``: the transform, aggregator, non-default r_ref and reward ensemble."""
    return method_of(cfg)


def study_of(cfg: dict) -> str:
    """``combination`` for a job with ≥ 2 reward models, else ``single``."""
    rewards = [k for k, v in (cfg.get("reward") or {}).items() if isinstance(v, dict)]
    return "combination" if len(rewards) >= 2 else "single"


def load_studies(dirs: list[str | Path]) -> dict[str, list[Run]]:
    """study → its runs from all ``dirs``, each ``run.method`` set to ``<algorithm>:<method_label>``.

    A job that repeats another's (study, method, β, seed) is left out with a warning."""
    studies: dict[str, list[Run]] = defaultdict(list)
    seen: dict[tuple, Path] = {}
    for d in dirs:
        for run in load_runs(d):
            cfg = run.config
            run.method = f"{run.algorithm}:{method_label(cfg)}"
            key = (study_of(cfg), run.method, run.beta, run.seed)
            if key in seen:
                warn(f"skipping {run.path}: the same {key[1:]} as {seen[key]}")
                continue
            seen[key] = run.path
            studies[key[0]].append(run)
    return dict(studies)


# ------------------------------------------------------------------------------------------ pure parts
def best_beta(rows: list[Row], tag: str) -> Row | None:
    """The row of the best mean final ``tag`` over seeds among one method's β; a tie goes to the lower
    final KL. None when no row has a finite mean."""
    finite = [r for r in rows if not math.isnan(r.stats[tag][0])]
    if not finite:
        return None
    kl = lambda r: r.stats["gold/kl_to_sft"][0]  # noqa: E731
    return max(finite, key=lambda r: (r.stats[tag][0], -kl(r) if not math.isnan(kl(r)) else -math.inf))


def kl_hulls(runs: list[Run], tag: str) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """method → seed → [(lowest, highest) KL of each run's evaluations of ``tag``]: where
    ``Run.at_kl(x, tag)`` has a value."""
    out: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        kls = [k for k, _ in run.trajectory(tag)]
        if len(kls) >= 2:
            out[run.method][run.seed].append((min(kls), max(kls)))
    return {m: dict(by_seed) for m, by_seed in out.items()}


def roundest(lo: float, hi: float) -> float:
    """The middle of [lo, hi] rounded to the fewest significant digits (1–3) that keep it inside, else the
    middle itself: (0.17, 0.21) → 0.2, (0.41, 0.45) → 0.43."""
    mid = (lo + hi) / 2
    if mid <= 0:
        return mid
    for digits in (1, 2, 3):
        v = round(mid, digits - 1 - math.floor(math.log10(mid)))
        if lo <= v <= hi:
            return v
    return mid


def auto_at_kl(hulls: dict[str, dict[int, list[tuple[float, float]]]], seeds: dict[str, int]) -> float:
    """A matched KL that the most methods reach in all their ``seeds[method]`` seeds (ties: the most
    (method, seed) pairs), the roundest number of the widest such interval. NaN without any hull."""
    ends = sorted({x for by_seed in hulls.values() for hs in by_seed.values() for h in hs for x in h})
    if not ends:
        return math.nan
    cands = sorted({*ends, *((a + b) / 2 for a, b in zip(ends, ends[1:]))})

    def score(x: float) -> tuple[int, int]:
        per = [
            sum(any(lo <= x <= hi for lo, hi in hs) for hs in by_seed.values()) for by_seed in hulls.values()
        ]
        full = sum(n >= seeds.get(m, n) and n > 0 for m, n in zip(hulls, per))
        return full, sum(per)

    scores = [score(x) for x in cands]
    best = max(scores)
    spans, start = [], None  # contiguous stretches of best-scoring candidates
    for i, s in enumerate([*scores, None]):
        if s == best and start is None:
            start = i
        elif s != best and start is not None:
            spans.append((cands[start], cands[i - 1]))
            start = None
    lo, hi = max(spans, key=lambda ab: ab[1] - ab[0])
    return roundest(lo, hi)


def rank_entries(entries: list[Entry], tag: str) -> list[Entry]:
    """Best first by the metric at matched KL; groups that never reached it after, by their best-β final
    metric; then study order (``method_key``)."""

    def key(e: Entry) -> tuple:
        end = e.best.stats[tag][0] if e.best else math.nan
        return (
            math.isnan(e.at_kl[0]),
            -e.at_kl[0] if not math.isnan(e.at_kl[0]) else 0.0,
            math.isnan(end),
            -end if not math.isnan(end) else 0.0,
            method_key(e.method),
        )

    return sorted(entries, key=key)


def leaderboard(runs: list[Run], tag: str, at_kl: float) -> tuple[list[Entry], list[Row]]:
    """The ranked entries of one study's runs and its (method, β) rows (``analyze_sweep.summarise``)."""
    rows = summarise(runs)
    along = per_seed_at_kl(runs, at_kl, tag) if not math.isnan(at_kl) else {}
    methods = list(dict.fromkeys(r.method for r in rows))
    entries = []
    for method in methods:
        by_seed = along.get(method, {})
        base = baseline_of(method, methods)
        gain, n_gain = (math.nan, math.nan), 0
        if base and base != method and along.get(base):
            shared = sorted(set(by_seed) & set(along[base]))
            gain, n_gain = mean_se([by_seed[s] - along[base][s] for s in shared]), len(shared)
        best = best_beta([r for r in rows if r.method == method], tag)
        entries.append(Entry(method, mean_se(list(by_seed.values())), len(by_seed), gain, n_gain, base, best))
    return rank_entries(entries, tag), rows


# --------------------------------------------------------------------------------------------- outputs
def table(entries: list[Entry], study: str, at_kl: float) -> str:
    """Markdown table of one study's ranked entries."""
    tag, metric, _ = STUDIES[study]
    end = [(h, k) for h, k, studies in END_COLUMNS if study in studies and k != tag]
    head = [
        "rank",
        "algorithm",
        "method",
        f"{metric} at KL = {at_kl:g}",
        "gain over raw (paired)",
        "best β",
        f"{metric} at best β (end)",
        *(h for h, _ in end),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for i, e in enumerate(entries, 1):
        at = f"{fmt(*e.at_kl)} (n = {e.n_at_kl})" if e.n_at_kl else "not reached"
        if e.baseline == e.method:
            gain = "baseline"
        else:
            gain = f"{fmt(*e.gain, digits=3)} (n = {e.n_gain})" if e.n_gain else "–"
            gain = gain if gain.startswith(("–", "-")) else "+" + gain
        cells = [str(i), e.algorithm, e.name, at, gain]
        if e.best:
            cells += [f"{e.best.beta:g}", f"{fmt(*e.best.stats[tag])} (n = {e.best.n})"]
            cells += [fmt(*e.best.stats[k]) for _, k in end]
        else:
            cells += ["–"] * (2 + len(end))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def algorithm_color(algorithm: str) -> str:
    return f"C{ALGORITHM_ORDER.index(algorithm)}" if algorithm in ALGORITHM_ORDER else "C7"


def plot_leaderboard(boards: dict[str, tuple[list[Entry], float]], path: Path) -> None:
    """A panel per study: metric at matched KL ± s.e. per (algorithm, method), rank 1 on top."""
    fig, axes = plt.subplots(
        1, len(boards), figsize=(6.5 * len(boards), 0.4 * max(len(e) for e, _ in boards.values()) + 1.8)
    )
    for ax, (study, (entries, at_kl)) in zip(axes if len(boards) > 1 else [axes], boards.items()):
        tag, metric, heading = STUDIES[study]
        y = list(range(len(entries)))[::-1]
        means = [e.at_kl[0] for e in entries]
        finite = [(m, s) for m, s in (e.at_kl for e in entries) if not math.isnan(m)]
        ax.barh(
            y,
            [0.0 if math.isnan(m) else m for m in means],
            xerr=[0.0 if math.isnan(e.at_kl[1]) else e.at_kl[1] for e in entries],
            color=[algorithm_color(e.algorithm) for e in entries],
            capsize=3,
        )
        labels = [e.method + ("" if e.n_at_kl else f" (KL {at_kl:g} not reached)") for e in entries]
        ax.set_yticks(y, labels, fontsize=8)
        for e in entries:
            if e.baseline == e.method and not math.isnan(e.at_kl[0]):
                ax.axvline(e.at_kl[0], color=algorithm_color(e.algorithm), ls="--", lw=0.8)
        if finite:  # the differences are ~0.01 on ~0.5: zoom in (the axis does not start at 0)
            lo = min(m - (0 if math.isnan(s) else s) for m, s in finite)
            hi = max(m + (0 if math.isnan(s) else s) for m, s in finite)
            pad = max(hi - lo, 0.01) * 0.15
            ax.set_xlim(lo - pad, hi + pad)
        ax.set(xlabel=f"{metric} at matched KL = {at_kl:g}, mean ± s.e. over seeds")
        ax.set_title(f"{heading}, ranked (axis not from 0; dashed: raw reward)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        algs = sorted({e.algorithm for e in entries}, key=lambda a: method_key(a + ":")[0])
        ax.legend(
            handles=[Patch(color=algorithm_color(a), label=a) for a in algs], fontsize=8, loc="lower right"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_at_kl(values: list[str] | None) -> dict[str, float]:
    """``["0.5"]`` → every study at 0.5; ``["single=0.5", "combination=0.2"]`` → per study."""
    out: dict[str, float] = {}
    for v in values or []:
        study, eq, x = v.rpartition("=")
        if eq and study not in STUDIES:
            raise SystemExit(f"--at-kl {v}: unknown study {study!r}; expected one of {sorted(STUDIES)}")
        try:
            kl = float(x)
        except ValueError:
            raise SystemExit(f"--at-kl {v}: {x!r} is not a number") from None
        out.update({study: kl} if eq else dict.fromkeys(STUDIES, kl))
    return out


def build(
    dirs: list[str | Path],
    out: str | Path,
    at_kl: dict[str, float] | None = None,
    wall_time: float | None = None,
) -> dict[str, list[Entry]]:
    """Load, rank, plot and write ``leaderboard.md``; returns each study's ranked entries."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    studies = load_studies(dirs)
    boards: dict[str, tuple[list[Entry], float]] = {}
    text = ["# Reward-shaping leaderboard", ""]
    text += ["Sweeps: " + ", ".join(f"`{Path(d).name}`" for d in dirs) + "."]
    if wall_time is not None:
        text += ["", f"Wall time of the whole command (sweeps and analyses): {wall_time:.0f} min."]
    text += [
        "",
        "Ranked by the study's metric at matched KL: each run's value where its own training passed KL = X "
        "(linear between the two evaluations that bracket it), averaged over the β whose runs reach X, "
        "mean ± s.e. over seeds (s.e. = sample std / √n); 'not reached' ranks after, by the best-β final "
        "value. Gain: minus the same algorithm's raw reward at matched KL, paired by seed. Best β: the β "
        "with the best mean final metric; the columns after it are final values (last evaluation) at "
        "that β. 'hard prompts not improved': share of held-out hard prompts whose mean gold helpfulness "
        "gain over SFT is ≤ 0.",
    ]
    for study in (s for s in STUDIES if s in studies):
        runs = studies[study]
        tag = STUDIES[study][0]
        x = (at_kl or {}).get(study)
        chosen = "given by --at-kl"
        if x is None:
            seeds = {m: len(by_seed) for m, by_seed in _seeds(runs).items()}
            x, chosen = (
                auto_at_kl(kl_hulls(runs, tag), seeds),
                "chosen: the KL most groups reach in all seeds",
            )
        entries, rows = leaderboard(runs, tag, x)
        boards[study] = (entries, x)
        plot_metric_vs_kl(rows, tag, out / f"{study}_vs_kl.png", STUDIES[study][1])
        n_alg = len({r.algorithm for r in runs})
        text += ["", f"## {STUDIES[study][2]}", ""]
        text += [f"{len(runs)} jobs, {len(entries)} (algorithm, method) groups over {n_alg} algorithms; "]
        text[-1] += f"matched KL X = {x:g} ({chosen}). Plot: `leaderboard.png`, `{study}_vs_kl.png`."
        text += ["", table(entries, study, x)]
    if boards:
        plot_leaderboard(boards, out / "leaderboard.png")
    (out / "leaderboard.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"\nwrote {out}")
    return {s: e for s, (e, _) in boards.items()}


def _seeds(runs: list[Run]) -> dict[str, set[int]]:
    seeds: dict[str, set[int]] = defaultdict(set)
    for run in runs:
        seeds[run.method].add(run.seed)
    return seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dirs", nargs="+", help="sweep folders (multirun/study/leaderboard) or archives (runs.jsonl.gz)"
    )
    parser.add_argument("--out", default="docs/results/leaderboard", help="output folder")
    parser.add_argument(
        "--at-kl", nargs="+", default=None, metavar="X", help="matched KL: X for every study, or STUDY=X"
    )
    parser.add_argument("--wall-time", type=float, default=None, help="minutes the command took (stated)")
    args = parser.parse_args(argv)
    one_line_warnings()
    build(args.dirs, args.out, parse_at_kl(args.at_kl), args.wall_time)


if __name__ == "__main__":
    main()
