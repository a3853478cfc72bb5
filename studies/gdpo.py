"""GDPO vs the paper's AND (issue #30): the head-to-head table of one world, from sweep folders and archives.

    python studies/gdpo.py SOURCE [SOURCE ...] --world 0 [--at-kl grpo=0.07,rloo=0.2] [--out DIR]

Keeps the jobs of GRPO and RLOO with the four two-reward methods (``raw+sum``, ``logsigmoid+sum`` = the AND,
``raw+gdpo``, ``logsigmoid+gdpo``) on ``data.world.seed`` = ``--world`` (a job that repeats another's
algorithm, method, β and seed is left out). Per (algorithm, method, β), mean ± s.e. over seeds of the last
evaluation: the gold share better than SFT on both properties, each property's gold win rate, proxy − gold,
the KL to SFT, and the share of prompts where EITHER property got worse than SFT (per-prompt gold means
against the SFT's on the same prompt: the hidden trade the AND claims to avoid); then better-on-both at a
matched KL per algorithm (``--at-kl``; default: the largest KL all its runs reach), where each run passed it.
Writes ``world<N>.md`` and ``world<N>_both_vs_kl.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_runs import Run, load_runs, mean_se, one_line_warnings, per_prompt_rows, warn  # noqa: E402

METHODS = ["raw+sum", "logsigmoid+sum", "raw+gdpo", "logsigmoid+gdpo"]
ALGORITHMS = ["grpo", "rloo"]
LABEL = {"raw+sum": "raw sum", "logsigmoid+sum": "log-sigmoid sum (AND)", "raw+gdpo": "GDPO on raw"}
LABEL["logsigmoid+gdpo"] = "GDPO on log-sigmoid"
FINAL = [
    ("gold/win_rate_both", "better on both"),
    ("gold/win_rate_helpful", "helpful"),
    ("gold/win_rate_harmless", "harmless"),
    ("gold/proxy_minus_gold", "proxy − gold"),
    ("gold/kl_to_sft", "KL"),
]


def world_of(run: Run) -> int:
    data = run.config.get("data") or {}
    return int(((data.get("world") or {}).get("seed")) or 0)


def worse_share(run: Run) -> float:
    """Share of evaluation prompts whose gold helpfulness OR harmlessness mean fell below the SFT's (a job
    folder's rows are samples: averaged per prompt first, as an archive's already are)."""
    rows = run.prompts if all("samples" in r for r in run.prompts) else per_prompt_rows(run.prompts)
    rows = [r for r in rows if "gold_helpful_sft" in r and "gold_harmless_sft" in r]
    if not rows:
        return math.nan
    worse = [
        r["gold_helpful"] < r["gold_helpful_sft"] or r["gold_harmless"] < r["gold_harmless_sft"] for r in rows
    ]
    return sum(worse) / len(worse)


def select(sources: list[str], world: int) -> dict[tuple[str, str, float], list[Run]]:
    """(algorithm, method, β) → its runs (one per seed) of ``world``."""
    groups: dict[tuple[str, str, float], list[Run]] = defaultdict(list)
    seen: set[tuple] = set()
    for source in sources:
        for run in load_runs(source):
            method = run.method.rpartition(":")[2]
            if run.algorithm not in ALGORITHMS or method not in METHODS or world_of(run) != world:
                continue
            key = (run.algorithm, method, run.beta, run.seed)
            if key in seen:
                warn(f"skipping {run.path}: the same {key} again")
                continue
            seen.add(key)
            groups[key[:3]].append(run)
    return groups


def cell(values: list[float], digits: int = 3) -> str:
    mean, se = mean_se(values)
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def auto_at_kl(groups: dict) -> float:
    """The largest KL every group reaches in all its runs (the smallest of their maxima), rounded down."""
    reach = [max(k for k, _ in r.trajectory("gold/win_rate_both")) for runs in groups.values() for r in runs]
    return math.floor(min(reach) * 100) / 100 if reach else math.nan


def matched_kl(spec: str | None, groups: dict) -> dict[str, float]:
    """``--at-kl``: one KL for every algorithm (``0.2``), one per algorithm (``grpo=0.07,rloo=0.2``; an
    algorithm left out gets its own default), or none: per algorithm, the largest KL all its runs reach."""
    out = {}
    for algo in ALGORITHMS:
        mine = {key: runs for key, runs in groups.items() if key[0] == algo}
        out[algo] = auto_at_kl(mine) if mine else math.nan
    if spec is None:
        return out
    if "=" not in spec:
        return dict.fromkeys(ALGORITHMS, float(spec))
    for item in spec.split(","):
        algo, _, value = item.partition("=")
        if algo not in ALGORITHMS:
            raise SystemExit(f"--at-kl {item!r}: expected ALGORITHM=KL with ALGORITHM one of {ALGORITHMS}")
        out[algo] = float(value)
    return out


def table(groups: dict, at_kl: dict[str, float], world: int, sources: list[str]) -> str:
    lines = [f"# GDPO vs the AND — world {world}", ""]
    lines += [f"Sources: {', '.join(f'`{s}`' for s in sources)}. Mean ± s.e. over seeds (n per row)."]
    matched = ", ".join(f"{a} at KL {at_kl[a]:g}" for a in ALGORITHMS)
    lines += [f"Better on both at matched KL, where each run's training passed it: {matched}.", ""]
    head = [
        "algorithm",
        "method",
        "β",
        "n",
        *[n for _, n in FINAL],
        "worse on either",
        "both @ matched KL",
    ]
    lines += ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |"]
    for (algo, method, beta), runs in sorted(
        groups.items(), key=lambda g: (g[0][0], g[0][2], METHODS.index(g[0][1]))
    ):
        cells = [cell([r.final(tag) for r in runs]) for tag, _ in FINAL]
        cells.append(cell([worse_share(r) for r in runs]))
        cells.append(cell([r.at_kl(at_kl[algo], "gold/win_rate_both") for r in runs]))
        lines.append("| " + " | ".join([algo, LABEL[method], f"{beta:g}", str(len(runs)), *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot(groups: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, len(ALGORITHMS), figsize=(11, 4), sharey=True)
    for ax, algo in zip(axes, ALGORITHMS):
        for method in METHODS:
            pts = [
                (r.final("gold/kl_to_sft"), r.final("gold/win_rate_both"))
                for (a, m, _), runs in groups.items()
                if a == algo and m == method
                for r in runs
            ]
            if pts:
                ax.scatter(*zip(*pts), label=LABEL[method], s=18)
        ax.set_title(algo)
        ax.set_xlabel("KL to SFT (last evaluation)")
    axes[0].set_ylabel("gold: better than SFT on both")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="sweep folders or archives (*.jsonl.gz)")
    parser.add_argument("--world", type=int, default=0, help="data.world.seed of the jobs to keep")
    parser.add_argument(
        "--at-kl",
        default=None,
        help="matched KL: 0.2, or per algorithm grpo=0.07,rloo=0.2 (default: per algorithm, the largest KL "
        "all its runs reach)",
    )
    parser.add_argument("--out", default="docs/results/gdpo")
    args = parser.parse_args(argv)
    one_line_warnings()
    groups = select(args.sources, args.world)
    if not groups:
        raise SystemExit(f"no GRPO/RLOO job of {METHODS} on world {args.world} in {args.sources}")
    at_kl = matched_kl(args.at_kl, groups)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(groups, at_kl, args.world, args.sources)
    (out / f"world{args.world}.md").write_text(text)
    plot(groups, out / f"world{args.world}_both_vs_kl.png")
    print(text)


if __name__ == "__main__":
    main()
