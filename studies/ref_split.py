"""Where do the policy's gold gains come from: responses above or below r_ref? (issue #18, hypothesis 2)

    python studies/ref_split.py MULTIRUN_DIR [--out DIR] [--reward helpful]

Hypothesis 2: *log σ(r − r_ref) cannot tell a hack from a good answer when both sit above r_ref* (u is flat
there, so it stops pushing both; below r_ref it pushes like the raw reward). For every job folder under
MULTIRUN_DIR (``.hydra/config.yaml`` + the last evaluation's ``gold_eval.jsonl``; no TensorBoard events
needed) this splits the held-out samples by whether the learned reward put them above their prompt's r_ref
and reports per (algorithm, method, β) and prompt group (all/easy/hard), mean ± s.e. over seeds: the share
of policy and of SFT samples above r_ref, their mean gold above and below, the hack share above r_ref
(policy samples above r_ref whose gold is below the paired SFT sample's), and the gold gain over SFT split
into the parts from samples above and below r_ref (see ``DEFINITIONS``).

r_ref is not logged, but u = log σ(r − r_ref) is (``transformed_<reward>`` of log-sigmoid jobs), so
r − r_ref = u − log(−expm1(u)). The reference stages depend only on the seed and the reward model's config,
so r_ref per prompt comes from the log-sigmoid jobs of a seed (they must agree to ``TOL``) and serves the
raw jobs of that seed too. Writes ``ref_split.md`` to ``--out`` (default ``MULTIRUN_DIR/analysis``): the
tables and a generated verdict comparing each transform with the raw reward of the same algorithm at equal
β and at the same final KL (differences paired by seed, which share r_ref). The pure maths (r_ref from u,
the split statistics) is in ``ref_split_maths.py``; this script loads the jobs, summarises and writes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analyze_sweep import (  # noqa: E402
    Run,
    SweepWarning,  # noqa: E402, F401  (re-exported: callers catch it from here)
    fmt,
    interpolate,
    mean_se,
    method_key,
    method_of,
    one_line_warnings,
    warn,
)
from ref_split_maths import (  # noqa: E402
    TOL,  # noqa: F401  (re-exported with the other maths: callers and tests reach them from here)
    decompose,  # noqa: F401
    hack_share,  # noqa: F401
    in_group,
    margin_from_u,  # noqa: F401
    merge_rrefs,
    rref_per_prompt,
    split_stats,
)

GROUPS = ("all", "easy", "hard")
# (header, metric key) of the two tables
WHERE = [("KL", "kl"), ("π above r_ref", "share_above"), ("SFT above r_ref", "share_above_sft")]
WHERE += [("gold π above", "gold_above"), ("gold π below", "gold_below")]
WHERE += [("gold SFT above", "gold_sft_above"), ("gold SFT below", "gold_sft_below")]
GAINS = [("hack share above", "hack_above"), ("hack share below", "hack_below"), ("gain", "gain")]
GAINS += [("gain from above", "gain_above"), ("gain from below", "gain_below")]
GAINS += [("gain per sample above", "gain_per_above"), ("gain per sample below", "gain_per_below")]


@dataclass
class Job(Run):
    """:class:`analyze_sweep.Run` without scalars; ``ref_key`` (seed + ``reward.<name>`` config) is shared by
    the jobs with the same r_ref; ``logsigmoid``: its rows log u = log σ(r − r_ref)."""

    ref_key: str = ""
    logsigmoid: bool = False


# -------------------------------------------------------------------------------------------- loading
def read_rows(path: Path, reward: str, logsigmoid: bool = False) -> list[dict]:
    """Rows of a ``gold_eval.jsonl``, checked for the fields the split needs (and u for log-sigmoid jobs).

    Raises:
        ValueError: ``file:line: field`` of the first unreadable row or missing field.
    """
    need = ["prompt_id", "kl", *(f"{k}_{reward}{s}" for k in ("gold", "proxy") for s in ("", "_sft"))]
    need += [f"transformed_{reward}"] if logsigmoid else []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e})") from e
        missing = [k for k in need if k not in row]
        if missing:
            raise ValueError(f"{path}:{i}: missing field {missing[0]!r}")
        rows.append(row)
    return rows


def load_jobs(multirun_dir: str | Path, reward: str = "helpful") -> list[Job]:
    """Every job folder under ``multirun_dir`` with a ``gold_eval.jsonl`` (others: skipped with a warning)."""
    jobs = []
    for cfg_file in sorted(Path(multirun_dir).rglob(".hydra/config.yaml")):
        job = cfg_file.parent.parent
        files = sorted(job.rglob("gold_eval.jsonl"))
        if not files:
            warn(f"skipping {job}: no gold_eval.jsonl (failed or unfinished job?)")
            continue
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
        if reward not in (cfg.get("reward") or {}):
            raise ValueError(f"{cfg_file}: no reward.{reward} (pick one with --reward)")
        task = cfg.get("task") or {}
        target = str((cfg.get("transform") or {}).get("_target_") or "Identity")
        logsigmoid = target.rsplit(".", 1)[-1] == "LogSigmoid"
        ref_key = json.dumps([cfg.get("seed", 0), cfg["reward"][reward]], sort_keys=True, default=str)
        jobs.append(
            Job(
                path=job,
                method=method_of(cfg),
                beta=float((task.get("module") or {}).get("kl_coef", math.nan)),
                seed=int(cfg.get("seed", 0)),
                scalars={},
                prompts=read_rows(files[-1], reward, logsigmoid),
                algorithm=str(task.get("name", "ppo")),
                ref_key=ref_key,
                logsigmoid=logsigmoid,
            )
        )
    if not jobs:
        warn(f"no job with a gold_eval.jsonl under {multirun_dir}")
    return jobs


def recover_rrefs(jobs: list[Job], reward: str = "helpful") -> dict[str, dict[int, float]]:
    """ref_key → prompt → r_ref, from the log-sigmoid jobs (which must agree: see :func:`merge_rrefs`)."""
    by_key: dict[str, dict[str, dict[int, float]]] = defaultdict(dict)
    for job in (j for j in jobs if j.logsigmoid):
        col = lambda k, rows=job.prompts: np.array([r[k] for r in rows], dtype=float)  # noqa: E731
        try:
            per = rref_per_prompt(
                col("prompt_id").astype(int), col(f"proxy_{reward}"), col(f"transformed_{reward}")
            )
        except ValueError as e:
            raise ValueError(f"{job.path}: {e}") from e
        by_key[job.ref_key][str(job.path)] = per
    return {key: merge_rrefs(per_job) for key, per_job in by_key.items()}


# ------------------------------------------------------------------------------------------ summaries
@dataclass
class Cell:
    """One table row: (algorithm, method, β, group) → metric → (mean, s.e.), and per seed → metric → value."""

    algorithm: str
    method: str
    beta: float
    group: str
    stats: dict[str, tuple[float, float]]
    by_seed: dict[int, dict[str, float]]


def summarise(jobs: list[Job], rrefs: dict[str, dict[int, float]], reward: str = "helpful") -> list[Cell]:
    """Per-job split statistics, grouped by (algorithm, method, β, group), mean ± s.e. over seeds.

    Raises:
        ValueError: a job whose seed/reward model no log-sigmoid job covers (no r_ref for its prompts).
    """
    per: dict[tuple[str, str, float, str], dict[int, dict[str, float]]] = defaultdict(dict)
    for job in jobs:
        rref = rrefs.get(job.ref_key, {})
        missing = sorted({r["prompt_id"] for r in job.prompts} - set(rref))
        if missing:
            raise ValueError(
                f"{job.path}: no r_ref for prompt(s) {missing[:5]}: no log-sigmoid job with seed {job.seed} "
                f"and the same reward.{reward} config covers them"
            )
        kl_all = float(np.mean([r["kl"] for r in job.prompts]))  # the whole policy's KL, to match runs by
        for group in GROUPS:
            stats = split_stats([r for r in job.prompts if in_group(r, group)], rref, reward)
            if stats:
                per[(job.algorithm, job.method, job.beta, group)][job.seed] = stats | {"kl_all": kl_all}
    cells = []
    order = lambda k: (method_key(f"{k[0]}:")[0], GROUPS.index(k[3]), k[2], method_key(k[1]))  # noqa: E731
    for key in sorted(per, key=order):
        by_seed = per[key]
        metrics = dict.fromkeys(m for s in by_seed.values() for m in s)
        stats = {m: mean_se([s.get(m, math.nan) for s in by_seed.values()]) for m in metrics}
        cells.append(Cell(*key, stats, by_seed))
    return cells


def paired_diff(a: Cell, b: Cell, metric: str) -> tuple[float, float]:
    """Mean ± s.e. over the seeds both cells have of ``a − b`` (seeds share r_ref and the reward model)."""
    seeds = sorted(set(a.by_seed) & set(b.by_seed))
    return mean_se([a.by_seed[s].get(metric, math.nan) - b.by_seed[s].get(metric, math.nan) for s in seeds])


def compare(d: tuple[float, float]) -> str:
    """'lower' / 'higher' beyond 2 s.e. of the difference, else 'equal' ('unclear' without an s.e.)."""
    mean, se = d
    if math.isnan(mean) or math.isnan(se):
        return "unclear"
    return "equal" if abs(mean) <= 2 * se else ("lower" if mean < 0 else "higher")


def matched_kl(cell: Cell, raws: list[Cell]) -> Cell:
    """The raw reward at ``cell``'s final KL of the whole policy (``kl_all``), per seed: each metric linear
    in that KL between the two raw β whose KLs (same seed) bracket it (a seed they do not is left out)."""
    by_seed = {}
    for seed, stats in cell.by_seed.items():
        runs = sorted((r.by_seed[seed] for r in raws if seed in r.by_seed), key=lambda s: s["kl_all"])
        at = {
            m: interpolate([(s["kl_all"], s.get(m, math.nan)) for s in runs], stats["kl_all"]) for m in stats
        }
        if not math.isnan(at["kl_all"]):
            by_seed[seed] = at
    stats = {m: mean_se([s[m] for s in by_seed.values()]) for m in cell.stats}
    return Cell(cell.algorithm, "raw", math.nan, cell.group, stats, by_seed)


PREDICTED = {"hack_above": "not lower", "gain_above": "lower", "gain_below": "higher"}
SHOWN = ["share_above", "hack_above", "gain_above", "gain_below", "gain"]  # comparison table columns


def judge(words: dict[str, str]) -> str:
    """Hypothesis 2's predictions vs the raw reward: the hack share above r_ref is not lower (the transform
    cannot tell hacks from good answers there), and gain moves from above r_ref to below."""
    if "unclear" in words.values():
        return "unclear"
    hacks = words["hack_above"] != "lower"
    shift = words["gain_above"] == "lower" and words["gain_below"] == "higher"
    if hacks and shift:
        return "consistent"
    return ("hacks not fewer" if hacks else "fewer hacks") + (
        ", gain shifted" if shift else ", gain not shifted"
    )


def comparison(cell: Cell, raw: Cell) -> tuple[list[str], dict[str, str]]:
    """Table cells 'transform vs raw (diff ± s.e. direction)' over the seeds both have, for the shown metrics,
    and the direction of each predicted metric's difference."""
    seeds = sorted(set(cell.by_seed) & set(raw.by_seed))
    texts, words = [], {}
    for metric in SHOWN:
        d = paired_diff(cell, raw, metric)
        words[metric] = compare(d)
        a, b = (float(np.mean([c.by_seed[s][metric] for s in seeds])) for c in (cell, raw))
        texts.append(f"{a:.3f} vs {b:.3f} ({d[0]:+.3f} ± {d[1]:.3f} {words[metric]})")
    return texts, {m: words[m] for m in PREDICTED}


def verdicts(cells: list[Cell]) -> list[str]:
    """The generated verdict: a comparison table and a paragraph per algorithm and transform, against the raw
    reward at equal β and at the same final KL."""
    head = [
        "| algorithm | method | group | β | raw at | n | π above r_ref | hack share above | gain from above "
        "| gain from below | gain | judgement |",
        "|" + " --- |" * 12,
    ]
    lines, paragraphs = [], []
    index = {(c.algorithm, c.method, c.beta, c.group): c for c in cells}
    for alg in dict.fromkeys(c.algorithm for c in cells):
        for method in dict.fromkeys(c.method for c in cells if c.algorithm == alg and c.method != "raw"):
            tally: dict[str, dict[str, int]] = {"equal β": defaultdict(int), "same KL": defaultdict(int)}
            for c in (c for c in cells if (c.algorithm, c.method) == (alg, method)):
                raws = [r for r in cells if (r.algorithm, r.method, r.group) == (alg, "raw", c.group)]
                same_beta = index.get((alg, "raw", c.beta, c.group))
                for where, raw in (("equal β", same_beta), ("same KL", matched_kl(c, raws))):
                    n = len(set(c.by_seed) & set(raw.by_seed)) if raw else 0
                    if n == 0:
                        continue
                    texts, words = comparison(c, raw)
                    j = judge(words)
                    tally[where][j] += 1
                    at = f"β {c.beta:g}" if where == "equal β" else f"KL {c.stats['kl_all'][0]:.2f}"
                    row = [alg, method, c.group, f"{c.beta:g}", at, str(n), *texts, j]
                    lines.append("| " + " | ".join(row) + " |")
            counts = {
                where: ", ".join(f"{k}: {v}" for k, v in sorted(t.items())) or "no cell"
                for where, t in tally.items()
            }
            paragraphs += [
                f"\n**{alg.upper()}, {method} vs raw.** At equal β ({sum(tally['equal β'].values())} "
                f"(β, group) cells): {counts['equal β']}. At the same final KL "
                f"({sum(tally['same KL'].values())} cells the raw β sweep brackets): {counts['same KL']}.",
            ]
    return head + lines + paragraphs


# ------------------------------------------------------------------------------------------------ outputs
def table(cells: list[Cell], columns: list[tuple[str, str]]) -> str:
    head = "| algorithm | group | β | method | n | " + " | ".join(h for h, _ in columns) + " |"
    lines = [head, "|" + " --- |" * (5 + len(columns))]
    for c in cells:
        vals = " | ".join(fmt(*c.stats.get(k, (math.nan, math.nan))) for _, k in columns)
        lines.append(f"| {c.algorithm} | {c.group} | {c.beta:g} | {c.method} | {len(c.by_seed)} | {vals} |")
    return "\n".join(lines)


DEFINITIONS = """\
A sample is *above r_ref* when the learned reward r puts it above its prompt's r_ref (recovered from
u = log σ(r − r_ref) of the log-sigmoid jobs of the same seed: r − r_ref = u − log(−expm1(u))). Each policy
sample is paired with the SFT sample of the same prompt and sample index. *hack share above* = share of the
policy samples above r_ref whose gold is below their SFT sample's (the proxy says good, the gold says worse
than SFT). *gain* = mean(gold − gold_sft) = *gain from above* + *gain from below* (each a sum over its
samples divided by all samples); *gain per sample* is the same mean within the part. Values at the last
evaluation, mean ± s.e. over the n seeds (s.e. = sample std / √n)."""

HYPOTHESIS = """\
Hypothesis 2 (issue #18): above r_ref u is flat, so the transform stops pushing hacks and good answers alike;
below r_ref it pushes like the raw reward. Against the raw reward it predicts (1) a hack share above r_ref
that is *not lower* (equal within 2 s.e. of the difference paired by seed, or higher: the transform cannot
steer away from hacks there) and (2) gain moved from above r_ref to below: *less* gain from above, *more*
from below. **consistent** = both; the other judgements say which failed (*unclear*: no s.e.). Each cell
reads `transform vs raw (transform − raw ± s.e., direction)`. At equal β the transform ends at a lower KL (it
acts like a larger β), which by itself means fewer hacks, so each cell is compared with the raw reward at
the same final KL too (the whole policy's KL over all prompts, also for the easy/hard rows): per seed, the
raw reward's metrics linear in KL between the two raw β that bracket the transform's KL (seeds outside the
raw sweep's KL range are left out; n counts the seeds compared). The gains are in gold units."""


def analyse(multirun_dir: str | Path, out: str | Path | None = None, reward: str = "helpful") -> list[Cell]:
    """Load, recover r_ref, summarise and write ``ref_split.md``; returns the table's cells."""
    out = Path(out) if out else Path(multirun_dir) / "analysis"
    jobs = load_jobs(multirun_dir, reward)
    cells = summarise(jobs, recover_rrefs(jobs, reward), reward)
    if not cells:
        return cells
    parts = Path(multirun_dir).parts  # shown from its multirun/ folder on: no machine path in the report
    name = "/".join(parts[parts.index("multirun") :]) if "multirun" in parts else Path(multirun_dir).name
    verdict = verdicts(cells)
    text = [f"# Gains above vs below r_ref: {name} (reward {reward!r})"]
    text += [f"`python studies/ref_split.py {name}` — {len(jobs)} jobs. " + DEFINITIONS]
    text += ["## Where the samples sit", table(cells, WHERE), "## Hacks and gains", table(cells, GAINS)]
    text += ["## Verdict (generated)", HYPOTHESIS, "\n".join(verdict)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "ref_split.md").write_text("\n\n".join(text) + "\n")
    print("\n".join(line.strip() for line in verdict if line.strip().startswith("**")))
    print(f"\nwrote {out / 'ref_split.md'}")
    return cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", help="a Hydra multirun folder, e.g. multirun/study/algorithms")
    parser.add_argument("--out", default=None, help="output folder (default: MULTIRUN_DIR/analysis)")
    parser.add_argument("--reward", default="helpful", help="reward model to split by (reward.<name>)")
    args = parser.parse_args(argv)
    one_line_warnings()
    analyse(args.multirun_dir, args.out, args.reward)


if __name__ == "__main__":
    main()
