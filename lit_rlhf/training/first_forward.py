"""π_old of the first minibatch from the update's own forward (``task.module.old_logprobs_from_update``), as a
mixin of :class:`~lit_rlhf.tasks.policy.PolicyModule`.

Until the first optimizer step of an iteration the policy is the one that sampled, so the log-probs the first
minibatch's forward computes (with gradients) ARE π_old for its rows. The rollout then computes π_old
without gradients only for the other rows (:meth:`FirstForward.rollout_logprobs`); right after it, the
training step runs the first minibatch's forward, writes its values (detached) into the rollout before
anything reads them (the fault check, the KL, the off-policy weights, the advantages), and the update takes
that forward, graph and all, instead of running it again (:meth:`FirstForward.update_logprobs`).

Each iteration saves the rollout's policy forward over the first minibatch's rows: 1 / ``num_minibatches``
of them, all of them with one minibatch (TRL's GRPO skips π_old the same way with one optimizer step per
generation). The first minibatch's ratio π/π_old is then exactly 1, as it is in exact arithmetic. Off under
FSDP2, where every rank must run every forward with a row (a rank could be left with none to compute).

The host module provides ``old_logprobs_from_update``, ``actor``, ``minibatches``, ``_token_logprobs``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_rlhf.rollout.rollout import Rollout
from lit_rlhf.training.fsdp import is_sharded


class FirstForward:
    """Compute the first minibatch's π_old in its update forward instead of in the rollout."""

    _first: tuple[Tensor, Tensor] | None = None  # (rows, log-probs with their graph) for the first update

    def owed_rows(self, B: int, device: torch.device) -> Tensor | None:
        """This process's rows of the iteration's first minibatch (``minibatches``' first yield), whose π_old
        the update's first forward supplies; ``None``: none (the setting is off, FSDP2, or this process holds
        no row of that minibatch)."""
        if not self.old_logprobs_from_update or is_sharded(self.actor):
            return None
        idx, m = next(iter(self.minibatches(torch.ones(B, 1, device=device))))
        return idx if bool(m.any()) else None  # a zero mask: the stand-in row of a process without rows

    def rollout_logprobs(self, ids: Tensor, mask: Tensor, P: int, owed: Tensor | None) -> Tensor:
        """log π_old of the response tokens, (B, R), without gradients; 0 on the ``owed`` rows, which
        :meth:`first_update_forward` fills in."""
        if owed is None:
            return self._token_logprobs(self.actor, ids, mask, P)
        rest = torch.ones(len(ids), dtype=torch.bool, device=ids.device)
        rest[owed] = False
        out = torch.zeros(len(ids), ids.shape[1] - P, device=ids.device)
        if rest.any():
            out[rest] = self._token_logprobs(self.actor, ids[rest], mask[rest], P).to(out.dtype)
        return out

    def first_update_forward(self, ro: Rollout) -> None:
        """The first minibatch's forward with gradients (under the training step's precision): its detached
        log-probs become the rollout's π_old of those rows; the update reuses it (:meth:`update_logprobs`)."""
        self._first = None
        if ro.owed is None:
            return
        P = ro.input_ids.shape[1] - ro.response_mask.shape[1]
        lp = self._token_logprobs(self.actor, ro.input_ids[ro.owed], ro.attention_mask[ro.owed], P)
        ro.logprobs[ro.owed] = lp.detach().to(ro.logprobs.dtype)
        self._first = (ro.owed, lp)

    def update_logprobs(self, idx: Tensor, ids: Tensor, mask: Tensor, P: int) -> Tensor:
        """log π of the minibatch ``idx`` (rows ``ids``), with gradients: the first update's forward if it
        was run already for these rows, else a new forward."""
        first, self._first = self._first, None
        if first is not None and first[0].shape == idx.shape and torch.equal(first[0], idx):
            return first[1]
        return self._token_logprobs(self.actor, ids, mask, P)
