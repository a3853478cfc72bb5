"""The policy tasks' side of a generation engine that holds its own copy of the weights (``generation=vllm``),
as a mixin of :class:`~lit_rlhf.tasks.policy.PolicyModule`.

* **what the engine holds**: π_ref's weights for π_ref's samples (r_ref, evaluation), the actor's as of this
  iteration for rollouts; a push happens only when the engine holds something else (:meth:`sync_engine`);
* **off-policy correction**: from the sampler's log-probs of a rollout, the mismatch to log
  (``rollout/sampler_kl``, ``rollout/max_ratio``) and the truncated importance-sampling weights the policy
  loss applies (:meth:`corrected`; maths in :mod:`lit_rlhf.rlhf.offpolicy`).

The host module provides ``generation``, ``actor``, ``iteration``, ``_tis``, ``reference_state_dict`` and
Lightning's ``_trainer``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_rlhf.models import lora
from lit_rlhf.rlhf import sampler_mismatch, tis_weights
from lit_rlhf.rollout.rollout import Rollout


def check_engine_strategy(trainer: Any) -> None:
    """An engine that holds its own copy of the policy (``generation=vllm``) runs in one training process
    with the whole model for now: refuse sharded or multi-process strategies in one line."""
    if trainer is None:
        return
    name = type(trainer.strategy).__name__
    if any(s in name for s in ("FSDP", "DeepSpeed", "ModelParallel")) or trainer.world_size > 1:
        raise ValueError(
            f"generation=vllm runs in one training process with the whole policy for now, not under "
            f"{name} with {trainer.world_size} process(es): use trainer=cpu (or trainer=gpu with "
            "trainer.devices=1), or generation=hf"
        )


class EngineSampling:
    """Keep a weight-holding engine in step with the policy; weigh its rollouts' tokens."""

    def sync_engine(self, who: str) -> None:
        """Make the engine hold ``who``'s weights: π_ref's (the SFT weights, for r_ref and evaluation
        samples) or the actor's as of this iteration (LoRA merged beside the model). A push happens only when
        the engine holds something else; the actor's weights change only in a training step, so the tag
        (``policy``, iteration) says whether they changed since the last push."""
        engine = self.generation
        if not engine.started:
            check_engine_strategy(self._trainer)
            engine.start(self.actor)
        tag = ("policy", self.iteration) if who == "policy" else ("reference",)
        if engine.holds == tag:
            return
        engine.sync(lora.merged_weights(self.actor) if who == "policy" else self.reference_state_dict())
        engine.holds = tag

    def off_policy(self, ro: Rollout, mask: Tensor) -> dict[str, Tensor]:
        """With an engine's rollouts: the mismatch to log (``rollout/sampler_kl``, ``rollout/max_ratio``)
        and this iteration's truncated importance-sampling weights (``generation.tis_cap``), which
        :meth:`corrected` applies; nothing with ``generation=hf`` (the sampler is the learner)."""
        self._tis = None
        if ro.sampler_logprobs is None:
            return {}
        stats = sampler_mismatch(ro.logprobs, ro.sampler_logprobs, mask)
        cap = getattr(self.generation, "tis_cap", None)
        if cap is not None:
            self._tis = tis_weights(ro.logprobs, ro.sampler_logprobs, mask, cap)  # (B, R)
        return {f"rollout/{k}": v for k, v in stats.items()}

    def corrected(self, advantages: Tensor, mask: Tensor) -> Tensor:
        """Advantages ``(B,)`` or ``(B, R)`` times this iteration's TIS weights ``w (B, R)``, or unchanged
        without them. Scaling A by w ≥ 0 weights each token's clipped loss by w: max(−wAρ, −wA·clip(ρ)) =
        w·max(−Aρ, −A·clip(ρ))."""
        if self._tis is None:
            return advantages
        a = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(mask)
        return a * self._tis.to(a.dtype)
