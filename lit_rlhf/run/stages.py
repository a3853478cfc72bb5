"""Cached stages: the SFT policy and reward models a policy run builds when it is not given them.

A stage is the run's config composed again with ``task=sft`` / ``task=reward_model reward=<name>`` (plus the
run's ``data``, ``model``, ``paths`` and ``trainer`` overrides and ``pipeline.<stage>``); its result is cached
under ``paths.cache_dir/stages/<task>-<hash of that config>``, built once under a file lock, so a second
run and every multirun job reuse it. :func:`stage_folder` names a stage without building it
(:func:`lit_rlhf.run.record.stage_folders` records those names in ``run.json``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("lit_rlhf")
# override groups a policy run passes on to the stages it builds (the trainer on one device: build_stage)
CARRIED = ("data", "model", "paths", "trainer")
POLICY_TASKS = ("ppo", "grpo", "rloo", "reinforce_pp")  # policy optimisation: conf/task/<name>.yaml
TASKS = ("sft", "reward_model", *POLICY_TASKS)
Train = Callable[[DictConfig], object]  # how a stage is trained: lit_rlhf.run.pipeline.run


OWN_DATA_KEYS = ("path", "val_path", "split", "subset", "revision", "columns", "chat_template")


def own_data(cfg: DictConfig, say: bool = True) -> DictConfig:
    """``data.path`` set on the default ``data=world`` means the user's data, read as ``data=jsonl`` reads it
    (``python train.py task=reward_model data.path=FOLDER``): ``cfg.data`` becomes that group with the
    user's ``data.*`` source keys. No-op otherwise; returns ``cfg`` (changed in place); ``say``: log it."""
    if not (cfg.data.get("world") and cfg.data.get("path")):
        return cfg
    mine = OmegaConf.to_container(cfg.data, resolve=False)
    own = compose(config_name="train", overrides=["data=jsonl", "data.path=_"]).data
    with open_dict(cfg):
        cfg.data = OmegaConf.merge(own, {k: mine[k] for k in OWN_DATA_KEYS if k in mine})
    if say:
        log.info("data.path=%s: training on it instead of the embedded world (as data=jsonl)", cfg.data.path)
    return cfg


def prepare_data(cfg: DictConfig) -> None:
    """Generate the embedded world if the data group asks for it (idempotent)."""
    if cfg.data.get("world"):
        instantiate(cfg.data.world)


def relocate(tree: Any, roots: list[tuple[str, str]]) -> Any:
    """``tree`` with each string under one of ``roots`` (path, placeholder) written relative to it."""
    if isinstance(tree, dict):
        return {k: relocate(v, roots) for k, v in tree.items()}
    if isinstance(tree, list):
        return [relocate(v, roots) for v in tree]
    if isinstance(tree, str):
        for path, placeholder in roots:
            if tree == path or tree.startswith(path.rstrip("/") + "/"):
                return placeholder + tree[len(path.rstrip("/")) :]
    return tree


def reward_model_init(cfg: DictConfig, sft: Callable[[], Path]) -> str:
    """Where a reward model's weights start (``task.init_from``): ``"model"`` or a model folder.

    ``auto``: the SFT policy when the ``model`` group is a fresh model (the embedded tiny GPT-2) and the data
    has demonstrations (the embedded world), else the ``model`` group's own weights (a pretrained model, or
    a fresh tiny one on user preference data, which has no SFT file); ``sft``: the SFT stage (``sft()``,
    e.g. this config's, built and cached if missing); ``model``: the ``model`` group as is; any other
    value: a local model folder.
    The scalar head always starts fresh.
    """
    init = str(cfg.task.get("init_from") or "model")
    if init == "auto":
        fresh = str(cfg.model.get("_target_", "")).endswith(".TinyGPT2")
        init = "sft" if fresh and cfg.data.get("world") else "model"
    if init == "sft":
        return str(sft())
    return init


def carried_overrides() -> list[str]:
    """The command line's overrides of ``data``, ``model`` and ``paths`` (passed on to built stages)."""
    if not HydraConfig.initialized():
        return []
    keep = []
    for o in HydraConfig.get().overrides.task:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0].split("@")[0] in CARRIED:
            keep.append(o)
    return keep


def stage_config(cfg: DictConfig, task: str, extra: Sequence[str] = ()) -> DictConfig:
    overrides = [*carried_overrides(), f"task={task}", *extra, *cfg.pipeline.get(task, [])]
    sub = own_data(compose(config_name="train", overrides=list(overrides)), say=False)
    with open_dict(sub):
        sub.stage_overrides = list(overrides)  # what its model card records
        sub.paths.cache_dir = cfg.paths.cache_dir
        sub.paths.root_dir = cfg.paths.root_dir
    return sub


def stage_hash(sub: DictConfig) -> str:
    """Hash of what a stage's result depends on (task, model, data, optimizer, seed; reward for RMs)."""
    with open_dict(sub):
        sub.paths.output_dir = "."  # the stage's own folder is named by this hash
    resolved = OmegaConf.to_container(sub, resolve=True)
    # paths inside the cache / root folders as placeholders: moving the cache (or the checkout, or giving it
    # as an absolute path) does not change what a stage computes, so it must not rebuild it
    folders = [(str(sub.paths[k]), f"${{paths.{k}}}") for k in ("cache_dir", "root_dir") if sub.paths.get(k)]
    resolved = relocate(resolved, sorted(folders, key=lambda r: len(r[0]), reverse=True))
    keys = ["task", "model", "data", "optimizer", "seed"] + (
        ["reward"] if sub.task.name == "reward_model" else []
    )
    parts = {k: resolved.get(k) for k in keys}
    parts["precision"] = resolved.get("trainer", {}).get("precision")
    world = Path(str(sub.data.world.out_dir)) / "world.json" if sub.data.get("world") else None
    if world is not None and world.is_file():  # a regenerated world (new version) invalidates its stages
        parts["world"] = json.loads(world.read_text()).get("params")
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stage_folder(
    cfg: DictConfig, task: str, extra: Sequence[str], sft: Callable[[], Path]
) -> tuple[str, DictConfig, Path]:
    """A stage's tag (``sft``, ``reward_model-helpful``), composed config and cache folder
    ``paths.cache_dir/stages/<tag>-<hash>``, computed without building anything but, for a reward model
    that starts from the SFT policy, ``sft()`` (e.g. :func:`build_stage` of the SFT stage)."""
    sub = stage_config(cfg, task, extra)
    if task == "reward_model":  # an SFT start is THIS config's SFT stage; its folder enters the hash
        with open_dict(sub):
            sub.task.init_from = reward_model_init(sub, sft=sft)
    tag = task if task == "sft" else f"{task}-{'-'.join(sub.reward)}"
    return tag, sub, Path(cfg.paths.cache_dir) / "stages" / f"{tag}-{stage_hash(sub)}"


def build_stage(cfg: DictConfig, task: str, extra: Sequence[str], train: Train) -> Path:
    """The model folder of a stage (``sft`` or ``reward_model``), trained now by ``train`` (a run of the
    stage's own config: :func:`lit_rlhf.run.pipeline.run`) if not cached yet."""
    tag, sub, out = stage_folder(cfg, task, extra, sft=lambda: build_stage(cfg, "sft", (), train))
    model_dir = out / "model"
    with file_lock(out.with_suffix(".lock")):
        if (model_dir / "config.json").is_file():
            log.info("stage %s: cached at %s", tag, model_dir)
            return model_dir
        log.info("stage %s: not cached; training it into %s", tag, out)
        with open_dict(sub):
            sub.paths.output_dir = str(out)
            sub.hydra = None  # not needed below, and it would not resolve outside the main job
            # the run's trainer (accelerator, precision) on ONE device: a stage built inside a multi-process
            # run would have its DDP children re-run the whole command
            sub.trainer.devices, sub.trainer.num_nodes, sub.trainer.strategy = 1, 1, "auto"
        train(sub)
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"stage {tag} finished without writing {model_dir}")
    return model_dir
