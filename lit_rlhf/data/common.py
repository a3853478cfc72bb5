"""What the three LightningDataModules share: argument checks naming the ``task.datamodule.*`` key,
prompt rendering with a warning for prompts over the token budget, and the DataLoader they build."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from lit_rlhf.data.chat import ChatTemplate, Prompt, check_chat_template, render_prompts
from lit_rlhf.data.tokenize import eos_id

log = logging.getLogger(__name__)
DM = "task.datamodule"  # where every argument below is set

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def check_common(
    tokenizer: PreTrainedTokenizerBase,
    val_fraction: float,
    batch_size: int,
    max_prompt_tokens: int,
    num_workers: int,
    on_error: str,
    chat_template: Any = "auto",
) -> ChatTemplate:
    """Validate the arguments every datamodule shares; errors name the config key. Returns the
    validated ``chat_template``."""
    if tokenizer.pad_token_id is None:
        name = getattr(tokenizer, "name_or_path", "") or "(built in memory)"
        raise ValueError(
            f"the tokenizer {name} has no pad_token: set one in its tokenizer_config.json (e.g. the eos "
            "token), or pick another tokenizer with model.tokenizer_path, so batches can be padded."
        )
    eos_id(tokenizer)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"{DM}.val_fraction must be in [0, 1), got {val_fraction}")
    if batch_size < 1:
        raise ValueError(f"{DM}.batch_size must be >= 1, got {batch_size}")
    if max_prompt_tokens < 1:
        raise ValueError(f"{DM}.max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    if num_workers < 0:
        raise ValueError(f"{DM}.num_workers must be >= 0, got {num_workers}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"{DM}.on_error must be 'raise' or 'skip', got {on_error!r}")
    return check_chat_template(chat_template)


def render(
    tok: PreTrainedTokenizerBase, prompts: list[Prompt], chat_template: ChatTemplate, max_prompt_tokens: int
) -> list[tuple[list[int], int]]:
    """:func:`~lit_rlhf.data.chat.render_prompts`, warning once when prompts are longer than the budget
    (a chat template's system turn alone can fill a budget sized for short plain prompts)."""
    rendered = render_prompts(tok, prompts, chat_template)
    lengths = [len(ids) for ids, _ in rendered]
    n_cut = sum(n > max_prompt_tokens for n in lengths)
    if n_cut:
        log.warning(
            "%d of %d prompts are longer than %s.max_prompt_tokens=%d tokens (longest %d) and lose their "
            "start when truncated; raise it if their text is cut",
            n_cut,
            len(lengths),
            DM,
            max_prompt_tokens,
            max(lengths),
        )
    return rendered


def check_max_length(max_prompt_tokens: int, max_length: int) -> None:
    if max_length <= max_prompt_tokens:
        raise ValueError(
            f"{DM}.max_length ({max_length}) must exceed {DM}.max_prompt_tokens ({max_prompt_tokens}) "
            "to leave room for a response"
        )


def loader(
    items: list[Any],
    batch_size: int,
    collate: Any,
    num_workers: int,
    shuffle_seed: int | None = None,
    **kw: Any,
) -> DataLoader:
    gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    return DataLoader(
        items,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=gen,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        **kw,
    )
