"""The policy tasks' fault policy, as a mixin of :class:`~lit_rlhf.tasks.policy.PolicyModule`.

* a batch whose reward scores, log-probs or values are not finite is skipped and counted
  (``<algorithm>/skipped_batches``); ``max_bad_batches`` in a row stop the run with an error naming where
  the NaNs came from;
* an update whose ratio π/π_old exceeds ``max_ratio`` (or whose loss is not finite) is skipped and counted
  (``<algorithm>/skipped_updates``);
* under DDP every decision is taken on all ranks at once, so the replicas take the same steps.

The host module provides ``max_ratio``, ``max_bad_batches``, ``skipped_batches``, ``skipped_updates``,
``_bad_streak``, ``max_grad_norm``, ``algorithm``, ``iteration`` and Lightning's ``trainer``,
``manual_backward``, ``clip_gradients`` and ``log``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from lit_rlhf.rollout.rollout import Rollout

log = logging.getLogger("lit_rlhf.tasks.policy")  # the messages users know, under the policy module's name


class FaultPolicy:
    """Skip non-finite batches and exploding updates; stop after too many bad batches in a row."""

    def ratio_ok(self, loss: Tensor, stats: dict[str, Tensor]) -> bool:
        """A ratio explosion (π/π_old beyond ``max_ratio``) or a non-finite loss skips the update, on every
        rank at once (under DDP the replicas must take the same steps)."""
        ok = self._all_ranks(bool(torch.isfinite(loss) & (stats["ratio_max"] <= self.max_ratio)))
        self.skipped_updates += not ok
        return ok

    def fault_state(self) -> dict[str, int]:
        """The counters a checkpoint keeps (``on_save_checkpoint``): a resumed run goes on counting."""
        return {
            "skipped_batches": self.skipped_batches,
            "skipped_updates": self.skipped_updates,
            "bad_streak": self._bad_streak,
        }

    def load_fault_state(self, state: dict[str, int] | None) -> None:
        """Restore :meth:`fault_state` (a checkpoint written before it was saved: zeros)."""
        state = state or {}
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self._bad_streak = int(state.get("bad_streak", 0))

    def _all_ranks(self, ok: bool) -> bool:
        """True only if ``ok`` on every process (a single process: ``ok``)."""
        return bool(self.trainer.strategy.reduce_boolean_decision(ok, all=True))

    def _update(self, *parts: tuple[torch.optim.Optimizer, Tensor, bool]) -> None:
        """One backward of the summed losses, then a (clipped) step of each optimizer whose loss is ok.

        Actor and critic share no parameter, so the gradient of the sum is each loss's own gradient:
        the same update as one backward per loss, with one all-reduce under DDP in which every trained
        parameter takes part. A skipped loss enters with weight 0 (its gradient is zeroed, not applied).
        """
        for opt, _, _ in parts:
            opt.zero_grad()
        total = sum(loss if ok else loss.nan_to_num() * 0.0 for _, loss, ok in parts)
        self.manual_backward(total)
        for opt, _, ok in parts:
            if not ok:
                continue
            if self.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()

    def _finite_rollout(self, ro: Rollout) -> bool:
        """Fault policy: skip a batch whose scores, log-probs or values are not finite; stop after
        ``max_bad_batches`` such batches in a row with an error that says where the NaNs came from.

        Per-token values count on the response tokens only: padding after the EOS holds whatever the
        models return there (a −inf log-prob of the pad token), which no loss or statistic reads."""
        tokens = ro.response_mask.bool()
        checks = {
            "reward-model scores": ro.scores[:, : len(self.reward_models)],  # a function's NaN = None
            "policy log-probs": ro.logprobs[tokens],
            "reference log-probs": ro.ref_logprobs[tokens],
            "critic values": ro.values[tokens],
        }
        bad = {k: int((~torch.isfinite(v)).sum()) for k, v in checks.items()}
        bad = {k: n for k, n in bad.items() if n}
        if self._all_ranks(not bad):  # under DDP a batch bad on one rank is skipped on all
            self._bad_streak = 0
            return True
        self.skipped_batches += 1
        self._bad_streak += 1
        what = ", ".join(f"{n} non-finite {k}" for k, n in bad.items()) or "non-finite values on another rank"
        log.warning(
            "%s iteration %d skipped: %s (%d in a row)",
            self.algorithm,
            self.iteration,
            what,
            self._bad_streak,
        )
        if self._bad_streak >= self.max_bad_batches:
            raise FloatingPointError(
                f"{self._bad_streak} consecutive {self.algorithm.upper()} batches had non-finite values "
                f"({what}); stopping instead of training on them. Check the reward models "
                "(reward.<name>.path) and the learning rate (task.module.lr); raise "
                "task.module.max_bad_batches to tolerate more."
            )
        self.log(f"{self.algorithm}/skipped_batches", float(self.skipped_batches), batch_size=len(ro.scores))
        return False
