"""GRPO (``task=grpo``; Shao et al., 2024): G samples per prompt, advantage (u_i − mean_G) / (std_G + ε) on
every token, clipped surrogate, KL to the reference as a k3 loss term with coefficient β. Dr. GRPO (Liu et
al., 2025): ``task.module.scale_rewards=false task.module.loss_agg=seq_mean_token_sum_norm``.

Under group normalisation a per-prompt r_ref cancels out of the advantage, but the log-sigmoid's curvature
does not: ``+transform=logsigmoid`` still compresses the top of each group."""

from __future__ import annotations

from torch import Tensor

from lit_rlhf.rlhf import group_advantages
from lit_rlhf.rollout.rollout import Rollout
from lit_rlhf.tasks.critic_free import CriticFreeModule


class GRPOModule(CriticFreeModule):
    """Group-relative policy optimisation.

    Args:
        scale_rewards: divide by the group's std (GRPO); ``false`` = Dr. GRPO's mean-only baseline.
        eps: added to the std.
        **kwargs: :class:`~lit_rlhf.tasks.critic_free.CriticFreeModule`'s arguments; ``samples_per_prompt``
            is the group size G (≥ 2).
    """

    algorithm = "grpo"

    def __init__(self, scale_rewards: bool = True, eps: float = 1e-6, **kwargs) -> None:
        kwargs.setdefault("kl_in_loss", True)
        super().__init__(**kwargs)
        if self.samples_per_prompt < 2:
            raise ValueError(
                f"task=grpo compares G samples of each prompt: task.module.samples_per_prompt must be >= 2, "
                f"got {self.samples_per_prompt}"
            )
        self.scale_rewards, self.eps = scale_rewards, eps

    def advantages(self, ro: Rollout, reward: Tensor, kl: Tensor) -> Tensor:
        return group_advantages(reward, self.samples_per_prompt, self.eps, self.scale_rewards)  # (B,)
