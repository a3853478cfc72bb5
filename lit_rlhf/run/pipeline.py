"""Wiring of the three tasks (``task=sft | reward_model | ppo``) from a composed Hydra config.

Only instantiation and ordering live here; every computation is in the modules it instantiates. A PPO run
on the embedded default builds what it is missing — the SFT policy and each reward model — by composing
the same config with ``task=sft`` / ``task=reward_model reward=<name>``, cached (:mod:`lit_rlhf.run.stages`).
A reward-model ensemble (``reward.<name>.ensemble``) is one such stage per member seed
(``reward=<name> seed=<s>``), scored as one reward model (:class:`lit_rlhf.rewards.ensemble.RewardEnsemble`).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lit_rlhf.callbacks.progress import iteration_progress_bar
from lit_rlhf.models import Pretrained, ValueModel, lora, quiet_transformers
from lit_rlhf.models.heads import pooling_of, set_pooling
from lit_rlhf.models.scoring import resolve_pooling
from lit_rlhf.rewards.ensemble import EnsembleSpec, RewardEnsemble
from lit_rlhf.rewards.reward_function import RewardFunction, is_function_spec
from lit_rlhf.run import record as run_record
from lit_rlhf.run import stages
from lit_rlhf.run.reporting import finish
from lit_rlhf.run.stages import POLICY_TASKS, TASKS, prepare_data, stage_config, stage_hash  # noqa: F401 (re-exported)
from lit_rlhf.run.strategies import one_ddp_job  # noqa: F401 (train.py's)
from lit_rlhf.run.summary import timed
from lit_rlhf.run.validate import check_trainer
from lit_rlhf.utils.io import atomic_dir

log = logging.getLogger("lit_rlhf")
MODEL_SETTINGS = ("trust_remote_code", "dtype", "attn_implementation", "gradient_checkpointing")
ROLES = ("policy", "reference", "critic", "reward")


# ------------------------------------------------------------------ helpers
def ensure_stage(cfg: DictConfig, task: str, extra: Sequence[str] = ()) -> Path:
    """The model folder of a stage (``sft`` or ``reward_model``), trained now by :func:`run` if not cached."""
    return stages.build_stage(cfg, task, extra, train=run)


def reward_model_init(cfg: DictConfig, sft: Callable[[], Path] | None = None) -> str:
    """Where a reward model starts (:func:`lit_rlhf.run.stages.reward_model_init`); ``sft`` defaults to
    this config's SFT stage, built and cached if missing."""
    return stages.reward_model_init(cfg, sft=sft or (lambda: ensure_stage(cfg, "sft")))


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
    """Under a sharded strategy (FSDP, FSDP2, DeepSpeed ZeRO-3) the whole weights of ``<prefix>.*`` gathered
    from every rank (every rank must call this); ``None`` when each rank holds the full model anyway."""
    if isinstance(trainer.strategy, ModelParallelStrategy):  # FSDP2: the whole weights, on rank 0
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(getattr(trainer.lightning_module, prefix), options=options)
    name = type(trainer.strategy).__name__
    if "FSDP" not in name and "DeepSpeed" not in name:
        return None
    state = trainer.strategy.lightning_module_state_dict()
    return {k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")}


def untied(model: Any, state_dict: dict) -> dict:
    """``state_dict`` without the tied copies (``lm_head.weight`` of a model whose output embedding is its
    input embedding): a gathered state dict holds both as separate tensors, which ``save_pretrained`` would
    write twice."""
    tied = getattr(model, "_tied_weights_keys", None)
    if not isinstance(tied, dict) or not getattr(model.config, "tie_word_embeddings", False):
        return state_dict
    drop = {k for k, src in tied.items() if k in state_dict and src in state_dict}
    return {k: v for k, v in state_dict.items() if k not in drop}


def save_model(model: Any, tokenizer: Any, out: Path, state_dict: dict | None = None) -> Path:
    """``save_pretrained`` model and tokenizer into ``out`` atomically (a kill never leaves half a folder).

    A LoRA model is saved merged (adapters folded into the weights), so plain transformers loads it.
    ``state_dict``: the full weights gathered by :func:`full_state_dict` under a sharded strategy (a rank's
    own module holds only its shard there).
    """
    with atomic_dir(out) as tmp:
        if state_dict is not None and not lora.is_lora(model):
            model.save_pretrained(tmp, state_dict=untied(model, state_dict))
        else:
            lora.merged(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
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
    if is_function_spec(rspec):
        raise ValueError(
            f"reward.{name} is a reward function (reward.{name}.function): there is no model to train"
        )
    if rspec.get("ensemble"):
        raise ValueError(
            f"reward.{name}.ensemble is set: task=reward_model trains one reward model. A policy run builds "
            f"every member; to train one yourself use task=reward_model reward={name} seed=<s>"
        )
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


def check_same_tokenizer(tok: Any, other: Any, where: str) -> None:
    if tok.get_vocab() != other.get_vocab():
        raise ValueError(
            f"the reward model at {where} uses a different tokenizer than the policy; lit_rlhf scores "
            "rollouts token-for-token, so policy and reward models must share one tokenizer"
        )


RewardPaths = str | Path | list[Path]  # one reward model's folder, or an ensemble's member folders


def reward_model_paths(cfg: DictConfig, name: str) -> RewardPaths:
    """Where reward model ``name`` is: ``reward.<name>.path``, or its cached stage (built if missing); for an
    ensemble (``reward.<name>.ensemble``) the members' folders: ``ensemble.paths``, or one stage per seed,
    ``reward=<name> seed=<s>`` (seed 0 is the property's usual reward-model stage)."""
    spec = cfg.reward[name]
    if not spec.get("ensemble"):
        return spec.path or ensure_stage(cfg, "reward_model", [f"reward={name}"])
    ens = EnsembleSpec.from_config(name, spec.ensemble)
    if spec.get("path"):
        raise ValueError(
            f"reward.{name}.path and reward.{name}.ensemble are both set; give the members' folders as "
            f"reward.{name}.ensemble.paths=[…] (or set reward.{name}.ensemble=null)"
        )
    if ens.paths is not None:
        return [Path(p) for p in ens.paths]
    return [ensure_stage(cfg, "reward_model", [f"reward={name}", f"seed={s}"]) for s in ens.seeds]


def build_reward_model(
    cfg: DictConfig, name: str, path: RewardPaths, tok: Any, key: str | None = None
) -> Any:
    """The frozen reward model ``name`` at ``path`` (sharing ``tok``), or the ensemble of the member
    folders ``path`` with ``reward.<name>.ensemble``'s aggregate. ``key``: the config key errors name."""
    if isinstance(path, list):
        ens = EnsembleSpec.from_config(name, cfg.reward[name].ensemble)
        members = [
            build_reward_model(cfg, name, p, tok, f"reward.{name}.ensemble.paths[{i}]")
            for i, p in enumerate(path)
        ]
        log.info("reward %s: ensemble of %d (%s, k=%s): %s", name, len(members), ens.aggregate, ens.k, path)
        poolings = {pooling_of(m) for m in members}
        if len(poolings) > 1:
            raise ValueError(
                f"reward.{name}.ensemble: the members are read at different positions ({sorted(poolings)}); "
                f"set reward.{name}.pooling=eos or last_non_pad"
            )
        return set_pooling(RewardEnsemble(members, ens.aggregate, ens.k), *poolings.pop())
    key = key or f"reward.{name}.path"
    rm = role_spec(cfg, "reward", path)
    rm.check_reward_model(key)
    check_same_tokenizer(tok, rm.load_tokenizer(), f"{key}={path}")
    pooling = resolve_pooling(cfg.reward[name].get("pooling"), path, f"reward.{name}.pooling")
    model = rm.build("reward", tok, trainable=False)
    log.info(
        "reward %s: %s read at %s", name, path, "the EOS" if pooling == "eos" else "the last non-pad token"
    )
    return set_pooling(model, pooling, model.config.pad_token_id)


def build_critic(
    cfg: DictConfig, policy_path: Path, rm_paths: dict[str, RewardPaths], tok: Any
) -> ValueModel:
    """The critic (``task.critic_init``): ``policy`` = the SFT policy's backbone and a new value head;
    ``reward_model`` = the (first) reward model's backbone and score head, as InstructGPT starts it (an
    ensemble's first member)."""
    init = str(cfg.task.get("critic_init") or "policy")
    if init == "policy":
        return role_spec(cfg, "critic", policy_path).build("value", tok)
    if init == "reward_model":
        name, path = next(iter(rm_paths.items()))
        path = path[0] if isinstance(path, list) else path
        log.info("ppo: critic starts from reward model %s (%s)", name, path)
        return ValueModel.from_reward_model(role_spec(cfg, "critic", path).build("reward", tok))
    raise ValueError(f"task.critic_init must be policy or reward_model, got {init!r}")


def ppo_models(cfg: DictConfig, policy_path: Path, rm_paths: dict[str, RewardPaths]) -> dict[str, Any]:
    """Every network a policy task holds, each from its role's spec: ``actor``, ``ref`` (``None`` under LoRA:
    the actor with its adapters off), ``critic`` (only for tasks with a ``critic_init``: PPO),
    ``reward_models`` (name → model), and the ``tokenizer``."""
    policy = role_spec(cfg, "policy", policy_path)
    policy.check_folder("task.policy_path")  # a built stage exists: only a given folder can be missing
    tok = policy.load_tokenizer()
    reward_models = {name: build_reward_model(cfg, name, path, tok) for name, path in rm_paths.items()}
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
    # the sampling engine first: generation=vllm without vLLM stops here, before any stage is built
    generation = instantiate(cfg.generation) if cfg.get("generation") else None
    prepare_data(cfg)
    times: dict[str, float] = {}
    with timed(times, "sft (stage)"):
        policy_path = cfg.task.policy_path or ensure_stage(cfg, "sft")
    functions = {n: RewardFunction.from_config(n, r) for n, r in cfg.reward.items() if is_function_spec(r)}
    rm_paths = {}
    for name in [n for n in cfg.reward if n not in functions]:  # reward models (functions need no stage)
        with timed(times, f"reward_model[{name}] (stage)"):
            rm_paths[name] = reward_model_paths(cfg, name)
    models = ppo_models(cfg, Path(policy_path), rm_paths)
    tok = models.pop("tokenizer")
    dm = instantiate(cfg.task.datamodule, tokenizer=tok)
    module = instantiate(
        cfg.task.module,
        **models,
        reward_functions=functions,
        tokenizer=tok,
        optimizer=instantiate(cfg.optimizer),
        generation=generation,
    )
    trainer = make_trainer(cfg, cfg.task.get("callbacks"))
    with timed(times, cfg.task.name):
        trainer.fit(module, datamodule=dm, ckpt_path=resume_path(cfg), weights_only=True)
        if cfg.task.iterations % cfg.task.val_check_interval:  # the last evaluation was not at the end
            trainer.validate(module, datamodule=dm, verbose=False)
    state = full_state_dict(trainer, "actor")
    if trainer.is_global_zero:
        out = save_model(module.actor, tok, Path(cfg.paths.output_dir) / "model", state)
        log.info("%s: policy saved to %s", cfg.task.name, out)
        rms = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in rm_paths.items()}
        stages = {"policy": str(policy_path), "reward_models": rms}
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
    check_trainer(cfg)  # before any work: a strategy or accelerator that cannot run is refused in seconds
    stages.own_data(cfg)  # data.path on the default data=world: the user's data
    done = run_record.begin_run(cfg)  # checks the run folder against its run.json; records a new one
    if done is not None:  # this run finished before (a re-run sweep skips its finished jobs)
        return done.value
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    runner = {"sft": run_sft, "reward_model": run_reward_model}.get(cfg.task.name, run_policy)
    value = runner(cfg)
    run_record.end_run(cfg, value)
    return value
