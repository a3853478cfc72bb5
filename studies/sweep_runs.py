"""A sweep's finished jobs as :class:`Run` objects, from their folders or from a compact archive.

    python studies/sweep_runs.py archive DIR [DIR ...] --out docs/results/leaderboard/runs.jsonl.gz

A job folder (one with ``.hydra/config.yaml``) gives its method and β from the config, its TensorBoard
scalars (tensorboard's ``EventAccumulator``) and the per-sample rows of its last evaluation
(``tensorboard/gold_eval.jsonl``). Sweep folders are gitignored and about 14 MB a job (checkpoint, model,
1 MB of per-sample rows), so a study that spans sessions or machines keeps its jobs as an **archive**: one
gzipped JSON line per job with the config keys the analyses read, every scalar, and the last evaluation
reduced to one row per prompt (the mean of each numeric field over the prompt's samples, ``samples`` =
how many) — enough for everything except per-sample analyses (``studies/ref_split.py``). ``load_runs``
reads a folder or an archive alike, so ``studies/analyze_sweep.py`` and ``studies/leaderboard.py`` take
either.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tensorboard.backend.event_processing import event_accumulator

TRANSFORMS = {"identity": "raw", "logsigmoid": "logsigmoid", "center": "center", "whiten": "whiten"}
TRANSFORMS |= {"clip": "clip"}
AGGREGATORS = {"sum": "sum", "weightedsum": "weighted_sum", "min": "min", "normalizethensum": "gdpo"}
DEFAULT_Q = 0.85  # conf/reward/*.yaml reference.q: a method is named by its reference only when it differs
# the config keys an archive keeps: what method_of, load_runs and the leaderboard read (data: the world seed)
ARCHIVED_KEYS = ("seed", "task", "reward", "transform", "aggregator", "data")


class SweepWarning(UserWarning):
    """A job or a tag the analysis had to leave out."""


@dataclass
class Run:
    """One finished job of the sweep.

    Attributes:
        path: the job folder (``multirun/ppo/<date>/<num>``; for an archived job, the folder it came from).
        method: transform name, plus ``+aggregator`` with ≥ 2 reward models (``logsigmoid+sum``); prefixed
            with the algorithm (``grpo:logsigmoid``) when the sweep spans several ``task.name``.
        beta: KL coefficient ``task.module.kl_coef``.
        seed: ``seed``.
        scalars: tag → [(step, value)] sorted by step.
        prompts: rows of the last evaluation (``gold_eval.jsonl``: one per sample; archived: one per prompt).
        algorithm: ``task.name``.
        config: the job's composed config (archived: the keys of ``ARCHIVED_KEYS``).
    """

    path: Path
    method: str
    beta: float
    seed: int
    scalars: dict[str, list[tuple[int, float]]]
    prompts: list[dict] = field(default_factory=list)
    algorithm: str = "ppo"
    config: dict = field(default_factory=dict)

    def final(self, tag: str) -> float:
        """Last logged value of ``tag`` (NaN when the tag is missing); ``first:<tag>`` gives the first."""
        first = tag.startswith("first:")
        points = self.scalars.get(tag.removeprefix("first:"))
        return (points[0][1] if first else points[-1][1]) if points else math.nan

    def trajectory(self, tag: str) -> list[tuple[float, float]]:
        """(KL to SFT, ``tag``) at each evaluation that logged both, in step order."""
        kl = dict(self.scalars.get("gold/kl_to_sft", []))
        return [(kl[step], v) for step, v in self.scalars.get(tag, []) if step in kl]

    def at_kl(self, kl: float, tag: str = "gold/win_rate_helpful") -> float:
        """``tag`` where this run's training passed KL = ``kl``: linear between the two evaluations that
        bracket it (the first such pair); NaN if its evaluations never bracket ``kl``."""
        return interpolate(self.trajectory(tag), kl)


def interpolate(points: list[tuple[float, float]], kl: float) -> float:
    """y at x = ``kl`` on a path of (x, y) points: linear within the first consecutive pair that brackets
    ``kl``; NaN if none does."""
    for (k0, y0), (k1, y1) in zip(points, points[1:]):
        if min(k0, k1) <= kl <= max(k0, k1):
            return y0 if k0 == k1 else y0 + (y1 - y0) * (kl - k0) / (k1 - k0)
    return math.nan


def warn(msg: str) -> None:
    warnings.warn(msg, SweepWarning, stacklevel=2)


# ----------------------------------------------------------------------------------------------- naming
def method_of(cfg: dict) -> str:
    """Method name from a job's composed config (``transform._target_``, ``aggregator._target_``)."""
    target = ((cfg.get("transform") or {}).get("_target_") or "Identity").rsplit(".", 1)[-1].lower()
    name = TRANSFORMS.get(target, target)
    rewards = [k for k, v in (cfg.get("reward") or {}).items() if isinstance(v, dict)]
    if len(rewards) >= 2:
        agg = ((cfg.get("aggregator") or {}).get("_target_") or "Sum").rsplit(".", 1)[-1].lower()
        name += "+" + AGGREGATORS.get(agg, agg)
    if name != "raw" and not name.startswith("raw+"):  # r_ref matters: name a non-default reference
        for reward in rewards:
            ref = cfg["reward"][reward].get("reference") or {}
            statistic, q = ref.get("statistic", "quantile"), ref.get("q", DEFAULT_Q)
            if statistic != "quantile" or float(q) != DEFAULT_Q:
                name += f"@{reward}=" + (f"q{float(q):g}" if statistic == "quantile" else statistic)
    return with_ensembles(name, cfg)


def with_ensembles(name: str, cfg: dict) -> str:
    """``name`` with a reward ensemble's aggregate: ``ens_min``, ``ens_mean-1std``, ``ens_mean-0.5var``
    (``logsigmoid(ens_min)`` with a transform; ``[reward]`` when several reward models)."""
    parts = []
    for reward, spec in (cfg.get("reward") or {}).items():
        ens = spec.get("ensemble") if isinstance(spec, dict) else None
        if not ens:
            continue
        agg, k = ens.get("aggregate", "mean_minus_std"), float(ens.get("k", 1.0))
        text = {"mean_minus_std": f"mean-{k:g}std", "mean_minus_var": f"mean-{k:g}var"}.get(agg, agg)
        parts.append("ens_" + text + ("" if len(cfg["reward"]) == 1 else f"[{reward}]"))
    if not parts:
        return name
    ens = ",".join(parts)
    return ens if name == "raw" else f"{name}({ens})"


# ---------------------------------------------------------------------------------------------- folders
def read_scalars(job: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars of the event files under ``job`` (a resumed run's repeated steps keep the last value)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for folder in sorted({p.parent for p in job.rglob("events.out.tfevents.*")}):
        acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
        try:
            acc.Reload()
        except Exception as e:  # a truncated or corrupt file: keep what was read
            warn(f"{folder}: could not read all events ({e})")
        for tag in acc.Tags()["scalars"]:
            for ev in acc.Scalars(tag):
                out[tag][ev.step] = ev.value
    return {tag: sorted(points.items()) for tag, points in out.items()}


def read_prompts(job: Path) -> list[dict]:
    """Rows of ``gold_eval.jsonl`` (empty when the job wrote none)."""
    files = sorted(job.rglob("gold_eval.jsonl"))
    try:
        lines = files[-1].read_text().splitlines() if files else []
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        warn(f"{files[-1]}: unreadable ({e}); no per-prompt analysis for this job")
        return []


def make_run(job: Path, cfg: dict, scalars: dict, prompts: list[dict]) -> Run | None:
    """The :class:`Run` of one job (``None``, with a warning, when it logged no scalars)."""
    if not scalars:
        warn(f"skipping {job}: no TensorBoard scalars (failed or unfinished job?)")
        return None
    beta = float(cfg.get("task", {}).get("module", {}).get("kl_coef", math.nan))
    algorithm = str(cfg.get("task", {}).get("name", "ppo"))
    run = Run(job, method_of(cfg), beta, int(cfg.get("seed", 0)), scalars, prompts, algorithm, cfg)
    for tag in ("gold/kl_to_sft", "gold/win_rate_helpful"):
        if tag not in scalars:
            warn(f"{job}: no {tag} logged")
    if not run.prompts:
        warn(f"{job}: no gold_eval.jsonl; no per-prompt analysis for it")
    return run


def load_runs(source: str | Path) -> list[Run]:
    """Every job of a sweep folder (each with ``.hydra/config.yaml`` and TensorBoard events) or of an
    archive (``*.jsonl.gz``, :func:`archive_runs`); jobs without scalars are skipped with a warning."""
    source = Path(source)
    runs = load_archive(source) if source.is_file() else _load_folder(source)
    if not runs:
        warn(f"no job with TensorBoard events under {source}")
    if len({run.algorithm for run in runs}) > 1:  # a multi-algorithm study: a method per algorithm
        for run in runs:
            run.method = f"{run.algorithm}:{run.method}"
    return runs


def _load_folder(multirun_dir: Path) -> list[Run]:
    runs = []
    for cfg_file in sorted(multirun_dir.rglob(".hydra/config.yaml")):
        job = cfg_file.parent.parent
        try:
            cfg = yaml.safe_load(cfg_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            warn(f"skipping {job}: unreadable {cfg_file} ({e})")
            continue
        run = make_run(job, cfg, read_scalars(job), read_prompts(job))
        if run is not None:
            runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------- archive
def per_prompt_rows(rows: list[dict]) -> list[dict]:
    """One row per prompt: each numeric field's mean over the prompt's samples, the first value of every
    other field, and ``samples`` = how many rows were averaged. Means of per-prompt means equal the
    per-sample means when every prompt has as many samples (as the gold evaluation draws)."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["prompt_id"]].append(r)
    out = []
    for pid, group in sorted(groups.items()):
        row: dict = {"prompt_id": pid, "samples": len(group)}
        for key, value in group[0].items():
            if key in ("prompt_id", "sample") or isinstance(value, str) and key not in ("difficulty",):
                continue  # texts stay in the job folder; difficulty is what the analyses group by
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            row[key] = float(np.mean([g[key] for g in group if key in g])) if numeric else value
        out.append(row)
    return out


def archive_runs(sources: list[str | Path], out: str | Path) -> int:
    """Write every job of ``sources`` (sweep folders or archives) to the gzipped JSON-lines ``out``; returns
    how many. A job's folder path is kept relative to the working directory when it lies under it."""
    lines = []
    for source in sources:
        for run in load_runs(source):
            path = Path(run.path)
            with contextlib.suppress(ValueError):  # outside the working directory: keep it absolute
                path = path.resolve().relative_to(Path.cwd().resolve())
            prompts = (
                run.prompts if run.prompts and "samples" in run.prompts[0] else per_prompt_rows(run.prompts)
            )
            record = {
                "job": str(path),
                "config": {k: run.config[k] for k in ARCHIVED_KEYS if k in run.config},
                "scalars": {tag: [[s, round(v, 7)] for s, v in pts] for tag, pts in run.scalars.items()},
                "prompts": prompts,
            }
            lines.append(json.dumps(record, sort_keys=True))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def load_archive(path: Path) -> list[Run]:
    """The runs of an archive written by :func:`archive_runs`; a malformed line is skipped with a warning
    naming the file, the line and the missing field."""
    runs = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError) as e:
        warn(f"{path}: not a readable gzipped archive ({e})")
        return []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            scalars = {tag: [(int(s), float(v)) for s, v in pts] for tag, pts in record["scalars"].items()}
            run = make_run(Path(record["job"]), record["config"], scalars, record.get("prompts", []))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            warn(f"{path}:{lineno}: skipped, not an archived job ({what})")
            continue
        if run is not None:
            runs.append(run)
    return runs


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / √n) of the non-NaN values; s.e. is NaN for n < 2."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), se


def paired_final_gains(runs: list[Run], baseline: str, metrics: list[str]) -> list[dict]:
    """Each (method, β)'s last-evaluation gain over ``baseline`` at the same β, paired by seed.

    Returns one row per (method, β) other than the baseline with a seed in common: ``method``, ``beta``,
    ``n`` (seeds paired), ``kl`` and ``kl_baseline`` (mean final KL to SFT) and, per metric, (mean, s.e.)
    of the per-seed differences.
    """
    by = {(r.method, r.beta, r.seed): r for r in runs}
    rows = []
    for method, beta in sorted({(r.method, r.beta) for r in runs if r.method != baseline}, key=str):
        seeds = sorted(s for m, b, s in by if (m, b) == (method, beta) and (baseline, beta, s) in by)
        if not seeds:
            continue
        pairs = [(by[(method, beta, s)], by[(baseline, beta, s)]) for s in seeds]
        row = {"method": method, "beta": beta, "n": len(seeds)}
        row["kl"] = float(np.mean([a.final("gold/kl_to_sft") for a, _ in pairs]))
        row["kl_baseline"] = float(np.mean([b.final("gold/kl_to_sft") for _, b in pairs]))
        for m in metrics:
            row[m] = mean_se([a.final(m) - b.final(m) for a, b in pairs])
        rows.append(row)
    return rows


def one_line_warnings() -> None:
    """Print each warning as one ``warning: …`` line (the scripts' CLI), every SweepWarning shown."""
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    warnings.simplefilter("always", SweepWarning)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    arch = sub.add_parser("archive", help="write sweep folders' jobs to one gzipped JSON-lines archive")
    arch.add_argument("sources", nargs="+", help="sweep folders (or archives) to archive")
    arch.add_argument(
        "--out", required=True, help="archive to write, e.g. docs/results/leaderboard/runs.jsonl.gz"
    )
    gain = sub.add_parser("gains", help="last-evaluation gains over a baseline method, paired by seed")
    gain.add_argument("source", help="a sweep folder or an archive")
    gain.add_argument("--baseline", required=True, help="the method to subtract, e.g. raw+sum")
    gain.add_argument(
        "--metrics",
        default="gold/win_rate_both,gold/win_rate_helpful,gold/win_rate_harmless",
        help="comma-separated scalar tags",
    )
    args = parser.parse_args(argv)
    one_line_warnings()
    if args.command == "gains":
        metrics = args.metrics.split(",")
        rows = paired_final_gains(load_runs(args.source), args.baseline, metrics)
        if not rows:
            sys.exit(f"{args.source}: no run shares a β and a seed with method {args.baseline!r}")
        print(f"| method | β | n | KL / {args.baseline} | " + " | ".join(metrics) + " |")
        print("| --- " * (4 + len(metrics)) + "|")
        for r in rows:
            cells = " | ".join(f"{r[m][0]:+.3f} ± {r[m][1]:.3f}" for m in metrics)
            print(
                f"| {r['method']} | {r['beta']} | {r['n']} "
                f"| {r['kl']:.2f} / {r['kl_baseline']:.2f} | {cells} |"
            )
        return
    n = archive_runs(args.sources, args.out)
    print(f"archived {n} jobs to {args.out}")
    if n == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
