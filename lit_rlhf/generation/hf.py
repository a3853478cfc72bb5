"""``generation=hf`` (the default): sample with the learner's own ``model.generate``.

Exact and deterministic: row i's response is a function of its prompt and ``seeds[i]`` alone (Gumbel-max with
one generator per row, :mod:`lit_rlhf.rollout.decoding`), so DDP over W processes samples what one process
holding the global batch would. The sampler is the learner, so no sampler log-probs are returned and there is
nothing to sync.

``share_prefix`` (on by default): when prompts repeat (G samples per prompt in GRPO / RLOO, r_ref's samples,
evaluation), each distinct prompt is prefilled once and its KV cache gathered to its G rows
(:func:`~lit_rlhf.rollout.shared_prefix.prefilled_cache`), as vLLM's prefix cache does; a model family that
cannot share (sliding-window or hybrid caches) prefills per row, with one log line.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import GenerationConfig

from lit_rlhf.generation import Samples
from lit_rlhf.rollout.rollout import generate
from lit_rlhf.rollout.shared_prefix import prefilled_cache


class HFGeneration:
    """Sampling through ``transformers``' ``generate`` with the KV cache (see the module docstring).

    Args:
        share_prefix: prefill each distinct prompt once for all its rows.
    """

    needs_sync = False

    def __init__(self, share_prefix: bool = True) -> None:
        self.share_prefix = share_prefix

    def generate(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        config: GenerationConfig,
        pad_token_id: int,
        seeds: Tensor | None = None,
    ) -> Samples:
        """Responses of ``model`` to left-padded prompts (:func:`lit_rlhf.rollout.rollout.generate`)."""
        prefill = prefilled_cache if self.share_prefix else None
        seq, response_mask, has_eos = generate(
            model, input_ids, attention_mask, config, pad_token_id, seeds, prefill=prefill
        )
        return Samples(seq, response_mask, has_eos, None)

    def sampler_settings(self) -> dict:
        """Nothing beyond the distribution: the r_ref cache keys of ``hf`` stay what they were."""
        return {}

    def sync(self, named_params: object) -> None:
        """Nothing to do: ``generate`` samples the model it is given."""

    def __repr__(self) -> str:
        return f"HFGeneration(share_prefix={self.share_prefix})"
