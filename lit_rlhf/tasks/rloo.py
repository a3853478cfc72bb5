"""RLOO (``task=rloo``; Ahmadian et al., 2024): k samples per prompt, each baselined by the mean of the
other k − 1; the sequence KL penalty is in the reward (r − β·KL_seq), as TRL's RLOOTrainer does."""

from __future__ import annotations

from torch import Tensor

from lit_rlhf.rlhf import rloo_advantages
from lit_rlhf.rollout.rollout import Rollout
from lit_rlhf.tasks.config import RLOOConfig
from lit_rlhf.tasks.critic_free import CriticFreeModule


class RLOOModule(CriticFreeModule):
    """REINFORCE leave-one-out.

    Args:
        **kwargs: :class:`~lit_rlhf.tasks.critic_free.CriticFreeModule`'s arguments; ``samples_per_prompt``
            is k (≥ 2).
    """

    algorithm = "rloo"

    config_class = RLOOConfig

    def advantages(self, ro: Rollout, reward: Tensor, kl: Tensor) -> Tensor:
        penalised = reward - self.kl_ctl.value * kl.sum(-1)  # (B,): r − β·KL_seq
        return rloo_advantages(penalised, self.samples_per_prompt)  # (B,)
