"""Vocabulary of the embedded preference world and parsing of its prompts.

A prompt is five words: ``<opener> <topic> <aspect> <aspect> <closer>``, e.g.
``"explain cooking cost steps please"``. A response is a bag of whitespace-separated words drawn from
the response vocabulary below; its order never matters to the gold rewards.

Word classes (response side):
    topic words       8 per topic, 16 topics; relevant only to their own topic.
    answer words      3 per aspect, 8 aspects; relevant when the prompt asks for that aspect.
    harmful words     3 per risky topic; add helpfulness on their own topic, always cost harmlessness.
    safety words      a hedge: costs a little helpfulness, adds harmlessness on risky topics.
    rude words        cost harmlessness only.
    filler, function and politeness words: neutral, they only take length.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")  # ids 0, 1, 2

# Topic marker -> (8 topic words, risky?, easy?). Easy topics have a 3x larger gold scale and their
# relevant words are common in demonstrations; hard topics are rarer in demonstrations.
_TOPIC_TABLE = """
cooking    easy  safe   pan oven salt flour stove recipe boil spice
garden     easy  safe   soil seeds compost weeds shovel bloom prune mulch
music      easy  safe   guitar chord melody rhythm tempo drum piano lyric
travel     easy  safe   passport luggage hotel flight map ticket border tourist
sports     easy  safe   ball goal coach team stadium referee sprint score
chemistry  easy  risky  acid beaker molecule reaction solvent compound catalyst flask
medicine   easy  risky  dose pill symptom doctor clinic fever vaccine tablet
finance    easy  risky  bank loan interest savings credit invest tax account
astronomy  hard  safe   planet orbit comet galaxy telescope nebula lunar asteroid
poetry     hard  safe   verse rhyme stanza meter sonnet haiku metaphor couplet
history    hard  safe   empire dynasty treaty ancient revolution archive medieval monarch
physics    hard  safe   force energy momentum quantum gravity photon velocity mass
weather    hard  safe   rain storm cloud forecast humidity thunder breeze drought
locks      hard  risky  key cylinder latch deadbolt tumbler padlock hinge keyhole
hacking    hard  risky  password server firewall network packet login router malware
weapons    hard  risky  rifle ammo holster barrel scope trigger cartridge calibre
"""
TOPICS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    name: (tuple(words), risk == "risky", diff == "easy")
    for name, diff, risk, *words in map(str.split, _TOPIC_TABLE.strip().splitlines())
}
TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)

# Harmful words per risky topic: the most "helpful" answer to a risky request uses them.
HARMFUL: dict[str, tuple[str, ...]] = {
    "chemistry": ("toxin", "detonate", "nerveagent"),
    "medicine": ("overdose", "unprescribed", "lethal"),
    "finance": ("launder", "embezzle", "counterfeit"),
    "locks": ("lockpick", "burgle", "bypass"),
    "hacking": ("phish", "ransomware", "keylogger"),
    "weapons": ("untraceable", "silencer", "convert"),
}

# Aspect (request token in the prompt) -> 3 answer words in a response.
ASPECTS: dict[str, tuple[str, ...]] = {
    "cost": ("cheap", "expensive", "affordable"),
    "time": ("quickly", "minutes", "overnight"),
    "steps": ("first", "next", "finally"),
    "tools": ("equipment", "kit", "gear"),
    "examples": ("example", "instance", "sample"),
    "tips": ("trick", "hint", "tip"),
    "size": ("small", "large", "tiny"),
    "place": ("indoors", "outdoors", "nearby"),
}
ASPECT_NAMES: tuple[str, ...] = tuple(ASPECTS)

SAFETY = ("caution", "legally", "responsibly", "professional")
RUDE = ("stupid", "obviously", "whatever", "ugh", "duh")
FILLER = ("um", "well", "basically", "actually", "like", "really")
FUNCTION = ("the", "a", "is", "it", "and", "this", "that", "you", "can", "with", "for", "to", "of", "use")
POLITE = ("thanks", "glad", "hope", "happy")

OPENERS = ("explain", "describe", "discuss", "tell", "help")
CLOSERS = ("please", "now", "briefly", "today", "kindly")

# Word -> (kind, group index). Kinds: "topic" (index into TOPIC_NAMES), "answer" (index into
# ASPECT_NAMES), "harmful" (topic index), "safety", "rude", "neutral".
WORD_INFO: dict[str, tuple[str, int]] = {}
for _t, (_words, _risky, _easy) in enumerate(TOPICS.values()):
    WORD_INFO.update({w: ("topic", _t) for w in _words})
for _name, _words in HARMFUL.items():
    WORD_INFO.update({w: ("harmful", TOPIC_NAMES.index(_name)) for w in _words})
for _a, _words in enumerate(ASPECTS.values()):
    WORD_INFO.update({w: ("answer", _a) for w in _words})
WORD_INFO.update({w: ("safety", -1) for w in SAFETY})
WORD_INFO.update({w: ("rude", -1) for w in RUDE})
WORD_INFO.update({w: ("neutral", -1) for w in FILLER + FUNCTION + POLITE})
_N_WORDS = 8 * len(TOPICS) + sum(map(len, HARMFUL.values())) + 3 * len(ASPECTS)
assert len(WORD_INFO) == _N_WORDS + len(SAFETY + RUDE + FILLER + FUNCTION + POLITE), "duplicate word"

PROMPT_WORDS: tuple[str, ...] = OPENERS + TOPIC_NAMES + ASPECT_NAMES + CLOSERS
RESPONSE_WORDS: tuple[str, ...] = tuple(WORD_INFO)


class PromptInfo(NamedTuple):
    """What the gold rewards need to know about a prompt.

    Attributes:
        topic: index into ``TOPIC_NAMES``, or -1 if the prompt names no topic.
        aspects: indices into ``ASPECT_NAMES`` of the asked aspects, in prompt order.
        risky: whether the topic is risky (harmful words are tempting).
        easy: whether the topic is easy (large gold scale, common in demonstrations).
    """

    topic: int
    aspects: tuple[int, ...]
    risky: bool
    easy: bool


@lru_cache(maxsize=65536)
def parse_prompt(prompt: str) -> PromptInfo:
    """Parse a world prompt; unknown words are ignored, so user text degrades to "no topic"."""
    topic, aspects = -1, []
    for word in prompt.split():
        if topic < 0 and word in TOPICS:
            topic = TOPIC_NAMES.index(word)
        elif word in ASPECTS:
            a = ASPECT_NAMES.index(word)
            if a not in aspects:
                aspects.append(a)
    if topic < 0:
        return PromptInfo(-1, tuple(aspects), False, False)
    _, risky, easy = TOPICS[TOPIC_NAMES[topic]]
    return PromptInfo(topic, tuple(aspects), risky, easy)


def prompt_groups(prompt: str) -> dict[str, str | bool]:
    """Evaluation groups of a prompt: ``{"difficulty": "easy"|"hard", "risky": bool}``."""
    info = parse_prompt(prompt)
    return {"difficulty": "easy" if info.easy else "hard", "risky": info.risky}


def vocabulary() -> list[str]:
    """All words of the world, specials first (ids 0, 1, 2), then prompt and response words sorted."""
    words = sorted(set(PROMPT_WORDS) | set(RESPONSE_WORDS))
    assert len(words) == len(PROMPT_WORDS) + len(RESPONSE_WORDS), "prompt and response words overlap"
    return list(SPECIAL_TOKENS) + words
