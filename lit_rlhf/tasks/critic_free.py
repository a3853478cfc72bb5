"""The update shared by the critic-free algorithms (GRPO, RLOO, REINFORCE++): one optimizer, clipped
surrogate on precomputed advantages, an optional KL-to-reference loss term. No critic in memory. Under DDP
the loss aggregations divide by the global minibatch's rows or tokens
(:func:`~lit_rlhf.rlhf.estimators.shard_norms`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_rlhf.rlhf import kl_loss, masked_mean, policy_loss
from lit_rlhf.rollout.rollout import Rollout
from lit_rlhf.tasks.config import CriticFreeConfig
from lit_rlhf.tasks.policy import PolicyModule


class CriticFreeModule(PolicyModule):
    """A :class:`~lit_rlhf.tasks.policy.PolicyModule` whose subclass only says how advantages are made.

    Args:
        **kwargs: :class:`~lit_rlhf.tasks.policy.PolicyModule`'s arguments; the settings are a
            :class:`~lit_rlhf.tasks.config.CriticFreeConfig` (``loss_agg``, ``kl_in_loss`` on top of the
            shared ones).
    """

    config_class = CriticFreeConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss_agg, self.kl_in_loss = self.config.loss_agg, self.config.kl_in_loss

    def advantages(self, ro: Rollout, reward: Tensor, kl: Tensor) -> Tensor:
        """(B,) or (B, R) advantages of the rollouts."""
        raise NotImplementedError

    def optimise(self, ro: Rollout, reward: Tensor, kl: Tensor) -> dict[str, Tensor]:
        mask = ro.response_mask.float()
        P = ro.input_ids.shape[1] - mask.shape[1]
        raw = self.advantages(ro, reward, kl)
        advantages = self.corrected(raw, mask)  # generation=vllm: truncated importance sampling weights
        opt = self.optimizers()
        beta = self.kl_ctl.value
        stats: dict[str, list[Tensor]] = {k: [] for k in ("clipfrac", "approx_kl", "pg_loss", "kl_loss")}
        for idx, m in self.minibatches(mask):
            ids, am = ro.input_ids[idx], ro.attention_mask[idx]
            norms = self.shard_norms(m)  # DDP: the loss of the global minibatch
            logprobs = self.update_logprobs(idx, ids, am, P)  # the first: run already
            loss, st = policy_loss(
                logprobs,
                ro.logprobs[idx],
                advantages[idx],
                m,
                self.clip_eps,
                self.loss_agg,
                self.max_new_tokens,
                norms,
            )
            stats["pg_loss"].append(loss.detach())
            if self.kl_in_loss:
                kl_term = kl_loss(
                    logprobs, ro.ref_logprobs[idx], m, "k3", self.loss_agg, self.max_new_tokens, norms
                )
                loss = loss + beta * kl_term
                stats["kl_loss"].append(kl_term.detach())
            if self.ratio_ok(loss, st):
                self._update((opt, loss, True))
            for k in ("clipfrac", "approx_kl"):
                stats[k].append(st[k].detach().float())
        out = {k: sum(v) / len(v) for k, v in stats.items() if v}
        out["train/loss"] = out["pg_loss"] + beta * out.get("kl_loss", 0.0)
        # mean |A| over the response tokens (per-token advantages) or the responses, of the global batch
        over = mask if raw.dim() == 2 else torch.ones_like(raw)
        out["advantage_abs"] = masked_mean(raw.abs(), over, all_sum=self.all_sum())
        return out
