"""Tiny random Hugging Face models of several families, and BPE tokenizers, built inside the tests.

Nothing is downloaded: a byte-level BPE is trained on a few sentences, wrapped as a fast tokenizer in the
style of each family (special tokens, chat template, BOS policy), and saved with a random 2-layer model
built from the family's config. The folders look like what a user brings (``save_pretrained`` output).

Families:

* ``llama`` — SmolLM2-like: ChatML template, bos ``<|im_start|>``, pad = eos = ``<|im_end|>``, the
  tokenizer adds no BOS by itself (the template starts with one);
* ``llama_bos`` — Llama-2-like plain model: ``<s>`` added at the start of every encoding, no template;
* ``qwen2`` — Qwen2.5-like: ChatML template, pad ``<|endoftext|>`` ≠ eos ``<|im_end|>``, no BOS;
* ``gpt_neox`` — Pythia-like: no template, eos = bos = ``<|endoftext|>``, no pad (pad = eos fallback);
* ``gpt2`` — GPT-2: no template, eos = bos = ``<|endoftext|>``, no pad.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

FAMILIES = ("llama", "llama_bos", "qwen2", "gpt_neox", "gpt2")

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "How do I boil an egg? Put it in boiling water for nine minutes.",
    "What is the capital of France? Paris is the capital of France.",
    "Tell me a joke about cats. A cat walks into a bar and orders nothing.",
    "Give me a recipe for soup: onions, carrots, water, salt and patience.",
    "The quick brown fox jumps over the lazy dog while the sun shines.",
    "You are a helpful assistant. Answer briefly and politely, please.",
    "system user assistant helpful harmless honest thank you sorry no yes",
] * 4

SPECIALS = {
    "llama": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama_bos": ["<unk>", "<s>", "</s>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "gpt_neox": ["<|endoftext|>"],
    "gpt2": ["<|endoftext|>"],
}


def make_tokenizer(family: str, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on :data:`CORPUS`, with the special tokens and template of ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    specials = SPECIALS[family]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS, trainer=trainer)
    kw: dict = {"clean_up_tokenization_spaces": False}
    if family == "llama":
        kw.update(
            bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", chat_template=CHATML
        )
    elif family == "qwen2":
        kw.update(eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML)
    elif family == "llama_bos":
        bos = core.token_to_id("<s>")
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        kw.update(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    else:  # gpt_neox, gpt2
        kw.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=core, **kw)


def make_config(family: str, tok: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2):
    """A tiny config of ``family`` whose special ids match ``tok``."""
    ids = {
        "vocab_size": len(tok),
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    if family in ("llama", "llama_bos", "qwen2"):  # the same shapes, two architectures
        cls = Qwen2Config if family == "qwen2" else LlamaConfig
        return cls(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **ids,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=256,
            **ids,
        )
    return GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, **ids)


def make_model_folder(
    family: str, out: str | Path, seed: int = 0, generation_config: dict | None = None
) -> Path:
    """Save a random causal LM of ``family`` and its tokenizer into ``out`` (a user's model folder).

    Args:
        family: one of :data:`FAMILIES`.
        out: folder to write.
        seed: weights seed.
        generation_config: extra fields for the folder's ``generation_config.json`` (e.g. a repetition
            penalty, as some instruct checkpoints ship).
    """
    out = Path(out)
    tok = make_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family, tok))
    if generation_config:
        for k, v in generation_config.items():
            setattr(model.generation_config, k, v)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
