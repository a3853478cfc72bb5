"""Off-policy correction for rollouts sampled by another engine than the learner (``generation=vllm``).

vLLM's sampler and the learner's forward compute the same policy with different kernels (and bf16 on CPU), so
a token y_t sampled with probability π_sampler(y_t) has a slightly different π_learner(y_t): the rollout is
a little off-policy (Yao et al., 2025, "Your efficient RL framework secretly brings you off-policy RL
training"). Two pure functions:

* :func:`sampler_mismatch` — what to watch: the k3 estimate of KL(π_sampler ‖ π_learner) over the sampled
  tokens, ``k3 = (r − 1) − log r`` with ``r = π_learner / π_sampler`` (Schulman, 2020; unbiased, ≥ 0, since
  the tokens are samples of π_sampler), and the largest ratio r;
* :func:`tis_weights` — truncated importance sampling (verl's ``rollout_correction``, OpenRLHF's ``tis``,
  TRL's ``vllm_importance_sampling_correction``): each token's policy loss is weighted by
  ``w_t = min(π_learner(y_t) / π_sampler(y_t), C)``, a constant (no gradient) that re-weights samples of
  π_sampler into an estimate under π_learner, truncated at C to bound the variance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_rlhf.rlhf.advantages import masked_mean
from lit_rlhf.rlhf.kl import kl_penalty


def sampler_mismatch(learner_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far the sampler's distribution is from the learner's on the sampled tokens.

    Args:
        learner_logprobs: ``log π_learner(y_t)`` ``(B, T)``.
        sampler_logprobs: ``log π_sampler(y_t)`` ``(B, T)``, the engine's, of the same tokens.
        mask: response-token mask ``(B, T)``.

    Returns:
        ``sampler_kl``: the masked mean of ``k3 = (r − 1) − log r``, ``r = π_learner / π_sampler``;
        ``max_ratio``: the largest r over masked tokens (1 for an empty mask).
    """
    learner, sampler = learner_logprobs.float(), sampler_logprobs.float()
    k3 = kl_penalty(sampler, learner, "k3")  # (B, T): log r = log π_learner − log π_sampler
    ratio = torch.exp(learner - sampler)  # (B, T)
    m = mask.bool()
    max_ratio = torch.where(m, ratio, torch.zeros_like(ratio)).amax() if m.any() else torch.ones(())
    return {"sampler_kl": masked_mean(k3, m), "max_ratio": max_ratio}


def tis_weights(learner_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights ``w_t = min(π_learner(y_t) / π_sampler(y_t), C)``, 0 off the
    mask.

    Args:
        learner_logprobs: ``log π_learner(y_t)`` ``(B, T)`` (the rollout's π_old).
        sampler_logprobs: ``log π_sampler(y_t)`` ``(B, T)``.
        mask: response-token mask ``(B, T)``.
        cap: the truncation C (≥ 1; ``generation.tis_cap``).

    Returns:
        ``(B, T)`` float weights without gradient.
    """
    if not cap >= 1.0:
        raise ValueError(f"generation.tis_cap must be >= 1, got {cap}")
    with torch.no_grad():
        ratio = torch.exp(learner_logprobs.float() - sampler_logprobs.float())  # (B, T)
        return torch.where(mask.bool(), ratio.clamp(max=cap), torch.zeros_like(ratio))
