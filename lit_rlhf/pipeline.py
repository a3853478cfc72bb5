"""Wiring of the three tasks (``task=sft | reward_model | ppo``) from a composed Hydra config.

Only instantiation and ordering live here; every computation is in the modules it instantiates. A PPO run
on the embedded default builds what it is missing — the SFT policy and each reward model — by composing
the same config with ``task=sft`` / ``task=reward_model reward=<name>`` (plus the run's ``data``, ``model``
and ``paths`` overrides and ``pipeline.<stage>``), and caches the result under
``paths.cache_dir/stages/<task>-<hash of that config>``, so a second run and every multirun job reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lit_rlhf import run_record
from lit_rlhf.callbacks.progress import iteration_progress_bar
from lit_rlhf.models import Pretrained, ValueModel, lora, quiet_transformers
from lit_rlhf.reporting import finish
from lit_rlhf.summary import timed

log = logging.getLogger("lit_rlhf")
# override groups a PPO run passes on to the stages it builds (the trainer on one device: see ensure_stage)
CARRIED = ("data", "model", "paths", "trainer")
MODEL_SETTINGS = ("trust_remote_code", "dtype", "attn_implementation", "gradient_checkpointing")
ROLES = ("policy", "reference", "critic", "reward")
POLICY_TASKS = ("ppo", "grpo", "rloo", "reinforce_pp")  # policy optimisation: conf/task/<name>.yaml
TASKS = ("sft", "reward_model", *POLICY_TASKS)
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ------------------------------------------------------------------ helpers
def prepare_data(cfg: DictConfig) -> None:
    """Generate the embedded world if the data group asks for it (idempotent)."""
    if cfg.data.get("world"):
        instantiate(cfg.data.world)


def tokenizer_default(cfg: DictConfig) -> str | None:
    return cfg.data.get("tokenizer")


def make_trainer(cfg: DictConfig, extra_callbacks: dict | None = None) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks += [instantiate(c) for c in (extra_callbacks or {}).values() if c and "_target_" in c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    if cfg.task.name in POLICY_TASKS and cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(iteration_progress_bar())  # "ppo iteration 37/120", not "Epoch 0/0"
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def with_lora(cfg: DictConfig, model: Any, head: str) -> Any:
    """``model`` with LoRA adapters if the ``lora`` group is selected (``lora=default``), else ``model``."""
    return instantiate(cfg.lora).apply(model, head) if cfg.get("lora") else model


def resume_path(cfg: DictConfig) -> str | None:
    """``ckpt_path`` if given, else ``<run dir>/checkpoints/last.ckpt`` if it exists (auto-resume)."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={path} does not exist")
        return str(path)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    return None


def role_spec(cfg: DictConfig, role: str, path: str | Path) -> Pretrained:
    """The model folder ``path`` with the ``model`` group's settings (dtype, attention, checkpointing,
    remote code) and the task's per-role overrides ``task.roles.<role>``: one spec per role."""
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; expected one of {ROLES}")
    settings = {k: cfg.model.get(k) for k in MODEL_SETTINGS if cfg.model.get(k) is not None}
    roles = cfg.task.get("roles") or {}
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"task.roles has unknown roles {unknown}; expected some of {list(ROLES)}")
    for key, value in dict(roles.get(role) or {}).items():
        if key not in MODEL_SETTINGS:
            raise ValueError(f"task.roles.{role}.{key}: unknown setting; expected one of {MODEL_SETTINGS}")
        if value is not None:
            settings[key] = value
    return Pretrained(str(path), **settings)


def full_state_dict(trainer: L.Trainer, prefix: str) -> dict | None:
    """Under a sharded strategy (FSDP, DeepSpeed ZeRO-3) the whole weights of ``<prefix>.*`` gathered from
    every rank (every rank must call this); ``None`` when each rank holds the full model anyway."""
    name = type(trainer.strategy).__name__
    if "FSDP" not in name and "DeepSpeed" not in name:
        return None
    state = trainer.strategy.lightning_module_state_dict()
    return {k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")}


def save_model(model: Any, tokenizer: Any, out: Path, state_dict: dict | None = None) -> Path:
    """``save_pretrained`` model and tokenizer into ``out`` atomically (a kill never leaves half a folder).

    A LoRA model is saved merged (adapters folded into the weights), so plain transformers loads it.
    ``state_dict``: the full weights gathered by :func:`full_state_dict` under a sharded strategy (a rank's
    own module holds only its shard there).
    """
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if state_dict is not None and not lora.is_lora(model):
        model.save_pretrained(tmp, state_dict=state_dict)
    else:
        lora.merged(model).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def metric(trainer: L.Trainer, name: str | None) -> float | None:
    value = trainer.callback_metrics.get(name) if name else None
    return float(value) if value is not None else None


# ------------------------------------------------------------------ tasks
def run_sft(cfg: DictConfig) -> float | None:
    prepare_data(cfg)
    spec = instantiate(cfg.model)
    tok = spec.load_tokenizer(tokenizer_default(cfg))
    model = with_lora(cfg, spec.build("causal_lm", tok), "causal_lm")
    dm = instantiate(cfg.task.datamodule, tokenizer=tok)
    module = instantiate(cfg.task.module, model=model, optimizer=instantiate(cfg.optimizer))
    trainer = make_trainer(cfg)
    ckpt, times, extra = resume_path(cfg), {}, {}
    with timed(times, "sft"):
        if ckpt is None:  # held-out loss before training, for comparison
            trainer.validate(module, datamodule=dm, verbose=False)
            initial = metric(trainer, "val/loss")
            if initial is not None:
                extra["val/loss_initial"] = initial
            log.info("sft: initial val/loss %.3f", initial or float("nan"))
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    state = full_state_dict(trainer, "model")
    if trainer.is_global_zero:
        out = save_model(module.model, tok, Path(cfg.paths.output_dir) / "model", state)
        log.info("sft: val/loss %.3f; policy saved to %s", metric(trainer, "val/loss") or float("nan"), out)
        base = cfg.model.get("name_or_path") or "lit_rlhf tiny GPT-2 (random init)"
        finish(cfg, trainer, "sft", out, str(base), [str(cfg.task.datamodule.train_path)], None, times, extra)
    return metric(trainer, cfg.get("optimized_metric"))


def run_reward_model(cfg: DictConfig) -> float | None:
    if len(cfg.reward) != 1:
        raise ValueError(
            f"task=reward_model trains one reward model but the reward group has {list(cfg.reward)}; "
            "pick one, e.g. reward=helpful or reward=harmless"
        )
    ((name, rspec),) = cfg.reward.items()
    prepare_data(cfg)
    init = reward_model_init(cfg)
    if init != "model" and not (Path(init) / "config.json").is_file():
        raise FileNotFoundError(
            f"task.init_from={init}: not a model folder (no config.json). Use auto, sft, model or a folder "
            "written by save_pretrained."
        )
    spec = instantiate(cfg.model) if init == "model" else role_spec(cfg, "reward", init)
    tok = spec.load_tokenizer(tokenizer_default(cfg))
    model = with_lora(cfg, spec.build("reward", tok), "reward")
    dm_cfg = OmegaConf.to_container(cfg.task.datamodule, resolve=True, throw_on_missing=False)
    dm_cfg["path"] = rspec.data
    dm = instantiate(dm_cfg, tokenizer=tok)
    module = instantiate(cfg.task.module, model=model, optimizer=instantiate(cfg.optimizer))
    trainer, times = make_trainer(cfg), {}
    with timed(times, f"reward_model[{name}]"):
        trainer.fit(module, datamodule=dm, ckpt_path=resume_path(cfg), weights_only=True)
    state = full_state_dict(trainer, "model")
    if trainer.is_global_zero:
        out = save_model(module.model, tok, Path(cfg.paths.output_dir) / "model", state)
        log.info(
            "reward_model[%s]: val/rm_acc %.3f; saved to %s",
            name,
            metric(trainer, "val/rm_acc") or float("nan"),
            out,
        )
        base = cfg.model.get("name_or_path") if init == "model" else init
        base = base or "lit_rlhf tiny GPT-2 (random init)"
        n_val = len(dm.val_pairs) if dm.train_pairs is not None else None
        finish(cfg, trainer, "reward_model", out, str(base), [str(rspec.data)], n_val, times)
    return metric(trainer, cfg.get("optimized_metric"))


def reward_model_init(cfg: DictConfig, sft: Callable[[], Path] | None = None) -> str:
    """Where a reward model's weights start (``task.init_from``): ``"model"`` or a model folder.

    ``auto``: the SFT policy when the ``model`` group is a fresh model (the embedded tiny GPT-2) and the data
    has demonstrations (the embedded world), else the ``model`` group's own weights (a pretrained model, or
    a fresh tiny one on user preference data, which has no SFT file); ``sft``: the SFT stage (``sft()``,
    default: this config's, built and cached if missing); ``model``: the ``model`` group as is; any other
    value: a local model folder.
    The scalar head always starts fresh.
    """
    init = str(cfg.task.get("init_from") or "model")
    if init == "auto":
        fresh = str(cfg.model.get("_target_", "")).endswith(".TinyGPT2")
        init = "sft" if fresh and cfg.data.get("world") else "model"
    if init == "sft":
        return str(sft() if sft else ensure_stage(cfg, "sft"))
    return init


def check_same_tokenizer(tok: Any, other: Any, where: str) -> None:
    if tok.get_vocab() != other.get_vocab():
        raise ValueError(
            f"the reward model at {where} uses a different tokenizer than the policy; lit_rlhf scores "
            "rollouts token-for-token, so policy and reward models must share one tokenizer"
        )


def build_critic(cfg: DictConfig, policy_path: Path, rm_paths: dict[str, Path], tok: Any) -> ValueModel:
    """The critic (``task.critic_init``): ``policy`` = the SFT policy's backbone and a new value head;
    ``reward_model`` = the (first) reward model's backbone and score head, as InstructGPT starts it."""
    init = str(cfg.task.get("critic_init") or "policy")
    if init == "policy":
        return role_spec(cfg, "critic", policy_path).build("value", tok)
    if init == "reward_model":
        name, path = next(iter(rm_paths.items()))
        log.info("ppo: critic starts from reward model %s (%s)", name, path)
        return ValueModel.from_reward_model(role_spec(cfg, "critic", path).build("reward", tok))
    raise ValueError(f"task.critic_init must be policy or reward_model, got {init!r}")


def ppo_models(cfg: DictConfig, policy_path: Path, rm_paths: dict[str, Path]) -> dict[str, Any]:
    """Every network a policy task holds, each from its role's spec: ``actor``, ``ref`` (``None`` under LoRA:
    the actor with its adapters off), ``critic`` (only for tasks with a ``critic_init``: PPO),
    ``reward_models`` (name → model), and the ``tokenizer``."""
    policy = role_spec(cfg, "policy", policy_path)
    policy.check_folder("task.policy_path")  # a built stage exists: only a given folder can be missing
    tok = policy.load_tokenizer()
    reward_models = {}
    for name, path in rm_paths.items():
        rm = role_spec(cfg, "reward", path)
        rm.check_reward_model(f"reward.{name}.path")
        check_same_tokenizer(tok, rm.load_tokenizer(), f"reward.{name}.path={path}")
        reward_models[name] = rm.build("reward", tok, trainable=False)
    actor = with_lora(cfg, policy.build("causal_lm", tok), "causal_lm")
    ref = None
    if not lora.is_lora(actor):
        ref = role_spec(cfg, "reference", policy_path).build("causal_lm", tok, trainable=False)
    models = {"actor": actor, "ref": ref, "reward_models": reward_models, "tokenizer": tok}
    if cfg.task.get("critic_init") is not None:  # critic-free algorithms hold no critic in memory
        models["critic"] = build_critic(cfg, policy_path, rm_paths, tok)
    return models


def run_policy(cfg: DictConfig) -> float | None:
    """PPO, GRPO, RLOO or REINFORCE++ (``task=…``): the stages it lacks are built first."""
    prepare_data(cfg)
    times: dict[str, float] = {}
    with timed(times, "sft (stage)"):
        policy_path = cfg.task.policy_path or ensure_stage(cfg, "sft")
    rm_paths = {}
    for name, spec in cfg.reward.items():
        with timed(times, f"reward_model[{name}] (stage)"):
            rm_paths[name] = spec.path or ensure_stage(cfg, "reward_model", [f"reward={name}"])
    models = ppo_models(cfg, Path(policy_path), rm_paths)
    tok = models.pop("tokenizer")
    dm = instantiate(cfg.task.datamodule, tokenizer=tok)
    module = instantiate(cfg.task.module, **models, tokenizer=tok, optimizer=instantiate(cfg.optimizer))
    trainer = make_trainer(cfg, cfg.task.get("callbacks"))
    with timed(times, cfg.task.name):
        trainer.fit(module, datamodule=dm, ckpt_path=resume_path(cfg), weights_only=True)
        if cfg.task.iterations % cfg.task.val_check_interval:  # the last evaluation was not at the end
            trainer.validate(module, datamodule=dm, verbose=False)
    state = full_state_dict(trainer, "actor")
    if trainer.is_global_zero:
        out = save_model(module.actor, tok, Path(cfg.paths.output_dir) / "model", state)
        log.info("%s: policy saved to %s", cfg.task.name, out)
        stages = {"policy": str(policy_path), "reward_models": {k: str(v) for k, v in rm_paths.items()}}
        (Path(cfg.paths.output_dir) / "stages.json").write_text(json.dumps(stages, indent=2) + "\n")
        n_eval = len(dm.val_records) * module.eval_samples_per_prompt  # comparisons per gold win rate
        data = [str(cfg.task.datamodule.train_path)]
        finish(cfg, trainer, "policy", out, str(policy_path), data, n_eval, times, module.start_metrics)
    return metric(trainer, cfg.get("optimized_metric"))


def quiet() -> None:
    """Drop library notices that are expected here and do not concern users."""
    quiet_transformers()
    for pattern in (
        ".*module\\(s\\) in eval mode.*",  # the frozen reference and reward models are in eval on purpose
        ".*ModelCheckpoint with manual optimization.*",  # PPO checkpoints after its update, by design
        ".*does not have many workers.*",  # in-memory token lists need no worker processes
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*is_gradient_checkpointing.*",  # PEFT calls a transformers property deprecated in v5
    ):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def run(cfg: DictConfig) -> float | None:
    """Run the task the config selects; returns ``optimized_metric`` (for sweepers)."""
    quiet()
    if cfg.task.name not in TASKS:
        raise ValueError(f"task.name must be one of {TASKS}, got {cfg.task.name!r}")
    done = run_record.begin_run(cfg)  # checks the run folder against its run.json; records a new one
    if done is not None:  # this run finished before (a re-run sweep skips its finished jobs)
        return done.value
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    runner = {"sft": run_sft, "reward_model": run_reward_model}.get(cfg.task.name, run_policy)
    value = runner(cfg)
    run_record.end_run(cfg, value)
    return value


# ------------------------------------------------------------------ cached stages
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
    sub = compose(config_name="train", overrides=list(overrides))
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


def ensure_stage(cfg: DictConfig, task: str, extra: Sequence[str] = ()) -> Path:
    """The model folder of a stage (``sft`` or ``reward_model``), trained now if not cached yet."""
    sub = stage_config(cfg, task, extra)
    if task == "reward_model":  # an SFT start is THIS config's SFT stage; its folder enters the hash
        with open_dict(sub):
            sub.task.init_from = reward_model_init(sub, sft=lambda: ensure_stage(cfg, "sft"))
    tag = task if task == "sft" else f"{task}-{'-'.join(sub.reward)}"
    out = Path(cfg.paths.cache_dir) / "stages" / f"{tag}-{stage_hash(sub)}"
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
        run(sub)
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"stage {tag} finished without writing {model_dir}")
    return model_dir


# ------------------------------------------------------------------ DDP inside a Hydra multirun
@contextmanager
def one_ddp_job() -> Iterator[None]:
    """Make Lightning's DDP children re-run THIS job of a ``-m`` sweep, then clear the job's DDP state.

    Lightning starts ranks > 0 by re-executing ``sys.argv``; under ``-m`` that would re-run the whole sweep
    into a second sweep folder. Inside a multirun job the command line is replaced by this job's own
    overrides and ``hydra.run.dir`` by the job's folder, so the children join this job and write into it;
    afterwards the process group and DDP environment are cleared so the next job starts its own.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hc, argv = HydraConfig.get(), sys.argv
    sys.argv = [argv[0], *hc.overrides.task]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in DDP_ENV:
            os.environ.pop(key, None)
