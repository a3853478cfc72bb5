"""Typed settings of the policy-optimisation modules, one dataclass per algorithm (as TRL's ``GRPOConfig``).

Hydra passes ``task.module.*`` keys flat (``task.module.kl_coef=0.1``), and the module builds its config from
them; Python users pass ``config=PPOConfig(kl_coef=0.1)``. An unknown key is refused naming it and the known
ones. Each field's comment says what it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from lit_rlhf.rlhf import LOSS_AGGS

KEY = "task.module"  # where Hydra users set these


@dataclass
class PolicyConfig:
    """What every policy-optimisation algorithm (PPO, GRPO, RLOO, REINFORCE++) is configured with."""

    lr: float = 3e-5  # actor learning rate
    warmup_steps: int = 0  # linear warm-up, in iterations
    kl_coef: float = 0.05  # initial KL coefficient β
    kl_target: float | None = None  # target KL per sequence of the adaptive controller; None = fixed β
    kl_horizon: int = 10000  # horizon of the adaptive controller (Ziegler et al., 2019)
    kl_estimator: str = "k1"  # per-token KL: k1 (log π − log π_ref), k2 or k3
    clip_eps: float = 0.2  # ratio clip ε of the surrogate
    ppo_epochs: int = 2  # passes over each batch of rollouts
    num_minibatches: int = 2  # minibatches per pass
    max_grad_norm: float | None = 1.0  # gradient clipping (None = off)
    # subtracted from every reward model's RAW score of a response cut without EOS, before the transform
    missing_eos_penalty: float | None = None
    samples_per_prompt: int = 1  # responses per prompt in a step (the group size G of GRPO / RLOO)
    max_new_tokens: int = 16  # response length cap
    temperature: float = 1.0  # sampling temperature (log-probs are taken at the same temperature)
    top_k: int = 0  # must stay 0: truncation would make the ratio off-policy (refused)
    top_p: float = 1.0  # must stay 1.0, for the same reason (refused)
    eval_samples_per_prompt: int = 4  # responses per held-out prompt at evaluation
    seed: int = 0  # seeds sampling (with the iteration and the row's global index) and the minibatches
    max_bad_batches: int = 3  # stop after this many consecutive batches with NaN/inf (each one skipped)
    max_ratio: float = 100.0  # skip a minibatch's update when max π/π_old exceeds this
    # compute each distinct prompt of a batch once for all its responses (lit_rlhf/rollout/shared_prefix.py):
    # auto = where the model family allows (else the plain forward, one log line); true = an error instead
    shared_prefix: bool | str = "auto"
    # minibatches of whole groups (a prompt's G samples) instead of random rows: with shared_prefix a
    # minibatch then computes each of its prompts once (off: the permutation moves rows, as before)
    minibatch_by_group: bool = False
    # π_old of each iteration's first minibatch from the update's own forward (the policy has not moved
    # yet): the rollout's policy forward skips those rows (lit_rlhf/training/first_forward.py)
    old_logprobs_from_update: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a switch given as anything but true / false: refused
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"{KEY}.{f.name} must be true or false, got {getattr(self, f.name)!r}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"{KEY}.samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        mode = self.shared_prefix
        if isinstance(mode, str) and mode.lower() in ("true", "false"):
            mode = mode.lower() == "true"
        if not (mode == "auto" or isinstance(mode, bool)):
            raise ValueError(f"{KEY}.shared_prefix must be auto, true or false, got {self.shared_prefix!r}")
        self.shared_prefix = mode


@dataclass
class PPOConfig(PolicyConfig):
    """PPO with a critic: GAE and a clipped value loss on top of :class:`PolicyConfig`."""

    value_lr: float = 1e-4  # critic learning rate
    gamma: float = 1.0  # discount of GAE
    lam: float = 0.95  # λ of GAE
    value_clip_eps: float = 0.2  # value clip ε
    vf_coef: float = 0.5  # weight of the value loss


@dataclass
class CriticFreeConfig(PolicyConfig):
    """The critic-free algorithms' update: how token losses are averaged, and where the KL goes."""

    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    kl_in_loss: bool = False  # β·KL(π‖π_ref) (k3) as a loss term (GRPO) instead of in the reward

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"{KEY}.loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")


@dataclass
class GRPOConfig(CriticFreeConfig):
    """GRPO (Shao et al., 2024); Dr. GRPO with ``scale_rewards=False, loss_agg="seq_mean_token_sum_norm"``."""

    kl_in_loss: bool = True
    scale_rewards: bool = True  # divide by the group's std (GRPO); False = Dr. GRPO's mean-only baseline
    eps: float = 1e-6  # added to the std

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_prompt < 2:
            raise ValueError(
                f"task=grpo compares G samples of each prompt: {KEY}.samples_per_prompt must be >= 2, "
                f"got {self.samples_per_prompt}"
            )


@dataclass
class RLOOConfig(CriticFreeConfig):
    """RLOO (Ahmadian et al., 2024): a leave-one-out baseline over G ≥ 2 samples per prompt."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_prompt < 2:
            raise ValueError(
                f"task=rloo needs a leave-one-out baseline: {KEY}.samples_per_prompt must be >= 2, "
                f"got {self.samples_per_prompt}"
            )


@dataclass
class ReinforcePPConfig(CriticFreeConfig):
    """REINFORCE++ (Hu, 2025): discounted per-token returns, whitened over the batch."""

    gamma: float = 1.0  # discount of the per-token returns


C = TypeVar("C", bound=PolicyConfig)


def build_config(cls: type[C], config: C | None, settings: dict[str, Any]) -> C:
    """``config`` as given, or ``cls(**settings)`` from flat keys (unknown keys refused, naming the known)."""
    if config is not None:
        if settings:
            raise TypeError(f"pass either config= or flat settings, not both (got {sorted(settings)})")
        if not isinstance(config, cls):
            raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
        return config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"{KEY}.{unknown[0]}: not a setting of {cls.__name__}; known: {', '.join(sorted(known))}"
        )
    return cls(**settings)
