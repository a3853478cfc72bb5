"""A ``-m`` sweep's table: ``summary.md`` in the sweep folder, one line per job (its overrides, its headline
metrics), written by the Hydra callback :class:`SweepSummary` that ``conf/hydra/default.yaml`` installs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lit_rlhf.run.summary import format_duration, format_estimate

log = logging.getLogger("lit_rlhf")


def _job_overrides(job: Path, summary: Mapping[str, Any]) -> list[str]:
    """The job's command-line overrides, from Hydra's ``.hydra/overrides.yaml``."""
    path = job / ".hydra" / "overrides.yaml"
    if path.is_file():
        return [str(o) for o in OmegaConf.load(path)]
    return list(summary.get("overrides") or [])


def _job_key(job: Path) -> tuple[int, int | str]:
    return (0, int(job.name)) if job.name.isdigit() else (1, job.name)


def multirun_table(sweep_dir: str | Path) -> str:
    """Write ``summary.md`` in ``sweep_dir``: one line per job (its overrides, its headline metrics).

    Jobs are the sub-folders holding ``summary.json`` or Hydra's ``.hydra/overrides.yaml`` (a job without
    a summary failed or is still running). Overrides shared by all jobs (≥ 2) are listed once above the table.

    Returns:
        The markdown written.
    """
    sweep_dir = Path(sweep_dir)
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if (p / "summary.json").is_file() or (p / ".hydra").is_dir()),
        key=_job_key,
    )
    rows = []
    for job in jobs:
        path = job / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else None
        rows.append((job.name, _job_overrides(job, summary or {}), summary))
    common = set.intersection(*(set(o) for _, o, _ in rows)) if len(rows) > 1 else set()
    names = list(dict.fromkeys(k for _, _, s in rows if s for k in s.get("metrics") or {}))
    lines = [f"# Sweep {sweep_dir.name}", ""]
    if common:
        shared = [o for o in rows[0][1] if o in common]
        lines += ["Every job: " + " ".join(f"`{o}`" for o in shared), ""]
    lines += ["| job | overrides | " + " | ".join([*names, "time"]) + " |"]
    lines += ["| " + " | ".join(["---"] * (len(names) + 3)) + " |"]
    for name, overrides, summary in rows:
        own = " ".join(f"`{o}`" for o in overrides if o not in common) or "—"
        if summary is None:
            cells = ["no summary.json (failed or running)"] + [""] * len(names)
        else:
            m, e = summary.get("metrics") or {}, summary.get("errors") or {}
            cells = [format_estimate(m.get(k), e.get(k)) for k in names]
            cells.append(format_duration(summary.get("wall_time") or 0.0))
        lines.append("| " + " | ".join([name, own, *cells]) + " |")
    text = "\n".join(lines) + "\n"
    (sweep_dir / "summary.md").write_text(text)
    return text


class SweepSummary(Callback):
    """Hydra callback: write the sweep's ``summary.md`` (:func:`multirun_table`) when a ``-m`` run ends.

    Configure under ``hydra.callbacks`` (``_target_: lit_rlhf.run.sweep.SweepSummary``).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            multirun_table(sweep_dir)
            log.info("sweep summary: %s", sweep_dir / "summary.md")
