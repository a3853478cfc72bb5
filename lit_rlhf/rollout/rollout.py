"""Rollouts shared by the policy-optimisation tasks: sampling, response log-probs, end-of-sequence ids.

Two rules keep PPO on-policy with a real checkpoint:

* **the run pins the sampling distribution.** transformers fills every generation field a
  ``GenerationConfig`` leaves unset from the checkpoint's ``generation_config.json`` (repetition penalty,
  ``min_p``, ``no_repeat_ngram_size``, suppressed tokens …; Qwen2.5-Instruct ships a repetition penalty).
  Rollouts would then come from another distribution than the one whose log-probs PPO uses. :func:`generate`
  lends the model a neutral generation config for the call, so only :func:`sampling_config`'s fields act:
  temperature and nothing else. top-k / top-p truncate the distribution, so they are refused rather than
  silently mismatched with the full-softmax log-probs;
* **each row samples from its own random stream** (:mod:`lit_rlhf.rollout.decoding`, Gumbel-max): a response
  depends on its row's seed, not on the other rows of its batch, so DDP ranks holding shards of a global
  batch sample what one process holding all of it would;
* **only the response positions' logits are computed** (``logits_to_keep``): the policy and the reference
  never materialise ``(B, P + R, V)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lit_rlhf.models.heads import position_ids, unwrap
from lit_rlhf.rlhf import logprobs_from_logits
from lit_rlhf.rollout.decoding import gumbel_decoding
from lit_rlhf.training.fsdp import is_sharded, synced


class Rollout(NamedTuple):
    """A batch of B rollouts: P prompt tokens (left padded) followed by R response tokens.

    Attributes:
        prompt_ids: (B,) ids of the prompts (keys of the reference rewards).
        input_ids: (B, P + R) prompt and response; response tokens after the EOS are padding.
        attention_mask: (B, P + R).
        response_mask: (B, R) 1 on response tokens up to and including the EOS.
        logprobs: (B, R) log π_old(y_t | …) at sampling time.
        ref_logprobs: (B, R) log π_ref(y_t | …).
        values: (B, R) critic values V(s_t) before each response token (zeros without a critic).
        scores: (B, K) raw score of each of the K reward models.
        has_eos: (B,) whether the response ended with EOS (else it was cut at ``max_new_tokens``).
        sampler_logprobs: (B, R) log-probs of the sampled tokens under the engine that sampled them
            (``generation=vllm``); ``None`` when the learner sampled them itself (``generation=hf``).
        owed: (n,) rows whose ``logprobs`` the update's first forward fills in (0 until then;
            :mod:`lit_rlhf.training.first_forward`); ``None``: every row's is there.
    """

    prompt_ids: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    scores: Tensor
    has_eos: Tensor
    sampler_logprobs: Tensor | None = None
    owed: Tensor | None = None


def eos_token_ids(tokenizer: PreTrainedTokenizerBase, models: Iterable[nn.Module] = ()) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and each model's generation-config EOS ids.

    Instruct checkpoints often list several (Qwen2.5: ``<|im_end|>`` and ``<|endoftext|>``; Llama-3: the
    end-of-turn and end-of-text tokens). The tokenizer's comes first.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    for m in models:
        gen = getattr(unwrap(m), "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        for i in [extra] if isinstance(extra, int) else list(extra or []):
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer has no eos_token and the model lists no eos_token_id; set one")
    return ids


def sampling_config(
    tokenizer: PreTrainedTokenizerBase,
    eos_ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
) -> GenerationConfig:
    """The one distribution rollouts are sampled from: softmax(logits / temperature), nothing else.

    Raises:
        ValueError: ``top_k`` / ``top_p`` that truncate the distribution (PPO's log-probs are taken under the
            full softmax; sampling from a truncated one would make every ratio off-policy), or a bad length.
    """
    if temperature <= 0:
        raise ValueError(f"task.module.temperature must be > 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"task.module.max_new_tokens must be >= 1, got {max_new_tokens}")
    if top_k not in (0, None):
        raise ValueError(
            f"task.module.top_k={top_k}: top-k sampling truncates the distribution the log-probs are taken "
            "under (the policy-gradient ratio would be off-policy); keep task.module.top_k=0"
        )
    if top_p is not None and top_p < 1.0:
        raise ValueError(
            f"task.module.top_p={top_p}: nucleus sampling truncates the distribution the log-probs are taken "
            "under (the policy-gradient ratio would be off-policy); keep task.module.top_p=1.0"
        )
    return GenerationConfig(
        do_sample=True,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_ids,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
    )


@contextmanager
def pinned_generation(model: nn.Module) -> Iterator[None]:
    """Lend ``model`` a neutral generation config, so its checkpoint's defaults cannot fill unset fields."""
    hf = unwrap(model)
    saved = getattr(hf, "generation_config", None)
    hf.generation_config = GenerationConfig()
    try:
        yield
    finally:
        hf.generation_config = saved


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, then back in the mode it had. Sampling from a model that
    trains with gradient checkpointing in train mode loses the KV cache: transformers turns it off (Llama
    before 4.57, with a warning ``quiet_transformers`` mutes) or, in GPT-2, stops filling it while still
    feeding one token per step, so every token is sampled from a model that sees only itself."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    config: GenerationConfig,
    pad_token_id: int,
    seeds: Tensor | None = None,
    prefill: Callable[[nn.Module, Tensor, Tensor], dict] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample responses to left-padded prompts with the KV cache, from softmax(logits / T) of ``config``.

    Args:
        model: the causal LM.
        input_ids: (B, P) left-padded prompts.
        attention_mask: (B, P).
        config: :func:`sampling_config`'s distribution.
        pad_token_id: written after each response's EOS.
        seeds: (B,) one seed per row (:func:`~lit_rlhf.rollout.decoding.row_seeds`): row i's response is a
            function of its prompt and ``seeds[i]`` alone. ``None``: drawn from torch's global generator.
        prefill: ``(model, input_ids, attention_mask) → extra generate kwargs`` run in eval mode before
            sampling, e.g. :func:`~lit_rlhf.rollout.shared_prefix.prefilled_cache` (a prompt's KV cache
            computed once for its G rows). Not under FSDP, where every rank must run every forward.

    Returns:
        ``(sequences (B, P + R), response_mask (B, R), has_eos (B,))``: the response mask covers the tokens
        up to and including the first EOS (any id of ``config.eos_token_id``); tokens after it are padding.
    """
    if seeds is None:
        seeds = torch.randint(0, 2**62, (input_ids.shape[0],))
    if seeds.shape != input_ids.shape[:1]:
        raise ValueError(f"generate got {tuple(seeds.shape)} seeds for {input_ids.shape[0]} prompts")
    greedy, processors = gumbel_decoding(config, seeds, input_ids.device)
    sharded = is_sharded(model)
    with pinned_generation(model), eval_mode(model):
        extra = prefill(model, input_ids, attention_mask) if prefill is not None and not sharded else {}
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=greedy,
            logits_processor=processors,
            # FSDP2: every forward needs every rank, so a rank whose rows have ended keeps stepping
            synced_gpus=sharded and synced(),
            **extra,
        )
    P = input_ids.shape[1]
    response = out[:, P:]  # (B, R)
    R = response.shape[1]
    eos = torch.as_tensor(list(config.eos_token_id), device=out.device)
    is_eos = torch.isin(response, eos)  # (B, R)
    has_eos = is_eos.any(-1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(-1), torch.full_like(has_eos, R, dtype=torch.long))
    response_mask = torch.arange(R, device=out.device)[None] <= first_eos[:, None]  # incl. EOS
    response = response.masked_fill(~response_mask, pad_token_id)
    return torch.cat([input_ids, response], 1), response_mask.long(), has_eos


@cache
def _class_keeps_logits(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _keeps_logits(model: nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (read once per class, not every forward)."""
    return _class_keeps_logits(type(unwrap(model)))


def token_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, P: int, temperature: float
) -> Tensor:
    """log π(y_t | x, y_<t) of the R response tokens, (B, R), at the sampling temperature.

    Only the logits that predict response tokens are computed (``logits_to_keep = R + 1``, the last one
    dropped): ``(B, R, V)`` instead of ``(B, P + R, V)``.
    """
    R = input_ids.shape[1] - P
    kw = {"logits_to_keep": R + 1} if _keeps_logits(model) else {}
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), **kw
    ).logits
    logits = logits[:, -(R + 1) : -1]  # (B, R, V): position t predicts token t + 1
    return logprobs_from_logits(logits, input_ids[:, P:], temperature)  # fp32, from logits of any dtype
