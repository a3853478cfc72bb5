"""What ``--size`` builds: the model config, the tokenizer and the synthetic data (``prepare.py`` saves them).

* ``toy``: GPT-2 (4 × 256) on the embedded world's word-level tokenizer, prompts and preference pairs;
* ``smollm2``: a Llama with SmolLM2-135M's shapes and random weights from that config (nothing downloaded),
  a word-level tokenizer with its 49,152-entry vocabulary (its special tokens at its ids 0–2), and
  random-word prompts of exactly ``prompt_tokens`` tokens and responses that fill ``rm_max_length``.

Tokenisation happens before the timed steps on both sides, so only the vocabulary's size (embedding, head,
logits) matters for the timings, not whether the tokenizer is BPE or word-level.
"""

from __future__ import annotations

import random

from common import MODELS, Settings
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# SmolLM2's special tokens and ids (unk = pad here: pad must differ from eos, as in the toy world)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
WORD = "w{}"  # the ordinary tokens: w3 … w49151


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of exactly ``vocab_size`` ids: SmolLM2's 3 special tokens, then words.

    ``pad`` = ``<|endoftext|>`` (0), ``bos`` = ``<|im_start|>`` (1), ``eos`` = ``<|im_end|>`` (2); one word
    is one token, so text of ``n`` words is ``n`` tokens.
    """
    if vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size must exceed {len(SPECIALS)}, got {vocab_size}")
    words = [*SPECIALS, *(WORD.format(i) for i in range(len(SPECIALS), vocab_size))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=SPECIALS[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIALS[0],
        unk_token=SPECIALS[0],
        bos_token=SPECIALS[1],
        eos_token=SPECIALS[2],
        padding_side="right",
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )


def model_config(size: str, tokenizer: PreTrainedTokenizerBase, min_positions: int = 0) -> PretrainedConfig:
    """The size's config (:data:`common.MODELS`) with the tokenizer's special ids and one score label.

    A GPT-2's position table (``n_positions``) grows to ``min_positions`` when the run's sequences are
    longer (``run.py --set ppo_max_new_tokens=256``); the table is a lookup, so FLOPs do not change.

    Raises:
        ValueError: the size fixes a vocabulary the tokenizer does not have, or the size is unknown.
    """
    if size not in MODELS:
        raise ValueError(f"unknown --size {size!r}; expected one of {sorted(MODELS)}")
    shape = dict(MODELS[size])
    model_type = shape.pop("model_type")
    vocab = shape.pop("vocab_size", len(tokenizer))
    if vocab != len(tokenizer):
        raise ValueError(
            f"--size {size} has vocab_size {vocab} but the tokenizer has {len(tokenizer)} tokens"
        )
    if "n_positions" in shape:
        shape["n_positions"] = max(shape["n_positions"], min_positions)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return AutoConfig.for_model(
        model_type,
        vocab_size=vocab,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=bos,
        num_labels=1,
        **shape,
    )


def random_words(rng: random.Random, n: int, vocab_size: int) -> str:
    """``n`` ordinary (non-special) tokens of :func:`word_tokenizer`, drawn uniformly."""
    return " ".join(WORD.format(rng.randrange(len(SPECIALS), vocab_size)) for _ in range(n))


def synthetic_prompts(s: Settings, vocab_size: int) -> list[dict]:
    """``{"id", "prompt"}`` records of exactly ``s.prompt_tokens`` tokens: as many as the PPO run or the
    GRPO / RLOO runs (prompts per iteration × iterations) take, whichever is more."""
    rng = random.Random(s.seed)
    ppo = s.ppo_batch_prompts * (s.ppo_warmup_steps + s.ppo_steps)
    n = max(ppo, s.group_batch_prompts * (s.group_warmup_steps + s.group_steps))
    return [{"id": i, "prompt": random_words(rng, s.prompt_tokens, vocab_size)} for i in range(n)]


def synthetic_pairs(s: Settings, vocab_size: int) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` pairs, one per pair of the run, that are never truncated.

    The prompt has ``rm_max_prompt_tokens`` tokens; each response between a quarter of the remaining budget
    and all of it (``rm_max_length`` − prompt − 1 for the eos), so batches need padding, as real ones do.
    """
    if s.rm_max_length <= s.rm_max_prompt_tokens + 1:
        raise ValueError(f"rm_max_length ({s.rm_max_length}) leaves no room for a response")
    rng = random.Random(s.seed + 1)
    budget = s.rm_max_length - s.rm_max_prompt_tokens - 1

    def response() -> str:
        return random_words(rng, rng.randint(max(1, budget // 4), budget), vocab_size)

    n = s.rm_batch_pairs * (s.rm_warmup_steps + s.rm_steps)
    return [
        {
            "prompt": random_words(rng, s.rm_max_prompt_tokens, vocab_size),
            "chosen": response(),
            "rejected": response(),
        }
        for _ in range(n)
    ]
