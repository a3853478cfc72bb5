"""PPO's cost as the work grows: seconds per iteration and peak RSS, lit_rlhf and TRL side by side.

    bash benchmarks/setup_peers.sh && .venv/bin/python benchmarks/cost.py                # every cell
    .venv/bin/python benchmarks/cost.py --size toy                                        # one model size
    .venv/bin/python benchmarks/cost.py --size smollm2 --cells 8x16,8x64 --steps 1        # some cells
    .venv/bin/python benchmarks/cost.py --report                                          # table only

Each cell is one ``run.py --tasks ppo`` with ``--set ppo_batch_prompts=P --set ppo_max_new_tokens=L``
(response length L, P prompts per batch, the size's other settings; equal work asserted by ``run.py``),
its raw results kept in ``benchmarks/cost/<size>-<P>x<L>.json``; the table (``benchmarks/cost.md``)
is rebuilt from every cell on record, so cells can be measured in several sittings. Per side: the median
seconds per timed iteration, its peak RSS, and the share of each phase of the iteration (generation, the
rollout's forwards, the update's forwards, the rest: backward, optimizer, loss maths, bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SIZES, median, runs_dir  # noqa: E402
from run import lit_python  # noqa: E402

PROMPTS = (8, 32)
RESPONSE_TOKENS = (16, 64, 256)
STEPS = {"toy": (2, 3), "smollm2": (1, 1)}  # (warm-up, timed) iterations per side and cell
# one run per side samples few responses, whose lengths up to EOS vary more than run.py's 15 % allows; the
# forwards cover every generated position on both sides (checked exactly), so the FLOPs are equal regardless
SAMPLED_TOLERANCE = 0.4
CELLS_DIR = HERE / "cost"  # kept in git: the table is rebuilt from them


def phase_shares(breakdown: dict[str, float]) -> dict[str, float]:
    """A side's per-phase seconds (``breakdown_s``) → shares of its step in four groups.

    Both sides name their phases ``rollout: …`` / ``update: …``; a phase whose name says "generation" is
    generation, other rollout and update phases that say "forward" are the forwards, the rest (backward,
    optimizer, loss maths, masks, logging, the loop) is whatever the step total leaves.
    """
    total = breakdown["step total"]
    gen = sum(v for k, v in breakdown.items() if "generation" in k)
    fwd = {
        part: sum(
            v for k, v in breakdown.items() if k.startswith(part) and "forward" in k and "generation" not in k
        )
        for part in ("rollout:", "update:")
    }
    rest = total - gen - fwd["rollout:"] - fwd["update:"]
    return {
        "generation": gen / total,
        "rollout forwards": fwd["rollout:"] / total,
        "update forwards": fwd["update:"] / total,
        "backward, optimizer, rest": rest / total,
    }


def side_summary(runs: list[dict]) -> dict:
    """Median seconds per timed iteration, peak RSS (MB) and phase shares over a side's runs."""
    breakdown = {k: median([r["breakdown_s"].get(k, 0.0) for r in runs]) for k in runs[0]["breakdown_s"]}
    return {
        "s_per_iter": median([x for r in runs for x in r["step_s"]]),
        "rss_mb": median([r["peak_rss_mb"] for r in runs]),
        "shares": phase_shares(breakdown),
    }


def cell_row(size: str, prompts: int, tokens: int, raw: dict) -> str:
    lit, trl = side_summary(raw["ppo"]["lit"]), side_summary(raw["ppo"]["peer"])

    def shares(x: dict) -> str:
        return " / ".join(f"{v:.0%}" for v in x["shares"].values())

    return (
        f"| {size} | {prompts} | {tokens} | {lit['s_per_iter']:.2f} | {trl['s_per_iter']:.2f} "
        f"| **{trl['s_per_iter'] / lit['s_per_iter']:.2f}×** | {lit['rss_mb']:.0f} / {trl['rss_mb']:.0f} "
        f"| {shares(lit)} | {shares(trl)} |"
    )


def report() -> str:
    rows = []
    for size in SIZES:
        for p in PROMPTS:
            for n in RESPONSE_TOKENS:
                f = CELLS_DIR / f"{size}-{p}x{n}.json"
                failed = f.with_suffix(".failed")
                if failed.exists():
                    rows.append(f"| {size} | {p} | {n} | not measured: {failed.read_text().strip()} |||||")
                elif f.exists():
                    rows.append(cell_row(size, p, n, json.loads(f.read_text())))
    return "\n".join(
        [
            "# PPO cost as the work grows: lit_rlhf vs TRL 1.12 PPOTrainer on CPU",
            "",
            "Regenerate: `bash benchmarks/setup_peers.sh && .venv/bin/python benchmarks/cost.py` "
            "(cells: `--size`, `--cells PxL`; each cell is `run.py --tasks ppo --repeats 1` with "
            "`--set ppo_batch_prompts=P --set ppo_max_new_tokens=L`, equal work asserted).",
            f"Iterations per side and cell (warm-up, timed): {STEPS}; one run per side, so a cell's ratio "
            "is one measurement, not a median of alternating runs (`run.py` gives those).",
            f"Response tokens up to EOS (sampled) allowed to differ by {SAMPLED_TOLERANCE:.0%} between the "
            "sides; the generated positions every forward covers are checked exactly equal.",
            "Phase shares, in this order: generation / rollout forwards (policy, reference, critic, reward) "
            "/ update forwards / backward, optimizer and the rest.",
            "",
            "| size | prompts | response tokens | s / iteration lit | TRL | speed-up (TRL s / lit s) "
            "| peak RSS MB lit / TRL | phase shares lit | phase shares TRL |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
            *rows,
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), action="append", help="default: every size")
    ap.add_argument("--cells", default=None, help="comma-separated PxL (prompts x response tokens)")
    ap.add_argument("--steps", type=int, default=None, help="timed iterations per side (default per size)")
    ap.add_argument("--report", action="store_true", help="only rebuild benchmarks/cost.md from the cells")
    ap.add_argument("--max-wait", type=float, default=600, help="passed to run.py")
    a = ap.parse_args()
    grid = [f"{p}x{n}" for p in PROMPTS for n in RESPONSE_TOKENS]
    cells = a.cells.split(",") if a.cells else grid
    if bad := sorted(set(cells) - set(grid)):
        raise SystemExit(f"--cells: unknown {bad}; expected some of {','.join(grid)}")
    CELLS_DIR.mkdir(parents=True, exist_ok=True)
    for size in [] if a.report else (a.size or list(SIZES)):
        warmup, timed = STEPS[size]
        for cell in cells:
            p, n = cell.split("x")
            sets = [f"ppo_batch_prompts={p}", f"ppo_max_new_tokens={n}", f"ppo_warmup_steps={warmup}"]
            sets.append(f"ppo_steps={a.steps or timed}")
            cmd = [lit_python(), str(HERE / "run.py"), "--size", size, "--tasks", "ppo", "--repeats", "1"]
            cmd += [
                f"--max-wait={a.max_wait}",
                f"--sampled-tolerance={SAMPLED_TOLERANCE}",
                "--out",
                str(CELLS_DIR / f"{size}-{cell}.md"),
            ]
            p = subprocess.run(
                cmd + [arg for s in sets for arg in ("--set", s)], stderr=subprocess.PIPE, text=True
            )
            sys.stderr.write(p.stderr)
            failed = CELLS_DIR / f"{size}-{cell}.failed"
            if p.returncode:  # e.g. unequal work: recorded, and the other cells still run
                lines = [x for x in p.stderr.splitlines() if x.strip() and not x.startswith("WARNING")]
                failed.write_text((lines or [f"exit code {p.returncode}"])[-1] + "\n")
                continue
            failed.unlink(missing_ok=True)
            shutil.copy(runs_dir(size) / "raw.json", CELLS_DIR / f"{size}-{cell}.json")
            (HERE / "cost.md").write_text(report())
    (HERE / "cost.md").write_text(report())
    print(report())


if __name__ == "__main__":
    main()
