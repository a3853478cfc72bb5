"""The run's trainer is built and checked before any work: a strategy, accelerator or precision that cannot
run the task is refused in seconds, not after the SFT and reward-model stages have trained.

Which strategy runs which task (docs/scaling.md):

* ``ddp``, ``model_parallel`` (FSDP2): every task, tested on CPU against one process;
* ``fsdp`` (FSDP1, GPU only) and ``deepspeed`` / ``deepspeed_zero3`` (CUDA and the deepspeed package):
  ``sft`` and ``reward_model`` only. The policy tasks are refused until a GPU run proves them: FSDP1 wraps
  the whole LightningModule, whose rollouts call the wrapped models' ``generate``; Lightning's DeepSpeed
  strategy takes one optimizer (PPO has two) and its ZeRO-3 partitioned weights need every rank in each
  forward, which no test here can exercise without CUDA.
"""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from lit_rlhf.run.stages import POLICY_TASKS

REFUSED = {  # strategy kind → why the policy tasks do not run under it here
    "fsdp": "FSDP1 wraps the whole module and its rollouts' generate calls are not collective; "
    "use trainer=model_parallel (FSDP2) or trainer=ddp",
    "deepspeed": "Lightning's DeepSpeed strategy takes one optimizer (PPO has two) and no GPU run has "
    "proven its sharded rollouts; use trainer=model_parallel (FSDP2) or trainer=ddp",
}


def strategy_kind(strategy: Any) -> str:
    """``fsdp`` | ``deepspeed`` | ``model_parallel`` | ``other`` for a ``trainer.strategy`` value: a config
    with a ``_target_`` or one of Lightning's registered names (``fsdp``, ``deepspeed_stage_3`` …)."""
    if isinstance(strategy, (dict, DictConfig)):
        target = str(strategy.get("_target_", ""))
        name = target.rsplit(".", 1)[-1]
        if name in ("FSDP2Strategy", "ModelParallelStrategy"):
            return "model_parallel"
        if name == "FSDPStrategy":
            return "fsdp"
        if name == "DeepSpeedStrategy":
            return "deepspeed"
        return "other"
    name = str(strategy or "").lower()
    for kind in ("fsdp", "deepspeed"):
        if name.startswith(kind):
            return kind
    return "other"


def trainer_choice(cfg: DictConfig) -> str:
    """How the user selected the trainer, for messages: ``trainer=<name>`` (or the strategy override)."""
    choice = None
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("trainer")
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, str) and strategy_kind(strategy) != "other":
        return f"trainer.strategy={strategy}"
    if choice is None and isinstance(strategy, DictConfig):
        kind = strategy_kind(strategy)
        choice = "deepspeed_zero3" if kind == "deepspeed" and strategy.get("stage") == 3 else kind
    return f"trainer={choice}"


def check_trainer(cfg: DictConfig) -> None:
    """Refuse a trainer that cannot run ``cfg.task.name`` (one line naming ``trainer=``), then build it
    as configured so that Lightning's own refusals (FSDP on CPU, a GPU accelerator without one, an
    unknown precision) come now, before any stage or data preparation.

    Raises:
        ValueError: a strategy × task pair that is not supported, or lora=… under trainer=model_parallel.
        MisconfigurationException / ImportError (via Hydra's InstantiationException): Lightning's refusal.
    """
    task, kind = cfg.task.name, strategy_kind(cfg.trainer.get("strategy"))
    if task in POLICY_TASKS and kind in REFUSED:
        raise ValueError(f"{trainer_choice(cfg)} does not run task={task}: {REFUSED[kind]}")
    if kind == "model_parallel" and cfg.get("lora"):
        raise ValueError(
            f"{trainer_choice(cfg)} does not run lora=…: adapters over FSDP2 shards are untested; "
            "use trainer=ddp with LoRA"
        )
    if (
        kind == "model_parallel"
        and str(cfg.task.get("module", {}).get("shared_prefix", "auto")).lower() == "true"
    ):
        raise ValueError(
            f"{trainer_choice(cfg)} does not run task.module.shared_prefix=true: how many forwards sharing a "
            "prompt takes depends on each rank's rows, and every forward of a sharded model needs all ranks; "
            "use task.module.shared_prefix=auto (off under sharding)"
        )
    # plugins (checkpoint IO): nothing to check there; callbacks and loggers come with the real trainer
    instantiate(cfg.trainer, callbacks=[], logger=False, plugins=None, enable_progress_bar=False)
