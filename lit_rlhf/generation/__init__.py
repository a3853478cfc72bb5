"""Generation engines: who samples the responses of rollouts, r_ref and evaluation (the ``generation`` group).

Both engines have one small interface and the same sampling contract (temperature only, every EOS id stops a
response, ``max_new_tokens``, one seed per row, the checkpoint's ``generation_config.json`` ignored):

* ``generate(model, input_ids, attention_mask, config, pad_token_id, seeds) -> Samples``: responses to
  left-padded prompts under ``config`` (:func:`lit_rlhf.rollout.rollout.sampling_config`);
* ``sync(named_params)``: the weights the engine samples from next (a no-op for ``hf``, which samples
  ``model`` itself);
* ``needs_sync``: whether the caller must ``sync`` before ``generate`` (``vllm``: the engine holds a copy).

``generation=hf`` (:mod:`lit_rlhf.generation.hf`, the default) samples with ``model.generate``, exact and
deterministic per row; ``generation=vllm`` (:mod:`lit_rlhf.generation.vllm`) samples with a colocated vLLM
engine and also returns the sampler's log-probs of the sampled tokens (the off-policy correction uses them).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Samples(NamedTuple):
    """B responses to B left-padded prompts of length P.

    Attributes:
        sequences: (B, P + R) prompt and response; response tokens after the first EOS are padding.
        response_mask: (B, R) 1 on the response tokens up to and including the first EOS.
        has_eos: (B,) whether the response ended with an EOS id (else it was cut at ``max_new_tokens``).
        logprobs: (B, R) the sampler's log-probs of the sampled tokens at the sampling temperature (0 on
            padding); ``None`` when the sampler is the learner itself (``hf``).
    """

    sequences: Tensor
    response_mask: Tensor
    has_eos: Tensor
    logprobs: Tensor | None = None
