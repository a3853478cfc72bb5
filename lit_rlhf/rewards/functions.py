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
    max_words: int | Sequence[int | None] = 30,
    **columns: Sequence[Any],
) -> list[float | None]:
    """P(the answer keeps to the word limit): 1 for at most N words, ``N / n`` for n > N words.

    Args:
        prompts: the prompts (unused; part of the reward-function contract).
        completions: the answers, strings or conversational messages.
        max_words: the limit N; a dataset column named ``max_words`` arrives here as one limit per row
            (overriding the configured one), and a row whose limit is None is not applicable (None), e.g.
            a prompt that asks for an essay.
        **columns: the dataset's other columns (unused).

    Returns:
        One probability (or None) per completion.
    """
    limits = [max_words] * len(completions) if isinstance(max_words, int | float) else list(max_words)
    out: list[float | None] = []
    for completion, limit in zip(completions, limits):
        n = len(completion_text(completion).split())
        out.append(None if limit is None else 1.0 if n <= limit else float(limit) / n)
    return out
