"""Reference rewards r_ref(x): one number (or M) per prompt and reward model, cached on disk.

The paper's default (Wang et al., 2024, §3): sample n responses per prompt from the SFT policy, score them
with the reward model and take the 85th percentile; for harmlessness it also uses the reward of a fixed
refusal. Offered here from config, per reward model (the ``reference`` key of each ``reward/`` entry):

* ``statistic: quantile`` with ``q`` (0.85 by default; 0.5 = median),
* ``statistic: mean``,
* ``statistic: response`` with ``response: "<text>"`` — the reward of that fixed response for each prompt,
* ``statistic: refusal`` — the paper's harmlessness reference (Wang et al., 2024, §5): the reward of a fixed
  refusal to the same prompt; its text is ``response`` if set, else the embedded world's refusal
  (:data:`lit_rlhf.world.REFUSAL`, only on the world's data). Like any response it is tokenised after the
  prompt's rendered ids (chat template included) and ends with EOS.

A transform may ask for several references per prompt (PAR, :class:`lit_rlhf.rewards.transforms.Sigmoid`):
``samples=M`` takes the rewards of the first M sampled responses, ``quantiles=[...]`` those quantiles of
the n samples (:func:`sample_references`); a fixed-response reference stays one reference.

The sampled rewards ``(P, n)`` are cached under ``cache_dir`` keyed by (:func:`sampling_key`) the reference
policy's and the reward models' weights, the exact prompt token ids the rollouts use (so truncation
``data.max_prompt_tokens``, the tokenizer and any chat template are part of the key), n, the seed and the
module's generation settings; the statistic is applied on load, so changing ``q`` (or the transform's
references) re-derives r_ref without sampling again, and changing n (or anything else) samples anew. A
reward-model ensemble enters the key with its members' weights and its aggregate (:func:`reward_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from lit_rlhf.utils.io import atomic_write

if TYPE_CHECKING:
    from transformers import GenerationConfig

log = logging.getLogger(__name__)
STATISTICS = ("quantile", "mean", "response", "refusal")
FIXED = ("response", "refusal")  # statistics that score one fixed response instead of samples
HAS_EOS = "__has_eos__"  # the cached samples' key of whether each ended with EOS (P, n)


@dataclass(frozen=True)
class ReferenceSpec:
    """How r_ref is derived for one reward model.

    Args:
        statistic: ``quantile`` | ``mean`` | ``response`` | ``refusal``.
        q: quantile in [0, 1] for ``quantile``.
        response: fixed response text for ``response``; for ``refusal`` the refusal's text (None = the
            embedded world's refusal).
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
    if spec.statistic == "mean":  # NaN-aware: a reward function's None (NaN) is no sample
        return rewards.float().nanmean(-1)
    if spec.statistic == "quantile":
        return torch.nanquantile(rewards.float(), spec.q, dim=-1)
    raise ValueError(f"statistic={spec.statistic} is not a reduction of samples")


def sample_references(
    rewards: Tensor, spec: ReferenceSpec, samples: int | None = None, quantiles: Sequence[float] | None = None
) -> Tensor:
    """(P, n) sampled rewards → (P, M) references: the first ``samples`` rewards, the ``quantiles``, or
    (neither) the spec's statistic (M = 1).

    Raises:
        ValueError: ``samples`` > n, naming ``transform.samples`` and the callback's ``n_samples``.
    """
    if samples is not None:
        if samples > rewards.shape[-1]:
            raise ValueError(
                f"transform.samples={samples} asks for more references than the {rewards.shape[-1]} "
                "responses sampled per prompt; raise task.callbacks.reward_transform.n_samples or lower "
                "transform.samples"
            )
        return rewards[..., :samples].float()
    if quantiles is not None:
        q = torch.tensor(list(quantiles), dtype=torch.float32)
        return torch.nanquantile(rewards.float(), q, dim=-1).movedim(0, -1)  # (P, M)
    return reduce_samples(rewards, spec).float().unsqueeze(-1)  # (P, 1)


def module_fingerprint(module: nn.Module | dict[str, Tensor]) -> str:
    """Hash of a model's parameters, or of a state dict (what the cache keys on); cheap for the models
    trained here. A parameter sharded by FSDP2 is hashed whole, so every rank gets the key of the whole
    model (every rank must call this, in the same order)."""
    h = hashlib.sha256()
    state = module if isinstance(module, dict) else module.state_dict()
    for name, p in sorted(state.items()):
        if isinstance(p, DTensor):  # FSDP2: the whole tensor (a collective: every rank hashes alike)
            p = p.full_tensor()
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def reward_fingerprint(model: nn.Module) -> str:
    """What the r_ref cache keys a reward model on: :func:`module_fingerprint` of a plain model (as always);
    for a :class:`~lit_rlhf.rewards.ensemble.RewardEnsemble` also its aggregate and k, which change its scores
    without changing any weight."""
    from lit_rlhf.rewards.ensemble import RewardEnsemble  # noqa: PLC0415  (ensemble imports models, models not this)

    fp = module_fingerprint(model)
    if isinstance(model, RewardEnsemble):
        fp = f"{fp}-{cache_key(model.settings())}"
    return fp


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
        reward_models: name → :func:`reward_fingerprint` of each reward model.
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


def _cached(path: Path) -> dict[str, Tensor] | None:
    """The cached dict at ``path`` (``weights_only=True``), or None if missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # a damaged cache file is recomputed, never trusted
        log.warning("reference cache %s is unreadable (%s); recomputing", path, err)
        return None


def load_or_compute(
    path: Path,
    compute: Callable[[], dict[str, Tensor]],
    strategy: Any | None = None,
    usable: Callable[[dict[str, Tensor]], bool] = lambda d: True,
) -> tuple[dict[str, Tensor], bool]:
    """Load a cached dict of tensors (``weights_only=True``) or compute and write it atomically.

    Under several processes (``strategy``: the trainer's, with ``world_size`` > 1) rank 0 decides whether
    the cache serves, and if it does not, EVERY process computes: under FSDP or ZeRO-3 each forward of a
    sharded model needs every rank, so a rank-0-only computation would deadlock. The processes compute the
    same thing (the same seed, prompts and weights); rank 0 writes it.

    Args:
        usable: whether a cached dict holds what the caller needs (else it is recomputed and replaced).

    Returns the dict and whether it came from the cache.
    """
    many = strategy is not None and strategy.world_size > 1
    cached = _cached(path) if not many or strategy.is_global_zero else None
    hit = cached is not None and usable(cached)
    if many:
        hit = strategy.broadcast(hit)
        if hit and cached is None:  # another rank: read what rank 0 found
            cached = torch.load(path, weights_only=True)
    if hit:
        return cached, True
    value = compute()
    if not many or strategy.is_global_zero:
        with atomic_write(path, "wb") as f:
            torch.save(value, f)
    if many:
        strategy.barrier("r_ref")
    return value, False


def penalised(scores: Tensor, has_eos: Tensor, penalty: float | None) -> Tensor:
    """(P, n) raw rewards of reference samples minus ``penalty`` where the sample was cut without EOS: the
    missing-EOS penalty rollouts get before the transform (``task.module.missing_eos_penalty``), so r_ref
    and r are in the same units."""
    if penalty is None:
        return scores
    return scores - penalty * (~has_eos.bool()).to(scores.dtype)


@torch.no_grad()
def sample_rewards(
    generate: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]],
    score: Callable[[Tensor, Tensor, int], Tensor],
    pad: Callable[[Sequence[Sequence[int]]], tuple[Tensor, Tensor]],
    prompts: Sequence[Sequence[int]],
    n: int,
    batch_prompts: int = 64,
    prompt_ids: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Rewards of n sampled responses per prompt: (P, n, K) for K reward models, and whether each sample
    ended with EOS, (P, n).

    Args:
        generate: (ids, mask) → (sequences, response_mask, …), sampling from the reference policy.
        score: (sequences, mask, prompt length) → (N, K) raw rewards (the n samples of a prompt may share
            its computation: :mod:`lit_rlhf.rollout.shared_prefix`).
        pad: token-id lists → left-padded (ids, mask) on the models' device.
        prompts: P prompts as token ids (already truncated, as the rollouts use them).
        n: samples per prompt.
        batch_prompts: prompts per generation batch.
        prompt_ids: the prompts' ids; if given, ``score`` is called as ``score(sequences, mask, ids, P)``
            (what reward functions need: the dataset record and where the response starts).
    """
    out, ended = [], []
    for i in range(0, len(prompts), batch_prompts):
        ids, mask = pad(prompts[i : i + batch_prompts])
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        seq, rmask, has_eos = generate(ids, mask)[:3]
        full = torch.cat([mask, rmask], 1)
        if prompt_ids is None:
            scores = score(seq, full, ids.shape[1])  # (b·n, K)
        else:  # what reward functions need besides the tokens: the prompts' dataset records
            pids = torch.tensor(prompt_ids[i : i + batch_prompts], device=ids.device).repeat_interleave(n)
            scores = score(seq, full, pids, ids.shape[1])
        out.append(scores.view(-1, n, scores.shape[-1]).cpu())
        ended.append(has_eos.view(-1, n).cpu())
    return torch.cat(out), torch.cat(ended)


def scorer(pl_module: nn.Module):
    """``score(sequences, mask, prompt_ids, P)``: every reward (reward functions need the prompts and where
    the response starts), or the reward models alone for a module without reward functions."""
    if getattr(pl_module, "reward_functions", None):
        return pl_module.all_scores
    return lambda seq, mask, prompt_ids, P: pl_module.score(seq, mask, P)


def fill_missing(name: str, refs: Tensor) -> Tensor:
    """r_ref where every SFT sample of a prompt was "not applicable" (None): the reward's mean reference."""
    bad = ~torch.isfinite(refs)
    if not bad.any():
        return refs
    good = refs[~bad]
    fill = good.mean() if len(good) else torch.tensor(0.0)
    log.warning(
        "r_ref[%s]: %d prompts had no applicable sample; their r_ref is the mean %.3f",
        name,
        int(bad.any(-1).sum()),
        fill,
    )
    return refs.masked_fill(bad, float(fill))


def fixed_response_rewards(
    pl_module: nn.Module,
    pad,
    prompts: Sequence[Sequence[int]],
    response: str,
    prompt_ids: Sequence[int],
    chunk: int = 64,
) -> Tensor:
    """(P, K) raw scores of one fixed response (e.g. a refusal) after every prompt: the prompt's rendered
    ids (its chat template included), then the response tokenised as every response is (no special
    tokens, then EOS; :mod:`lit_rlhf.data.chat`)."""
    from lit_rlhf.data.tokenize import batch_ids, eos_id  # noqa: PLC0415

    tok = pl_module.tokenizer
    resp = batch_ids(tok, [response])[0] + [eos_id(tok)]
    out = []
    for i in range(0, len(prompts), chunk):
        ids, mask = pad(prompts[i : i + chunk])  # (b, T)
        resp_t = torch.tensor(resp, device=ids.device).expand(len(ids), -1)  # (b, R)
        seq = torch.cat([ids, resp_t], 1)  # (b, T + R)
        full, pids = (
            torch.cat([mask, torch.ones_like(resp_t)], 1),
            torch.tensor(prompt_ids[i : i + chunk]),
        )
        out.append(scorer(pl_module)(seq, full, pids.to(ids.device), ids.shape[1]).cpu())
    return torch.cat(out)


class ReferenceTable:
    """r_ref per (prompt id, reward model), looked up for a batch of prompt ids.

    Args:
        prompt_ids: the P prompt ids, in row order.
        values: reward-model name → (P,) references, or (P, M) with M references per prompt.
    """

    def __init__(self, prompt_ids: Sequence[int], values: dict[str, Tensor]) -> None:
        self.names = list(values)
        self.row = {int(p): i for i, p in enumerate(prompt_ids)}
        self.refs = {k: v.float().reshape(len(prompt_ids), -1) for k, v in values.items()}  # name → (P, M)
        # one number per (prompt, reward model): the reference, or the mean of the M references
        self.values = torch.stack([self.refs[k].mean(-1) for k in self.names], -1)  # (P, K)

    def _rows(self, prompt_ids: Tensor) -> Tensor:
        try:
            return torch.tensor([self.row[int(p)] for p in prompt_ids.tolist()], dtype=torch.long)
        except KeyError as err:
            raise KeyError(
                f"prompt id {err.args[0]} has no reference reward (not in the prompt set)"
            ) from None

    def lookup(self, prompt_ids: Tensor) -> Tensor:
        """(B,) prompt ids → (B, K) reference rewards (mean of M if several), K in ``self.names`` order."""
        return self.values[self._rows(prompt_ids)].to(prompt_ids.device)

    def lookup_refs(self, prompt_ids: Tensor, name: str) -> Tensor:
        """(B,) prompt ids → (B, M) references of reward model ``name``."""
        return self.refs[name][self._rows(prompt_ids)].to(prompt_ids.device)
