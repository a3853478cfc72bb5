"""Tokenisation with truncation, and the collators that pad batches.

A sequence is ``prompt_ids + response_ids + [eos]``: the prompt rendered by :mod:`lit_rlhf.data.chat`
(through the chat template, or plain with the tokenizer's start tokens), the response tokenised without
special tokens. Truncation keeps what matters for RLHF:

* the prompt keeps its END (``max_prompt_tokens``, dropped from the left: the latest turn survives) and
  its leading BOS;
* the whole sequence keeps the START of the response (``max_length``; the response tail is cut and the
  eos dropped, so a truncated sequence is recognisable by its missing eos).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

import torch

from lit_rlhf.data.chat import ChatTemplate, Prompt, encode_prompt_ids, render_prompts, truncate_left

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class SFTItem(TypedDict):
    """One pre-tokenised demonstration: ``input_ids`` and how many of them are prompt."""

    input_ids: list[int]
    n_prompt: int


class PreferenceItem(TypedDict):
    """One pre-tokenised pair: the full chosen and rejected sequences (each with its prompt)."""

    chosen_ids: list[int]
    rejected_ids: list[int]


class PromptItem(TypedDict):
    """One pre-tokenised prompt: its record id, its text for display (:func:`~lit_rlhf.data.chat.prompt_text`)
    and the exact ids rollouts (and r_ref) prompt with."""

    id: int
    prompt: str
    input_ids: list[int]


def eos_id(tok: PreTrainedTokenizerBase) -> int:
    """The tokenizer's eos id, or a clear error naming the config key."""
    if tok.eos_token_id is None:
        name = getattr(tok, "name_or_path", "") or "(built in memory)"
        raise ValueError(
            f"the tokenizer {name} has no eos_token: set one in its tokenizer_config.json, or pick another "
            "tokenizer with model.tokenizer_path (sequences end with eos)"
        )
    return int(tok.eos_token_id)


def batch_ids(tok: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Tokenise many texts in one batch call, without special tokens."""
    if not texts:
        return []
    return [list(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def join_ids(
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    eos_token_id: int,
    max_prompt_tokens: int,
    max_length: int,
    n_keep: int = 0,
) -> tuple[list[int], int]:
    """Truncate and concatenate already-tokenised prompt and response.

    Args:
        prompt_ids: Prompt tokens (the last ``max_prompt_tokens`` are kept, after the first ``n_keep``).
        response_ids: Response tokens (the first ones that fit in ``max_length`` are kept).
        eos_token_id: Appended after the response when it fits.
        max_prompt_tokens: Longest prompt kept.
        max_length: Longest whole sequence; must exceed ``max_prompt_tokens``.
        n_keep: Leading prompt tokens (a BOS) that survive truncation.

    Returns:
        ``(ids, n_prompt)``: the sequence and the number of prompt tokens at its start.
    """
    if max_length <= max_prompt_tokens:
        raise ValueError(f"max_length ({max_length}) must exceed max_prompt_tokens ({max_prompt_tokens})")
    prompt = truncate_left(prompt_ids, max_prompt_tokens, n_keep)
    budget = max_length - len(prompt)
    response = [*response_ids, eos_token_id]
    if len(response) > budget:
        response = list(response_ids[:budget])  # truncated: no eos
    return prompt + response, len(prompt)


def encode_prompt(
    tok: PreTrainedTokenizerBase, prompt: Prompt, max_prompt_tokens: int, chat_template: ChatTemplate = "auto"
) -> list[int]:
    """Render a prompt (:mod:`lit_rlhf.data.chat`) and keep its last ``max_prompt_tokens`` tokens."""
    return encode_prompts(tok, [prompt], max_prompt_tokens, chat_template)[0]


def encode_prompts(
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    max_prompt_tokens: int,
    chat_template: ChatTemplate = "auto",
) -> list[list[int]]:
    """Batch version of :func:`encode_prompt`; see :func:`lit_rlhf.data.chat.encode_prompt_ids`."""
    return encode_prompt_ids(tok, prompts, max_prompt_tokens, chat_template)


def encode_example(
    tok: PreTrainedTokenizerBase,
    prompt: Prompt,
    response: str,
    max_prompt_tokens: int,
    max_length: int,
    chat_template: ChatTemplate = "auto",
) -> tuple[list[int], int]:
    """Tokenise ``prompt + response + eos`` with truncation; see :func:`join_ids`.

    Returns:
        ``(ids, n_prompt)``.
    """
    return encode_examples(tok, [prompt], [response], max_prompt_tokens, max_length, chat_template)[0]


def encode_examples(
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    max_prompt_tokens: int,
    max_length: int,
    chat_template: ChatTemplate = "auto",
) -> list[tuple[list[int], int]]:
    """Batch version of :func:`encode_example`: prompts rendered once, responses in one tokenizer call."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    eos = eos_id(tok)
    return [
        join_ids(p, r, eos, max_prompt_tokens, max_length, n_keep=n)
        for (p, n), r in zip(render_prompts(tok, prompts, chat_template), batch_ids(tok, responses))
    ]


def _pad(seqs: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    """Pad lists of ints to one (B, T) LongTensor, on the right (default) or the left."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        if s:
            row = torch.as_tensor(s, dtype=torch.long)
            if left:
                out[i, width - len(s) :] = row
            else:
                out[i, : len(s)] = row
    return out


def _mask(seqs: Sequence[Sequence[int]], left: bool = False) -> torch.Tensor:
    lengths = torch.tensor([len(s) for s in seqs])  # (B,)
    pos = torch.arange(max(len(s) for s in seqs))  # (T,)
    if left:
        return (pos[None, :] >= (pos.numel() - lengths)[:, None]).long()
    return (pos[None, :] < lengths[:, None]).long()  # (B, T)


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_token_id: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists → padded ``(input_ids, attention_mask)``, both (B, T); left padding for generation."""
    return _pad(seqs, pad_token_id, left=left), _mask(seqs, left=left)


class SFTCollator:
    """Right-pads demonstrations; loss only on response tokens and eos.

    Returns:
        ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B, T) equal to ``input_ids`` except
        -100 on prompt tokens and padding (labels are not shifted; HF causal LMs shift internally).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[SFTItem]) -> dict[str, torch.Tensor]:
        seqs = [it["input_ids"] for it in items]
        input_ids = _pad(seqs, self.pad_token_id)  # (B, T)
        attention_mask = _mask(seqs)  # (B, T)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        for i, it in enumerate(items):
            labels[i, : it["n_prompt"]] = IGNORE_INDEX
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PreferenceCollator:
    """Stacks chosen and rejected into ONE right-padded batch, so a reward model scores both at once.

    Returns:
        ``input_ids`` (2B, T) and ``attention_mask`` (2B, T): rows ``[:B]`` are chosen, ``[B:]`` rejected
        (row ``i`` and ``B + i`` are the same pair).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[PreferenceItem]) -> dict[str, torch.Tensor]:
        seqs = [it["chosen_ids"] for it in items] + [it["rejected_ids"] for it in items]
        return {"input_ids": _pad(seqs, self.pad_token_id), "attention_mask": _mask(seqs)}


class PromptCollator:
    """Left-pads prompts for generation (new tokens then follow every prompt directly).

    Returns:
        ``input_ids`` (B, T) and ``attention_mask`` (B, T), left-padded; ``prompt_ids`` (B,) the
        :class:`~lit_rlhf.data.jsonl.PromptRecord` ids; ``prompts`` the texts (list[str]).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[PromptItem]) -> dict[str, torch.Tensor | list[str]]:
        seqs = [it["input_ids"] for it in items]
        return {
            "input_ids": _pad(seqs, self.pad_token_id, left=True),
            "attention_mask": _mask(seqs, left=True),
            "prompt_ids": torch.tensor([it["id"] for it in items], dtype=torch.long),
            "prompts": [it["prompt"] for it in items],
        }
