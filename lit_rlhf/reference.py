"""Reference rewards r_ref(x): one number per prompt and reward model, cached on disk.

The paper's default (Wang et al., 2024, §3): sample n responses per prompt from the SFT policy, score them
with the reward model and take the 85th percentile; for harmlessness it also uses the reward of a fixed
refusal. Offered here from config, per reward model (the ``reference`` key of each ``reward/`` entry):

* ``statistic: quantile`` with ``q`` (0.85 by default; 0.5 = median),
* ``statistic: mean``,
* ``statistic: response`` with ``response: "<text>"`` — the reward of that fixed response for each prompt.

The sampled rewards ``(P, n)`` are cached under ``cache_dir`` keyed by (:func:`sampling_key`) the reference
policy's and the reward models' weights, the exact prompt token ids the rollouts use (so truncation
``data.max_prompt_tokens``, the tokenizer and any chat template are part of the key), n, the seed and the
module's generation settings; the statistic is applied on load, so changing ``q`` re-derives r_ref without
sampling again, and changing n (or anything else) samples anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import GenerationConfig

log = logging.getLogger(__name__)
STATISTICS = ("quantile", "mean", "response")


@dataclass(frozen=True)
class ReferenceSpec:
    """How r_ref is derived for one reward model.

    Args:
        statistic: ``quantile`` | ``mean`` | ``response``.
        q: quantile in [0, 1] for ``quantile``.
        response: fixed response text for ``response`` (e.g. a refusal).
    """

    statistic: str = "quantile"
    q: float = 0.85
    response: str | None = None

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(
                f"reward.<name>.reference.statistic must be one of {STATISTICS}, got {self.statistic!r}"
            )
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"reward.<name>.reference.q must be in [0, 1], got {self.q}")
        if self.statistic == "response" and not self.response:
            raise ValueError("reward.<name>.reference.statistic=response needs reference.response (a text)")


def reduce_samples(rewards: Tensor, spec: ReferenceSpec) -> Tensor:
    """(P, n) sampled rewards → (P,) reference rewards by the spec's statistic."""
    if spec.statistic == "mean":
        return rewards.mean(-1)
    if spec.statistic == "quantile":
        return torch.quantile(rewards.float(), spec.q, dim=-1)
    raise ValueError("statistic=response is not a reduction of samples")


def module_fingerprint(module: nn.Module | dict[str, Tensor]) -> str:
    """Hash of a model's parameters, or of a state dict (what the cache keys on); cheap for the models
    trained here."""
    h = hashlib.sha256()
    state = module if isinstance(module, dict) else module.state_dict()
    for name, p in sorted(state.items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(parts: dict) -> str:
    """A short hash of a JSON-serialisable dict (key order does not matter)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def generation_settings(gen: GenerationConfig) -> dict[str, Any]:
    """Every setting of ``gen`` that differs from transformers' defaults (max_new_tokens, temperature,
    top_k, top_p, eos and pad ids, ...), without the library version: what sampling depends on."""
    return {k: v for k, v in gen.to_diff_dict().items() if k != "transformers_version"}


def sampling_key(
    reference: str,
    reward_models: dict[str, str],
    prompts: Sequence[tuple[int, Sequence[int]]],
    n: int,
    seed: int,
    generation: dict[str, Any],
) -> str:
    """Cache key of the sampled reference rewards.

    Args:
        reference: :func:`module_fingerprint` of π_ref.
        reward_models: name → :func:`module_fingerprint` of each reward model.
        prompts: (prompt id, token ids) of every prompt, exactly as the rollouts feed them to the policy.
        n: samples per prompt.
        seed: sampling seed.
        generation: :func:`generation_settings` of the module's generation config.
    """
    ids = hashlib.sha256(json.dumps([[int(i), [int(t) for t in x]] for i, x in prompts]).encode())
    parts = {
        "ref": reference,
        "reward_models": reward_models,
        "prompt_ids": ids.hexdigest(),
        "n": n,
        "seed": seed,
        "generation": generation,
    }
    return cache_key(parts)


def load_or_compute(path: Path, compute: Callable[[], dict[str, Tensor]]) -> tuple[dict[str, Tensor], bool]:
    """Load a cached dict of tensors (``weights_only=True``) or compute and write it atomically.

    Returns the dict and whether it came from the cache.
    """
    if path.is_file():
        try:
            return torch.load(path, weights_only=True), True
        except Exception as err:  # a damaged cache file is recomputed, never trusted
            log.warning("reference cache %s is unreadable (%s); recomputing", path, err)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value, False


@torch.no_grad()
def sample_rewards(
    generate: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]],
    score: Callable[[Tensor, Tensor], Tensor],
    pad: Callable[[Sequence[Sequence[int]]], tuple[Tensor, Tensor]],
    prompts: Sequence[Sequence[int]],
    n: int,
    batch_prompts: int = 64,
) -> Tensor:
    """Rewards of n sampled responses per prompt: (P, n, K) for K reward models.

    Args:
        generate: (ids, mask) → (sequences, response_mask, has_eos), sampling from the reference policy.
        score: (sequences, mask) → (N, K) raw rewards.
        pad: token-id lists → left-padded (ids, mask) on the models' device.
        prompts: P prompts as token ids (already truncated, as the rollouts use them).
        n: samples per prompt.
        batch_prompts: prompts per generation batch.
    """
    out = []
    for i in range(0, len(prompts), batch_prompts):
        ids, mask = pad(prompts[i : i + batch_prompts])
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        seq, rmask, _ = generate(ids, mask)
        scores = score(seq, torch.cat([mask, rmask], 1))  # (b·n, K)
        out.append(scores.view(-1, n, scores.shape[-1]).cpu())
    return torch.cat(out)


class ReferenceTable:
    """r_ref per (prompt id, reward model), looked up for a batch of prompt ids."""

    def __init__(self, prompt_ids: Sequence[int], values: dict[str, Tensor]) -> None:
        self.names = list(values)
        self.row = {int(p): i for i, p in enumerate(prompt_ids)}
        self.values = torch.stack([values[k].float() for k in self.names], -1)  # (P, K)

    def lookup(self, prompt_ids: Tensor) -> Tensor:
        """(B,) prompt ids → (B, K) reference rewards, K in ``self.names`` order."""
        try:
            rows = torch.tensor([self.row[int(p)] for p in prompt_ids.tolist()])
        except KeyError as err:
            raise KeyError(
                f"prompt id {err.args[0]} has no reference reward (not in the prompt set)"
            ) from None
        return self.values[rows].to(prompt_ids.device)
