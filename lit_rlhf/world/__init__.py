"""The embedded synthetic preference world (see ``vocab`` for the language, ``gold`` for the rewards).

Usage::

    files = build_world("data/world", seed=0)
    tok = load_tokenizer(files.tokenizer)
    gold_rewards("explain cooking cost steps please", "pan oven salt cheap first next")
"""

from __future__ import annotations

from lit_rlhf.world.generate import WorldFiles, build_world
from lit_rlhf.world.gold import (
    bayes_ceiling,
    bt_probability,
    gold_harmless,
    gold_helpful,
    gold_rewards,
    gold_rewards_batch,
)
from lit_rlhf.world.responses import (
    REFUSAL,
    argmax_helpful_response,
    ideal_response,
    overoptimised_responses,
    sample_response,
    sample_synthetic,
)
from lit_rlhf.world.tokenizer import build_tokenizer, load_tokenizer
from lit_rlhf.world.vocab import parse_prompt, prompt_groups, vocabulary

__all__ = [
    "REFUSAL",
    "WorldFiles",
    "argmax_helpful_response",
    "bayes_ceiling",
    "bt_probability",
    "build_tokenizer",
    "build_world",
    "gold_harmless",
    "gold_helpful",
    "gold_rewards",
    "gold_rewards_batch",
    "ideal_response",
    "load_tokenizer",
    "overoptimised_responses",
    "parse_prompt",
    "prompt_groups",
    "sample_response",
    "sample_synthetic",
    "vocabulary",
]
