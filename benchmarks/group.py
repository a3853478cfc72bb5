"""GRPO and RLOO in the benchmark: one plan per task, and how each side is configured to carry it out.

Stdlib only (both venvs import it). The lit_rlhf side runs ``lit_rlhf.tasks.grpo.GRPOModule`` /
``lit_rlhf.tasks.rloo.RLOOModule`` with the loss settings of ``conf/task/grpo.yaml`` / ``rloo.yaml``
(:data:`LIT_LOSS`; ``tests/test_benchmarks.py`` compares them with the YAML), the TRL side TRL 1.16's
``GRPOTrainer`` / ``RLOOTrainer`` with the options that do the same work (:func:`trl_group_config`):

* one iteration = ``prompts`` prompts × ``group_size`` samples generated in one batch, then ``epochs``
  passes of ``minibatches`` optimizer steps over those rollouts. TRL counts completions, not prompts:
  ``per_device_train_batch_size`` = rollouts / minibatches, ``steps_per_generation`` = minibatches (so its
  generation batch is all the iteration's rollouts) and ``num_iterations`` = epochs;
* the same β (``kl_coef``) and clip ε, no reward scaling or clipping beyond the algorithm's, gradient
  clipping at 1.0 (lit_rlhf's default, TRL's too), no gradient checkpointing, fp32, no dropout, no vLLM,
  no logging in the timed window (``logging_steps`` past the last step), no evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

from common import Settings

GROUP_TASKS = ("grpo", "rloo")
CLIP_EPS = 0.2  # conf/task/base/policy.yaml's clip_eps; TRL's epsilon default
MAX_GRAD_NORM = 1.0  # conf/task/base/policy.yaml's max_grad_norm; transformers' default
# the loss settings of conf/task/<task>.yaml (GRPOModule / RLOOModule keywords)
LIT_LOSS: dict[str, dict] = {
    "grpo": {"loss_agg": "seq_mean_token_mean", "scale_rewards": True, "kl_in_loss": True},
    "rloo": {"loss_agg": "token_mean", "kl_in_loss": False},
}
# lit_rlhf's loss_agg → TRL GRPOConfig.loss_type with the same normalisation (lit_rlhf.rlhf.estimators)
TRL_LOSS_TYPE = {"token_mean": "bnpo", "seq_mean_token_mean": "grpo", "seq_mean_token_sum_norm": "dr_grpo"}


@dataclass(frozen=True)
class GroupPlan:
    """What one GRPO / RLOO run does, from :class:`~common.Settings`.

    Attributes:
        task: ``"grpo"`` or ``"rloo"``.
        prompts: distinct prompts per iteration.
        group_size: samples per prompt (G; RLOO's k).
        epochs: passes over each iteration's rollouts.
        minibatches: optimizer steps per pass.
        warmup_steps: iterations before the timed window.
        steps: timed iterations.
        max_new_tokens: response length cap.
    """

    task: str
    prompts: int
    group_size: int
    epochs: int
    minibatches: int
    warmup_steps: int
    steps: int
    max_new_tokens: int

    @property
    def iterations(self) -> int:
        return self.warmup_steps + self.steps

    @property
    def rollouts(self) -> int:
        """Rollouts per iteration: prompts × G."""
        return self.prompts * self.group_size

    @property
    def updates(self) -> int:
        """Optimizer steps per iteration."""
        return self.epochs * self.minibatches


def group_plan(s: Settings, task: str) -> GroupPlan:
    """The plan of ``task`` under settings ``s``.

    Raises:
        ValueError: an unknown task, G < 2, or rollouts that do not split into equal minibatches (TRL needs
            them equal: its per-step batch is a fixed number of completions).
    """
    if task not in GROUP_TASKS:
        raise ValueError(f"unknown group task {task!r}; expected one of {GROUP_TASKS}")
    plan = GroupPlan(
        task=task,
        prompts=s.group_batch_prompts,
        group_size=s.group_size,
        epochs=s.grpo_epochs if task == "grpo" else s.rloo_epochs,
        minibatches=s.group_minibatches,
        warmup_steps=s.group_warmup_steps,
        steps=s.group_steps,
        max_new_tokens=s.ppo_max_new_tokens,
    )
    if plan.group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group baseline needs 2 samples), got {plan.group_size}")
    if plan.rollouts % plan.minibatches:
        raise ValueError(
            f"{plan.prompts} prompts × group_size {plan.group_size} = {plan.rollouts} rollouts do not split "
            f"into {plan.minibatches} equal minibatches (group_minibatches)"
        )
    return plan


def lit_group_kwargs(s: Settings, task: str) -> dict:
    """Keywords of ``GRPOModule`` / ``RLOOModule`` besides the models, tokenizer and optimizer."""
    plan = group_plan(s, task)
    return {
        "lr": s.lr,
        "kl_coef": s.kl_coef,
        "kl_estimator": "k1",  # conf/task/base/policy.yaml (RLOO's reward penalty; GRPO's loss term is k3)
        "clip_eps": CLIP_EPS,
        "ppo_epochs": plan.epochs,
        "num_minibatches": plan.minibatches,
        "max_grad_norm": MAX_GRAD_NORM,
        "samples_per_prompt": plan.group_size,
        "max_new_tokens": plan.max_new_tokens,
        "temperature": s.temperature,
        "seed": s.seed,
        "shared_prefix": s.shared_prefix,
        "minibatch_by_group": s.minibatch_by_group == "true",
        "old_logprobs_from_update": s.old_logprobs_from_update == "true",
        **LIT_LOSS[task],
    }


def trl_group_config(s: Settings, task: str) -> dict:
    """``GRPOConfig`` / ``RLOOConfig`` keywords (besides the optimizer's) that do the plan's work."""
    plan = group_plan(s, task)
    max_steps = plan.iterations * plan.updates
    cfg = {
        "num_generations": plan.group_size,
        "per_device_train_batch_size": plan.rollouts // plan.minibatches,  # completions per optimizer step
        "gradient_accumulation_steps": 1,
        "steps_per_generation": plan.minibatches,  # generation batch = all rollouts of the iteration
        "num_iterations": plan.epochs,
        "max_steps": max_steps,
        "max_completion_length": plan.max_new_tokens,
        "temperature": s.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": None,
        "repetition_penalty": 1.0,
        "beta": s.kl_coef,
        "epsilon": CLIP_EPS,
        "max_grad_norm": MAX_GRAD_NORM,
        "mask_truncated_completions": False,
        "disable_dropout": True,
        "use_vllm": False,
        "log_completions": False,
        "logging_steps": max_steps + 1,  # no logging call in the timed window
        "shuffle_dataset": True,
    }
    if task == "grpo":
        cfg["loss_type"] = TRL_LOSS_TYPE[LIT_LOSS["grpo"]["loss_agg"]]
        cfg["scale_rewards"] = "group" if LIT_LOSS["grpo"]["scale_rewards"] else "none"
    else:
        cfg["normalize_advantages"] = False
        cfg["reward_clip_range"] = None
    return cfg
