"""Shipped reward functions (``reward.<name>.function``; contract: :mod:`lit_rlhf.rewards.reward_function`).

``word_limit`` is a rule "answers in at most N words" as a ``probability``: 1 within the limit, ``N / n``
for an answer of n > N words. Combined with a Bradley–Terry reward model under
``+transform=logsigmoid`` its term is ``log min(1, N / n)``, so the sum is the log-probability that an
answer is helpful AND short enough (``reward=helpful_word_limit``)::

    python train.py reward=helpful_word_limit +transform=logsigmoid reward.word_limit.function.max_words=20
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a completion: a string, or a conversational ``[{"role": "assistant", "content": …}]``."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion)
    return completion


def word_limit(
    prompts: Sequence[Any],
    completions: Sequence[str | list[dict[str, Any]]],
    max_words: int = 30,
    **columns: Sequence[Any],
) -> list[float | None]:
    """P(the answer respects the word limit): 1 for at most ``max_words`` words, ``max_words / n`` for n more.

    Args:
        prompts: the prompts (unused; part of the reward-function contract).
        completions: the answers, strings or conversational messages.
        max_words: the limit N, unless the dataset has a ``max_words`` column.
        **columns: the dataset's other columns; a ``max_words`` column sets a per-row limit, and a row
            whose limit is None is not applicable (None), e.g. a prompt that asks for an essay.

    Returns:
        One probability (or None) per completion.
    """
    limits = columns.get("max_words") or [max_words] * len(completions)
    out: list[float | None] = []
    for completion, limit in zip(completions, limits):
        if limit is None:
            out.append(None)
            continue
        n = len(completion_text(completion).split())
        out.append(1.0 if n <= limit else float(limit) / n)
    return out
