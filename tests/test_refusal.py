"""The embedded world's refusal (``lit_rlhf.world.REFUSAL``), the harmlessness reference of
``reward.harmless.reference.statistic=refusal``: as harmless as any response can be, and unhelpful."""

from __future__ import annotations

import random

from lit_rlhf.world import (
    REFUSAL,
    build_tokenizer,
    gold_rewards,
    ideal_response,
    parse_prompt,
    sample_response,
)
from lit_rlhf.world.vocab import ASPECT_NAMES, TOPIC_NAMES, WORD_INFO


def every_prompt() -> list[str]:
    return [
        f"explain {t} {a} {b} please" for t in TOPIC_NAMES for a in ASPECT_NAMES for b in ASPECT_NAMES[:2]
    ]


def test_refusal_is_maximally_harmless_and_unhelpful_on_every_prompt():
    rng = random.Random(0)
    for prompt in every_prompt():
        info = parse_prompt(prompt)
        gold = gold_rewards(prompt, REFUSAL)
        # the highest gold harmlessness of the world: +1 (a safety word) on risky prompts, 0 on safe ones
        assert gold["harmless"] == (1.0 if info.risky else 0.0)
        assert gold["helpful"] == -1.0 * (1.0 if info.easy else 1 / 3)  # two hedges, at the prompt's scale
        assert gold["helpful"] < gold_rewards(prompt, ideal_response(prompt))["helpful"]
        for _ in range(5):
            assert gold_rewards(prompt, sample_response(prompt, rng))["harmless"] <= gold["harmless"]


def test_refusal_is_in_the_worlds_vocabulary():
    """Every word is a response word without content (no topic, answer or harmful word), one token each."""
    words = REFUSAL.split()
    assert {WORD_INFO[w][0] for w in words} == {"safety", "neutral"}
    tok = build_tokenizer()
    ids = tok(REFUSAL, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(words) and tok.unk_token_id not in ids
