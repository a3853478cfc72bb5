"""PPO with a critic (``task=ppo``, the paper's optimiser): per-token KL in the reward, GAE, clipped losses.

The step (see :mod:`lit_rlhf.tasks.policy` for rollouts and scoring):

1. per-token rewards ``−β·KL_t`` plus the sequence reward at the last token (Ziegler et al., 2019);
2. GAE advantages and returns from the critic's values (Schulman et al., 2016), whitened (over the global
   batch under DDP);
3. ``ppo_epochs`` passes over minibatches of the clipped policy loss and the clipped value loss
   (Schulman et al., 2017), one backward per minibatch for both; token means over the global minibatch.

The objective is the paper's ``E[u(x, y)] − β·KL(π‖π_ref)`` with u the transformed reward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lit_rlhf.rlhf import gae, masked_whiten, per_token_rewards, ppo_policy_loss, value_loss
from lit_rlhf.rollout import shared_prefix
from lit_rlhf.rollout.rollout import Rollout
from lit_rlhf.tasks.config import PPOConfig
from lit_rlhf.tasks.policy import PolicyModule, disable_dropout, raw_sum
from lit_rlhf.training.optim import warmup_schedule

__all__ = ["PPOModule", "raw_sum"]


class PPOModule(PolicyModule):
    """Actor-critic PPO against frozen reward models and a frozen reference policy.

    Args:
        critic: value model (:class:`~lit_rlhf.models.heads.ValueModel`: a backbone and a linear head).
        **kwargs: the rest of :class:`~lit_rlhf.tasks.policy.PolicyModule` (actor, ref, reward models,
            tokenizer, optimizer, and ``config=PPOConfig(...)`` or its keys flat).
    """

    algorithm = "ppo"
    config_class = PPOConfig

    def __init__(self, critic: nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.critic = critic
        disable_dropout(critic)
        if self.config.shared_prefix is True:
            shared_prefix.require({"critic": critic})
        c = self.config
        self.value_lr, self.gamma, self.lam = c.value_lr, c.gamma, c.lam
        self.value_clip_eps, self.vf_coef = c.value_clip_eps, c.vf_coef

    def rollout_values(self, input_ids: Tensor, attention_mask: Tensor, P: int) -> Tensor:
        return self._values(input_ids, attention_mask, P)

    def _values(self, input_ids: Tensor, attention_mask: Tensor, P: int) -> Tensor:
        """(B, R): V(s_t) before each response token t."""
        if self.share_prefix:
            return shared_prefix.values(self.critic, input_ids, attention_mask, P)
        return self.critic(input_ids, attention_mask)[:, P - 1 : -1]

    def updates_per_iteration(self) -> int:
        return 2 * self.ppo_epochs * self.num_minibatches  # actor and critic

    def optimise(self, ro: Rollout, reward: Tensor, kl: Tensor) -> dict[str, Tensor]:
        mask = ro.response_mask.float()
        P = ro.input_ids.shape[1] - mask.shape[1]
        # 1-2. per-token KL penalty, GAE, whitening
        token_rewards = per_token_rewards(reward, kl, self.kl_ctl.value, mask)  # (B, R)
        advantages, returns = gae(token_rewards, ro.values, mask, self.gamma, self.lam)
        advantages = masked_whiten(advantages, mask, all_sum=self.all_sum())  # over the global batch
        advantages = self.corrected(advantages, mask)  # generation=vllm: truncated importance sampling

        # 3. epochs of minibatches of the clipped losses
        opt_actor, opt_critic = self.optimizers()
        stats: dict[str, list[Tensor]] = {k: [] for k in ("clipfrac", "approx_kl", "vf_clipfrac")}
        stats |= {"pg_loss": [], "vf_loss": []}
        for idx, m in self.minibatches(mask):
            ids, am = ro.input_ids[idx], ro.attention_mask[idx]
            norms = self.shard_norms(m)  # DDP: the token mean of the global minibatch
            n = None if norms is None else norms.tokens
            logprobs = self.update_logprobs(idx, ids, am, P)  # the first: run already
            pg_loss, pg_stats = ppo_policy_loss(
                logprobs, ro.logprobs[idx], advantages[idx], m, self.clip_eps, token_norm=n
            )
            values = self._values(ids, am, P)
            vf_loss, vf_stats = value_loss(
                values, ro.values[idx], returns[idx], m, self.value_clip_eps, token_norm=n
            )
            pg_ok = self.ratio_ok(pg_loss, pg_stats)
            vf_ok = self._all_ranks(bool(torch.isfinite(vf_loss)))
            self.skipped_updates += not vf_ok
            if pg_ok or vf_ok:
                self._update((opt_actor, pg_loss, pg_ok), (opt_critic, self.vf_coef * vf_loss, vf_ok))
            for k, v in {**pg_stats, **vf_stats, "pg_loss": pg_loss, "vf_loss": vf_loss}.items():
                if k in stats:
                    stats[k].append(v.detach().float())
        out = {k: torch.stack(v).mean() for k, v in stats.items() if v}
        out["train/loss"] = out.get("pg_loss", torch.tensor(0.0)) + self.vf_coef * out.get("vf_loss", 0.0)
        return out

    def configure_optimizers(self):
        opt_a = self.optimizer_fn(self.trainable(self.actor), lr=self.lr)
        opt_c = self.optimizer_fn(self.trainable(self.critic), lr=self.value_lr)
        return [opt_a, opt_c], [
            warmup_schedule(opt_a, self.warmup_steps),
            warmup_schedule(opt_c, self.warmup_steps),
        ]
