"""GRPO (``task=grpo``; Shao et al., 2024): G samples per prompt, advantage (u_i − mean_G) / (std_G + ε) on
every token, clipped surrogate, KL to the reference as a k3 loss term with coefficient β. Dr. GRPO (Liu et
al., 2025): ``task.module.scale_rewards=false task.module.loss_agg=seq_mean_token_sum_norm``.

Under group normalisation a per-prompt r_ref cancels out of the advantage, but the log-sigmoid's curvature
does not: ``+transform=logsigmoid`` still compresses the top of each group."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_rlhf.rlhf import group_advantages
from lit_rlhf.rollout.rollout import Rollout
from lit_rlhf.tasks.config import GRPOConfig
from lit_rlhf.tasks.critic_free import CriticFreeModule


class GRPOModule(CriticFreeModule):
    """Group-relative policy optimisation.

    Args:
        **kwargs: :class:`~lit_rlhf.tasks.critic_free.CriticFreeModule`'s arguments; the settings are a
            :class:`~lit_rlhf.tasks.config.GRPOConfig` (``samples_per_prompt`` is the group size G ≥ 2).
    """

    algorithm = "grpo"

    config_class = GRPOConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale_rewards, self.eps = self.config.scale_rewards, self.config.eps

    def advantages(self, ro: Rollout, reward: Tensor, kl: Tensor) -> Tensor:
        if self.reward_is_advantage:  # GDPO's aggregate: already normalised and whitened
            return reward  # (B,)
        return group_advantages(reward, self.samples_per_prompt, self.eps, self.scale_rewards)  # (B,)
