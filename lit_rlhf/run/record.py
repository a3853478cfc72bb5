"""What a run folder was made with (``run.json``) and whether it finished (``done.json``).

A run folder is named after the command's overrides, so the same command finds it again. Before a run
touches a folder that already holds work (``checkpoints/last.ckpt`` or ``done.json``), :func:`check`
compares what the folder was made with against the run about to start: the resolved config (without the
keys that only say where things go), the cached stages it uses (their folder names carry the hash of
their config) and the lit_rlhf source. Equal: an unfinished run resumes from ``last.ckpt`` and a
finished one is not run again (a re-run ``-m`` sweep finishes only the jobs that did not finish).
Different: an error that names what differs and the ways out — another folder, or ``resume=force``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import Container, DictConfig, OmegaConf

from lit_rlhf.run.stages import POLICY_TASKS, prepare_data, relocate, reward_model_init, stage_folder
from lit_rlhf.utils.io import atomic_write

log = logging.getLogger("lit_rlhf")
RECORD, DONE = "run.json", "done.json"
RESUME_MODES = ("auto", "force")
# keys that say where files go or how a run is shown, not what it computes (and that do not name the
# run folder either: conf/hydra/default.yaml excludes them from override_dirname)
VOLATILE = (
    "hydra",
    "paths.output_dir",
    "paths.root_dir",
    "paths.cache_dir",
    "ckpt_path",
    "resume",
    "trainer.enable_progress_bar",
)
SHOWN = 5  # differences listed in the error; the rest are counted


class Finished(NamedTuple):
    """A run that completed: the name of its ``optimized_metric`` and the value it returned."""

    metric: str | None
    value: float | None


# ------------------------------------------------------------------ what a run is made with
@functools.cache
def code_version() -> dict[str, str | None]:
    """The lit_rlhf code this process runs.

    ``source``: SHA-256 of every ``lit_rlhf/**/*.py`` (path and bytes) — what :func:`check` compares, since
    ``git describe --dirty`` cannot tell two dirty trees apart; ``version``: the installed package's;
    ``git``: ``git describe --always --dirty`` of the checkout, if the package sits in one (for people).
    """
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        version = importlib.metadata.version("lit_rlhf")
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        out = subprocess.run(
            ["git", "-C", str(package), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        git = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"source": digest.hexdigest(), "version": version, "git": git}


def _drop(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return
    tree.pop(last, None)


def config_snapshot(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without :data:`VOLATILE` keys; paths under the output, cache and root folders
    are written ``${paths.output_dir}/…`` etc., so moving the cache or the tree changes nothing."""
    resolved: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":
            continue
        value = cfg[key]
        resolved[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
    paths = resolved.get("paths") or {}
    roots = [
        (str(paths[k]), f"${{paths.{k}}}") for k in ("output_dir", "cache_dir", "root_dir") if paths.get(k)
    ]
    roots.sort(key=lambda r: len(r[0]), reverse=True)  # the most specific folder first
    for dotted in VOLATILE:
        _drop(resolved, dotted)
    return json.loads(json.dumps(relocate(resolved, roots), default=str))  # as it reads back from JSON


def stage_folders(cfg: DictConfig) -> dict[str, str]:
    """The cached stages the run uses and is not given a folder for: key → folder name ``<tag>-<hash>``.

    The names are those :func:`lit_rlhf.run.stages.ensure_stage` builds into,
    computed without building anything; keys are the stage tags (``sft``, ``reward_model-helpful``), an
    ensemble member's with its seed (``reward_model-helpful[seed=1]``). Needs Hydra's compose (inside
    ``train.py`` or ``hydra.initialize``); generates the embedded world first if a stage needs it.
    """

    found: dict[str, str] = {}

    @functools.cache
    def folder(task: str, extra: tuple[str, ...] = (), key_suffix: str = "") -> Path:
        prepare_data(cfg)  # the embedded world's parameters enter the hash (idempotent)
        tag, _, path = stage_folder(cfg, task, extra, sft=lambda: folder("sft") / "model")
        found[tag + key_suffix] = path.name
        return path

    if cfg.task.name in POLICY_TASKS:
        if not cfg.task.get("policy_path"):
            folder("sft")
        for name, spec in cfg.reward.items():
            ensemble = spec.get("ensemble")
            if ensemble and not ensemble.get("paths") and not spec.get("path"):
                for s in ensemble.seeds:
                    folder("reward_model", (f"reward={name}", f"seed={s}"), f"[seed={s}]")
            elif not spec.get("path") and not ensemble:
                folder("reward_model", (f"reward={name}",))
    elif cfg.task.name == "reward_model":
        reward_model_init(cfg, sft=lambda: folder("sft") / "model")
    return dict(sorted(found.items()))


def make_record(
    cfg: DictConfig, code: Mapping[str, Any], stages: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``run.json``'s content: the :func:`config_snapshot`, the stage folders and the code version."""
    return {
        "config": config_snapshot(cfg),
        "stages": dict(stages or {}),
        "code": dict(code),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ------------------------------------------------------------------ files
def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically (a kill leaves the old file or the new one, never half of one)."""
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); delete it or the run folder") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; delete it or the run folder")
    return data


def record(
    run_dir: str | Path,
    cfg: DictConfig,
    code_version: Mapping[str, Any],
    stages: Mapping[str, str] | None = None,
    forced: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``<run_dir>/run.json`` (:func:`make_record`); ``forced``: the differences ``resume=force``
    accepted, kept in the record. Returns what was written."""
    data = make_record(cfg, code_version, stages)
    if forced:
        data["forced"] = forced
    _write_json(Path(run_dir) / RECORD, data)
    return data


def mark_done(run_dir: str | Path, metric: str | None, value: float | None) -> None:
    """Write ``<run_dir>/done.json``: the run completed and returned ``value`` for ``metric``."""
    done = {"optimized_metric": metric, "value": value, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_json(Path(run_dir) / DONE, done)


def finished(run_dir: str | Path) -> Finished | None:
    """The run in ``run_dir`` if it completed (``done.json``), else None."""
    done = _read_json(Path(run_dir) / DONE)
    if done is None:
        return None
    value = done.get("value")
    return Finished(done.get("optimized_metric"), float(value) if value is not None else None)


def has_work(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds something a run would continue from or return: a checkpoint or done.json."""
    run_dir = Path(run_dir)
    return (run_dir / "checkpoints" / "last.ckpt").is_file() or (run_dir / DONE).is_file()


# ------------------------------------------------------------------ comparison
_ABSENT = object()


def _diff(a: Any, b: Any, key: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) of each difference, descending into keys that are mappings on both sides."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _diff(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{key}.{k}" if key else str(k))
        ]
    return [] if a == b else [(key, a, b)]


def _show(value: Any, width: int = 60) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _code_name(code: Mapping[str, Any]) -> str:
    return f"{str(code.get('source'))[:12]} (git {code.get('git') or 'n/a'}, version {code.get('version')})"


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two records, one line each: ``key: old → new``.

    Config keys first (dotted, sorted; a key holding a mapping on both sides is compared key by key), then
    stage folders (``stages.<tag>``), then the code (compared by its ``source`` hash only).
    """
    lines = []
    for section in ("config", "stages"):
        prefix = "stages" if section == "stages" else ""
        for key, was, now in _diff(old.get(section) or {}, new.get(section) or {}, prefix):
            lines.append(f"{key}: {_show(was)} → {_show(now)}")
    code_a, code_b = old.get("code") or {}, new.get("code") or {}
    if code_a.get("source") != code_b.get("source"):
        lines.append(f"code: lit_rlhf source {_code_name(code_a)} → {_code_name(code_b)}")
    return lines


def mismatch_message(run_dir: str | Path, diff: list[str]) -> str:
    """The error for a run folder made with another config or code: what differs, and the ways out."""
    shown = [f"  {line}" for line in diff[:SHOWN]]
    if len(diff) > SHOWN:
        shown.append(f"  … and {len(diff) - SHOWN} more (compare {Path(run_dir) / RECORD})")
    return "\n".join(
        [
            f"{run_dir} holds a run made with another config or code, so it is neither resumed nor reused:",
            *shown,
            f"To start fresh: delete or rename {run_dir} (or pick another folder: hydra.run.dir=…, for a "
            "sweep hydra.sweep.dir=…).",
            "To continue it anyway with the current config and code: add resume=force.",
        ]
    )


def check(
    run_dir: str | Path,
    cfg: DictConfig,
    code_version: Mapping[str, Any],
    force: bool = False,
    stages: Mapping[str, str] | None = None,
) -> list[str]:
    """Refuse to continue a run folder made with another config or code.

    Only a folder with work in it (``checkpoints/last.ckpt`` or ``done.json``) is checked; it must hold a
    ``run.json`` equal to what this run would record (:func:`differences`).

    Args:
        run_dir: The run's folder (``paths.output_dir``).
        cfg: The run's config.
        code_version: :func:`code_version`.
        force: ``resume=force``: log the differences instead of raising.
        stages: :func:`stage_folders` of ``cfg``.

    Returns:
        The differences (empty when the folder matches or has no work in it).

    Raises:
        ValueError: the folder was made with another config or code (or has no ``run.json``), naming the
            first differences and how to start fresh or force it.
    """
    run_dir = Path(run_dir)
    if not has_work(run_dir):
        return []
    old = _read_json(run_dir / RECORD)
    if old is None:
        diff = [f"{RECORD}: absent (made before lit_rlhf recorded runs?); what it was made with is unknown"]
    else:
        diff = differences(old, make_record(cfg, code_version, stages))
    if diff and not force:
        raise ValueError(mismatch_message(run_dir, diff))
    if diff:
        log.warning("resume=force: continuing %s although %s", run_dir, "; ".join(diff[:SHOWN]))
    return diff


# ------------------------------------------------------------------ the run's two calls
def resume_mode(cfg: DictConfig) -> str:
    """The ``resume`` key: ``auto`` (the default) or ``force``."""
    mode = str(cfg.get("resume") or "auto")
    if mode not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {mode!r}")
    return mode


def begin_run(cfg: DictConfig) -> Finished | None:
    """Before a run starts: check its folder (:func:`check`), record a new one, and say if it is done.

    Returns:
        The stored result if the folder holds this run finished (do not run it again), else None: a fresh
        folder (recorded now) or an unfinished run with the same record (it resumes from ``last.ckpt``).
    """
    force = resume_mode(cfg) == "force"
    run_dir = Path(cfg.paths.output_dir)
    code, stages = code_version(), stage_folders(cfg)
    forced = check(run_dir, cfg, code, force=force, stages=stages)
    rank_zero = rank_zero_only.rank == 0  # under DDP the ranks > 0 only read
    if rank_zero and (forced or not (run_dir / RECORD).is_file() or not has_work(run_dir)):
        record(run_dir, cfg, code, stages, forced=forced)
    done = finished(run_dir)
    if done is not None:
        log.info(
            "%s: finished before with %s = %s; not run again (delete the folder to run it again)",
            run_dir,
            done.metric,
            done.value,
        )
    elif has_work(run_dir) and not forced:
        log.info("%s: same config, stages and code as its run.json; continuing it", run_dir)
    return done


def end_run(cfg: DictConfig, value: float | None) -> None:
    """After a run completed: mark its folder done with the value it returns (rank 0 writes)."""
    if rank_zero_only.rank == 0:
        mark_done(cfg.paths.output_dir, cfg.get("optimized_metric"), value)
