"""Response samplers of the embedded world: demonstrations, synthetic pairs, contrasts and probes.

All samplers take a ``random.Random`` so a world is reproducible for a seed, and never iterate over
sets of strings (string hashing is salted per process).
"""

from __future__ import annotations

import random

from lit_rlhf.world.gold import TOPIC_CAP
from lit_rlhf.world.vocab import (
    ASPECT_NAMES,
    ASPECTS,
    FILLER,
    FUNCTION,
    HARMFUL,
    POLITE,
    RUDE,
    SAFETY,
    TOPIC_NAMES,
    TOPICS,
    WORD_INFO,
    PromptInfo,
    parse_prompt,
)

MAX_RESPONSE_WORDS = 14  # demonstrations and pairs never exceed this many words
# The world's refusal: hedges and function words, no content. Its gold harmlessness is the highest any
# response gets (0 on safe prompts, +1 on risky ones: no harmful or rude word, a safety word), its gold
# helpfulness -1 (two safety hedges, times the prompt's scale) — what `reference.statistic=refusal` scores
# as the harmlessness reference (Wang et al., 2024, §5).
REFUSAL = "use caution and a professional"
RISKY_TOPICS = tuple(i for i, t in enumerate(TOPIC_NAMES) if TOPICS[t][1])

# Demonstration mixture: how many distinct topic words (0..3) and answer words per asked aspect (0..2).
# Hard topics use their relevant words far less often, so SFT responses to hard prompts sit lower.
SFT_TOPIC_WEIGHTS = {True: (0.10, 0.25, 0.35, 0.30), False: (0.40, 0.35, 0.17, 0.08)}
SFT_ASPECT_WEIGHTS = {True: (0.35, 0.40, 0.25), False: (0.75, 0.20, 0.05)}
# Own-topic harmful words (0..2) on risky prompts: a demonstrator who answers fully (>= 2 topic words)
# also tends to share harmful details, a cautious one hedges instead; this is the conflict.
HARMFUL_WEIGHTS = {True: (0.30, 0.40, 0.30), False: (0.80, 0.15, 0.05)}


def topic_words(topic: int) -> tuple[str, ...]:
    """The 8 relevant words of a topic (index into ``TOPIC_NAMES``)."""
    return TOPICS[TOPIC_NAMES[topic]][0]


def harmful_words(topic: int) -> tuple[str, ...]:
    """Harmful words of a risky topic (empty for a safe one)."""
    return HARMFUL.get(TOPIC_NAMES[topic], ()) if topic >= 0 else ()


def _assemble(content: list[str], rng: random.Random, n_neutral: int, polite: bool) -> list[str]:
    """Shuffle content words, sprinkle neutral words (at least one word in all), cut to 14 words."""
    rng.shuffle(content)
    n_neutral = max(not content, min(n_neutral, MAX_RESPONSE_WORDS - len(content) - polite))
    words = content[:MAX_RESPONSE_WORDS]
    for _ in range(n_neutral):
        pool = FUNCTION if rng.random() < 0.7 else FILLER
        words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
    if polite and len(words) < MAX_RESPONSE_WORDS:
        w = rng.choice(POLITE)
        words = [w, *words] if rng.random() < 0.5 else [*words, w]
    return words


def _other(rng: random.Random, n: int, exclude: tuple[int, ...]) -> int:
    """A random index in ``range(n)`` not in ``exclude``."""
    return rng.choice([i for i in range(n) if i not in exclude])


def _draw(
    info: PromptInfo,
    rng: random.Random,
    topic_w: tuple[float, ...],
    aspect_w: tuple[float, ...],
    p_unasked: float,
    p_off: float,
    p_safety: float,
    p_rude: float,
    p_repeat: float,
) -> list[str]:
    """One in-cap response: never more than ``TOPIC_CAP`` topic words, never past 14 words."""
    content: list[str] = []
    k_topic = rng.choices(range(len(topic_w)), weights=topic_w)[0] if info.topic >= 0 else 0
    content += rng.sample(topic_words(info.topic), min(k_topic, TOPIC_CAP)) if k_topic else []
    for a in info.aspects:
        k = rng.choices(range(len(aspect_w)), weights=aspect_w)[0]
        content += rng.sample(ASPECTS[ASPECT_NAMES[a]], k)
    if rng.random() < p_unasked and len(info.aspects) < len(ASPECT_NAMES):
        content.append(rng.choice(ASPECTS[ASPECT_NAMES[_other(rng, len(ASPECT_NAMES), info.aspects)]]))
    if rng.random() < p_off:
        content.append(rng.choice(topic_words(_other(rng, len(TOPIC_NAMES), (info.topic,)))))
    if info.risky:
        k = rng.choices(range(3), weights=HARMFUL_WEIGHTS[k_topic >= 2])[0]
        content += rng.sample(harmful_words(info.topic), k)
        p_safety *= 0.5 if k else 1.5
    if rng.random() < p_safety:
        content.append(rng.choice(SAFETY))
    if rng.random() < p_rude:
        content.append(rng.choice(RUDE))
    if content and rng.random() < p_repeat:
        content.append(rng.choice(content))
    return _assemble(content, rng, n_neutral=rng.randint(0, 4), polite=rng.random() < 0.25)


def sample_response(prompt: str, rng: random.Random) -> str:
    """A response from the demonstration (SFT) distribution of the world."""
    info = parse_prompt(prompt)
    tw, aw = SFT_TOPIC_WEIGHTS[info.easy], SFT_ASPECT_WEIGHTS[info.easy]
    return " ".join(_draw(info, rng, tw, aw, 0.2, 0.15, 0.3, 0.1, 0.03))


def sample_synthetic(prompt: str, rng: random.Random) -> str:
    """An in-cap response with uniform feature counts: covers the range demonstrations rarely reach."""
    info = parse_prompt(prompt)
    return " ".join(_draw(info, rng, (1, 1, 1, 1), (1, 1, 1), 0.3, 0.3, 0.3, 0.2, 0.03))


def contrast_helpful(prompt: str, response: str, rng: random.Random) -> str | None:
    """The same response with its topic words moved to another topic and/or its asked-aspect answers
    moved to an unasked aspect. Teaches a reward model that relevance depends on the prompt.

    Returns:
        The contrast response, or None if the response has nothing to swap.
    """
    info = parse_prompt(prompt)
    words = response.split()
    has_topic = any(WORD_INFO.get(w) == ("topic", info.topic) for w in words)
    has_answer = any(
        WORD_INFO.get(w, ("", -1))[0] == "answer" and WORD_INFO[w][1] in info.aspects for w in words
    )
    ops = [op for op, ok in (("topic", has_topic), ("aspect", has_answer)) if ok]
    if not ops:
        return None
    if len(ops) == 2:
        ops = rng.choice((["topic"], ["aspect"], ops))
    new_topic = _other(rng, len(TOPIC_NAMES), (info.topic,))
    new_topic_words = list(rng.sample(topic_words(new_topic), 8))
    swaps = {a: _other(rng, len(ASPECT_NAMES), info.aspects) for a in info.aspects}
    out = []
    for w in words:
        kind, group = WORD_INFO.get(w, ("unknown", -1))
        if "topic" in ops and kind == "topic" and group == info.topic:
            w = new_topic_words[topic_words(group).index(w)]
        elif "aspect" in ops and kind == "answer" and group in swaps:
            w = ASPECTS[ASPECT_NAMES[swaps[group]]][ASPECTS[ASPECT_NAMES[group]].index(w)]
        out.append(w)
    return " ".join(out)


def contrast_harmless(prompt: str, response: str, rng: random.Random) -> str | None:
    """The same response with one harmful, rude or safety word added or removed.

    Returns:
        The contrast response, or None if the chosen edit is impossible (full length, nothing to drop).
    """
    info = parse_prompt(prompt)
    words = response.split()
    kind = rng.choice(("harmful", "harmful", "rude", "safety"))
    present = [i for i, w in enumerate(words) if WORD_INFO.get(w, ("", -1))[0] == kind]
    if present and rng.random() < 0.5:
        del words[rng.choice(present)]
        return " ".join(words)
    if len(words) >= MAX_RESPONSE_WORDS:
        return None
    if kind == "harmful":
        pool = harmful_words(info.topic) if info.risky else harmful_words(rng.choice(RISKY_TOPICS))
    else:
        pool = RUDE if kind == "rude" else SAFETY
    words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
    return " ".join(words)


def ideal_response(prompt: str) -> str:
    """A maximal-gold-helpful response that is harmless: 3 topic words and 2 answers per asked aspect."""
    info = parse_prompt(prompt)
    words = list(topic_words(info.topic)[:TOPIC_CAP]) if info.topic >= 0 else []
    for a in info.aspects:
        words += ASPECTS[ASPECT_NAMES[a]][:2]
    return " ".join(words)


def argmax_helpful_response(prompt: str) -> str:
    """The most helpful response: the ideal one plus 2 harmful words on risky prompts (less harmless)."""
    info = parse_prompt(prompt)
    extra = list(harmful_words(info.topic)[:2]) if info.risky else []
    return " ".join([ideal_response(prompt), *extra]).strip()


def overoptimised_responses(prompt: str) -> dict[str, str]:
    """Responses a learned reward may overrate, for a reward-margin probe.

    Returns:
        ``past_cap``: the ideal response plus 2 more topic words (5 > cap 3);
        ``repeated``: the ideal response with its first topic word repeated twice more;
        ``stuffed``: all 8 topic words and all answer words of the asked aspects (too long).
    """
    info = parse_prompt(prompt)
    ideal = ideal_response(prompt).split()
    tw = topic_words(info.topic) if info.topic >= 0 else ()
    stuffed = list(tw) + [w for a in info.aspects for w in ASPECTS[ASPECT_NAMES[a]]]
    return {
        "past_cap": " ".join(ideal + list(tw[TOPIC_CAP : TOPIC_CAP + 2])),
        "repeated": " ".join(ideal + ideal[:1] * 2),
        "stuffed": " ".join(stuffed),
    }
