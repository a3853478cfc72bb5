"""Word-level tokenizer of the embedded world, saved as a Hugging Face tokenizer folder."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lit_rlhf.world.vocab import vocabulary


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the world's vocabulary: ``<pad>`` = 0, ``<eos>`` = 1, ``<unk>`` = 2.

    Strings are split on whitespace only; no special token is added automatically (consumers append
    ``<eos>`` to responses themselves). Padding is on the right and ``pad != eos``.
    """
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(path: str | Path) -> Path:
    """Build the tokenizer and ``save_pretrained`` it into ``path``."""
    build_tokenizer().save_pretrained(str(path))
    return Path(path)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved world tokenizer (plain ``AutoTokenizer.from_pretrained``, no remote code)."""
    return AutoTokenizer.from_pretrained(str(path))
