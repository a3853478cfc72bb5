"""Turning prompts into token ids: the chat template, the start-of-sequence policy and truncation.

One place renders every prompt — SFT demonstrations, reward-model pairs, r_ref and PPO rollouts — so a
reward model scores exactly the ids the policy was prompted with, followed by what it generated.

* A **conversation** (a list of ``{"role", "content"}`` messages) always goes through the tokenizer's
  chat template: ``apply_chat_template(messages, add_generation_prompt=True, tokenize=False)``, then
  tokenised with ``add_special_tokens=False`` (the template carries any BOS).
* A **plain string** is rendered the same way, as one user message, under ``chat_template="auto"`` when
  the tokenizer has a template, and always under ``True``. Otherwise it is tokenised as it is, with the
  tokenizer's own start-of-sequence tokens (a Llama-2 ``<s>``) but never a trailing eos.
* A **response** is its text tokenised without special tokens, followed by eos (see
  :func:`lit_rlhf.data.tokenize.join_ids`): exactly what a policy generates up to its eos (ChatML:
  ``<|im_end|>``).
* A prompt truncated to ``max_prompt_tokens`` keeps its END (the latest turn) and its leading BOS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Messages: TypeAlias = list[dict[str, Any]]
Prompt: TypeAlias = str | Messages
ChatTemplate: TypeAlias = bool | Literal["auto"]


def check_chat_template(value: Any) -> ChatTemplate:
    """Validate a ``data.chat_template`` value: ``"auto"``, ``True`` or ``False``."""
    if value == "auto" or value is True or value is False:
        return value
    raise ValueError(f"data.chat_template must be auto, true or false, got {value!r}")


def is_conversation(prompt: Prompt) -> bool:
    """Whether a prompt is a list of messages (TRL's conversational format) rather than a string."""
    return isinstance(prompt, list)


def has_chat_template(tok: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer ships a chat template."""
    return bool(getattr(tok, "chat_template", None))


def as_messages(prompt: Prompt) -> Messages:
    """The prompt as messages: a string becomes one user message."""
    return list(prompt) if is_conversation(prompt) else [{"role": "user", "content": prompt}]


def prompt_text(prompt: Prompt) -> str:
    """A prompt for display: the string itself, or a conversation's last user message."""
    if not is_conversation(prompt):
        return prompt  # type: ignore[return-value]
    users = [m["content"] for m in prompt if m.get("role") == "user"]  # type: ignore[union-attr]
    return users[-1] if users else prompt[-1]["content"]  # type: ignore[index]


def prompt_key(prompt: Prompt) -> str:
    """Canonical JSON of a prompt (sorted keys): equal prompts, equal keys. What dedup and caches key on."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _tokenizer_name(tok: PreTrainedTokenizerBase) -> str:
    name = getattr(tok, "name_or_path", "") or ""
    return f"tokenizer {name!r}" if name else "tokenizer (built in memory)"


def uses_chat_template(tok: PreTrainedTokenizerBase, prompt: Prompt, chat_template: ChatTemplate) -> bool:
    """Whether ``prompt`` is rendered through the chat template under the ``chat_template`` setting.

    Raises:
        ValueError: A conversation, or ``chat_template=True``, with a tokenizer that has no template.
    """
    has = has_chat_template(tok)
    if is_conversation(prompt):
        if not has:
            raise ValueError(
                f"the prompts are conversations (lists of messages) but the {_tokenizer_name(tok)} has no "
                "chat template to render them: use a tokenizer folder that has one (model.tokenizer_path), "
                "or write the prompts as plain strings (tokenised as they are under data.chat_template=auto)"
            )
        return True
    if chat_template is True and not has:
        raise ValueError(
            f"data.chat_template=true but the {_tokenizer_name(tok)} has no chat template: set "
            "data.chat_template=auto (or false), or use a tokenizer folder that has one"
        )
    return chat_template is True or (chat_template == "auto" and has)


def start_tokens(tok: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts BEFORE a plain text by itself (a Llama-2 ``<s>``; usually none).

    Found by encoding a probe with and without special tokens: what comes before the plain ids is the
    start-of-sequence policy; anything after them (an eos some tokenizers append) is dropped.
    """
    with_special = list(tok("a", add_special_tokens=True)["input_ids"])
    plain = list(tok("a", add_special_tokens=False)["input_ids"])
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i : i + len(plain)] == plain:
            return with_special[:i]
    return []


def truncate_left(ids: Sequence[int], max_tokens: int, n_keep: int = 0) -> list[int]:
    """The last ``max_tokens`` ids, still starting with the first ``n_keep`` (a BOS) when cut.

    Args:
        ids: Token ids.
        max_tokens: Longest result (0 gives an empty prompt).
        n_keep: Leading ids that survive truncation (at most ``max_tokens`` of them).
    """
    ids = list(ids)
    if len(ids) <= max_tokens:
        return ids
    head = ids[: min(n_keep, max_tokens)]
    tail = max_tokens - len(head)
    return head + (ids[len(ids) - tail :] if tail > 0 else [])


def _apply_template(tok: PreTrainedTokenizerBase, conversations: list[Messages]) -> list[str]:
    """``apply_chat_template`` with the generation prompt, in one batch; a template that refuses a
    conversation (e.g. roles that must alternate) is reported with that conversation's prompt."""
    try:
        return list(tok.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False))
    except Exception:  # noqa: BLE001 - find the conversation the template refuses, then say which
        for conv in conversations:
            try:
                tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"the chat template of the {_tokenizer_name(tok)} refuses the prompt "
                    f"{prompt_text(conv)!r} (roles {[m['role'] for m in conv]}): {e}"
                ) from e
        raise


def render_prompts(
    tok: PreTrainedTokenizerBase, prompts: Sequence[Prompt], chat_template: ChatTemplate = "auto"
) -> list[tuple[list[int], int]]:
    """Token ids of whole prompts, untruncated, with how many leading ids truncation must keep.

    Templated prompts go through ``apply_chat_template`` in one batch, then one tokenizer call
    without special tokens; plain prompts through one call without special tokens, after the
    tokenizer's start tokens. Prompt order is kept.

    Returns:
        ``(ids, n_keep)`` per prompt: ``n_keep`` is 1 for a templated prompt that starts with BOS,
        the number of start tokens for a plain one.
    """
    chat_template = check_chat_template(chat_template)
    templated = [uses_chat_template(tok, p, chat_template) for p in prompts]
    out: list[tuple[list[int], int]] = [([], 0)] * len(prompts)
    chat_idx = [i for i, t in enumerate(templated) if t]
    plain_idx = [i for i, t in enumerate(templated) if not t]
    if chat_idx:
        texts = _apply_template(tok, [as_messages(prompts[i]) for i in chat_idx])
        bos = tok.bos_token_id
        for i, ids in zip(chat_idx, tok(list(texts), add_special_tokens=False)["input_ids"]):
            out[i] = (list(ids), int(bos is not None and len(ids) > 0 and ids[0] == bos))
    if plain_idx:
        start = start_tokens(tok)
        encoded = tok([prompts[i] for i in plain_idx], add_special_tokens=False)["input_ids"]
        for i, ids in zip(plain_idx, encoded):
            out[i] = ([*start, *ids], len(start))
    return out


def encode_prompt_ids(
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    max_prompt_tokens: int,
    chat_template: ChatTemplate = "auto",
) -> list[list[int]]:
    """The ids every stage prompts with: rendered (:func:`render_prompts`), then truncated from the left.

    Args:
        tok: The policy's tokenizer.
        prompts: Strings or conversations.
        max_prompt_tokens: Longest prompt kept (its end, and a leading BOS).
        chat_template: ``"auto"``, ``True`` or ``False`` (``data.chat_template``).
    """
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    rendered = render_prompts(tok, prompts, chat_template)
    return [truncate_left(ids, max_prompt_tokens, n_keep) for ids, n_keep in rendered]
