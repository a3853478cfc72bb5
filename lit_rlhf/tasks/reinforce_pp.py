"""REINFORCE++ (``task=reinforce_pp``; Hu, 2025): per-token KL penalty in the reward, discounted return-to-go,
advantages whitened over the whole batch (the global one under DDP), clipped surrogate. No critic, no groups
needed."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_rlhf.rlhf import per_token_rewards, reinforce_pp_advantages
from lit_rlhf.rollout.rollout import Rollout
from lit_rlhf.tasks.config import ReinforcePPConfig
from lit_rlhf.tasks.critic_free import CriticFreeModule


class ReinforcePPModule(CriticFreeModule):
    """REINFORCE++.

    Args:
        **kwargs: :class:`~lit_rlhf.tasks.critic_free.CriticFreeModule`'s arguments; the settings are a
            :class:`~lit_rlhf.tasks.config.ReinforcePPConfig` (``gamma``: discount of the return-to-go).
    """

    algorithm = "reinforce_pp"

    config_class = ReinforcePPConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gamma = self.config.gamma

    def advantages(self, ro: Rollout, reward: Tensor, kl: Tensor) -> Tensor:
        mask = ro.response_mask.float()
        token_rewards = per_token_rewards(reward, kl, self.kl_ctl.value, mask)  # (B, R)
        return reinforce_pp_advantages(token_rewards, mask, self.gamma, all_sum=self.all_sum())  # (B, R)
