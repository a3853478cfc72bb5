"""Model factories for the `model/` config group: a tiny GPT-2 built from a config, or a local HF folder.

Both expose the same two calls, so every task builds its networks the same way:

* ``spec.load_tokenizer(default)`` — the tokenizer (``default`` is the data's, e.g. the embedded world's);
* ``spec.build(head, tokenizer)`` — a ``transformers`` model with the given head:
  ``"causal_lm"`` (policy), ``"reward"`` (a ``*ForSequenceClassification`` with one label, scored at the
  last attended token by :func:`lit_rlhf.models.heads.sequence_scores`) or ``"value"`` (one scalar per
  token: a :class:`~lit_rlhf.models.heads.ValueModel`, any architecture ``AutoModel`` loads).

Nothing is downloaded: ``Pretrained`` passes ``local_files_only=True`` and never trusts remote code unless
the user sets ``model.trust_remote_code=true``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2Model,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from lit_rlhf.models.heads import ValueModel

Head = Literal["causal_lm", "reward", "value"]
_AUTO = {
    "causal_lm": AutoModelForCausalLM,
    "reward": AutoModelForSequenceClassification,
    "value": ValueModel,
}
DTYPES = ("float32", "bfloat16", "float16", "auto")


def quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars (nothing in them concerns our users)."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _check_head(head: str) -> None:
    if head not in _AUTO:
        raise ValueError(f"unknown model head {head!r}; expected one of {sorted(_AUTO)}")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder; give it a pad token if it has none (pad = eos, as TRL does).

    Args:
        path: a local folder written by ``save_pretrained`` (nothing is fetched from a hub).
        trust_remote_code: run the folder's own tokenizer code; off unless you trust the folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist (model.tokenizer_path)")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer at {path} has neither a pad nor an eos token; add one to it")
        tok.pad_token = tok.eos_token
    return tok


def parse_dtype(dtype: str | None, key: str = "model.dtype") -> torch.dtype | str:
    """``float32`` / ``bfloat16`` / ``float16`` / ``auto`` (the checkpoint's) → a dtype; ``None`` = fp32."""
    if dtype is None:
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"{key} must be one of {DTYPES} or null, got {dtype!r}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward (non-reentrant, so frozen inputs and LoRA work)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "config"):
        model.config.use_cache = False  # a cache is useless while checkpointing; generate() turns it on


class TinyGPT2:
    """A small GPT-2 built from a config and randomly initialised (the embedded default).

    Args:
        n_layer: transformer blocks; 2 trains in about a minute on 2 CPU cores.
        n_embd: width of the residual stream.
        n_head: attention heads (must divide ``n_embd``).
        n_positions: context length in tokens (prompt + response).
        dropout: dropout on embeddings, attention and residuals.
        tokenizer_path: tokenizer folder; ``None`` = the data's tokenizer (the embedded world's).
        dtype: weights dtype (see :class:`Pretrained`); ``None`` = float32. PPO loads its stages with it.
        gradient_checkpointing: recompute activations in backward.
    """

    def __init__(
        self,
        n_layer: int = 2,
        n_embd: int = 128,
        n_head: int = 4,
        n_positions: int = 64,
        dropout: float = 0.0,
        tokenizer_path: str | None = None,
        dtype: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        if n_embd % n_head:
            raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")
        self.dtype = parse_dtype(dtype)
        self.gradient_checkpointing = gradient_checkpointing
        self.n_layer, self.n_embd, self.n_head = n_layer, n_embd, n_head
        self.n_positions, self.dropout, self.tokenizer_path = n_positions, dropout, tokenizer_path

    def load_tokenizer(self, default: str | Path | None) -> PreTrainedTokenizerBase:
        path = self.tokenizer_path or default
        if path is None:
            raise ValueError("model=tiny needs a tokenizer: set model.tokenizer_path or use data=world")
        return load_tokenizer(path)

    def build(self, head: Head, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
        _check_head(head)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=self.n_positions,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            num_labels=1,
        )
        model = ValueModel(GPT2Model(config)) if head == "value" else _AUTO[head].from_config(config)
        if self.dtype != torch.float32:
            model.to(self.dtype)
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model


_PINNED = "_lit_attn_pinned"


def pin_attention(model: nn.Module) -> nn.Module:
    """Mark ``model``'s attention implementation as the user's choice (``callbacks.cpu_tuning`` keeps it)."""
    setattr(model, _PINNED, True)
    return model


def attention_pinned(model: nn.Module) -> bool:
    return bool(getattr(model, _PINNED, False))


class Pretrained:
    """A local Hugging Face model folder (``model=hf model.name_or_path=/local/folder``).

    The same settings serve every role a run builds from it (policy, reference, critic, reward model);
    :meth:`at` gives them to another folder (a stage the run trained, a reward model).

    Args:
        name_or_path: a local folder holding ``config.json`` and weights; nothing is fetched from a hub.
        tokenizer_path: tokenizer folder; ``None`` = ``name_or_path``.
        trust_remote_code: run the folder's own modelling code; off unless you trust the folder.
        dtype: weights dtype, ``float32`` / ``bfloat16`` / ``float16`` / ``auto`` (the checkpoint's);
            ``None`` = float32. With ``trainer.precision=bf16-mixed`` keep fp32 weights (Lightning's autocast
            keeps fp32 master weights); ``bfloat16`` here is pure bf16 training.
        attn_implementation: ``eager`` / ``sdpa`` / ``flash_attention_2`` …; ``None`` = transformers' choice.
        gradient_checkpointing: recompute activations in backward for the trained models (less memory).
    """

    def __init__(
        self,
        name_or_path: str,
        tokenizer_path: str | None = None,
        trust_remote_code: bool = False,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        self.name_or_path = str(name_or_path)
        self.tokenizer_path = tokenizer_path
        self.trust_remote_code = trust_remote_code
        self.dtype_name = dtype
        self.dtype = parse_dtype(dtype)
        self.attn_implementation = attn_implementation
        self.gradient_checkpointing = gradient_checkpointing

    def at(self, name_or_path: str | Path, **overrides) -> Pretrained:
        """The same settings for another folder (``overrides``: any constructor argument)."""
        kw = {
            "tokenizer_path": None,
            "trust_remote_code": self.trust_remote_code,
            "dtype": self.dtype_name,
            "attn_implementation": self.attn_implementation,
            "gradient_checkpointing": self.gradient_checkpointing,
        }
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return Pretrained(str(name_or_path), **kw)

    def check_folder(self, key: str = "model.name_or_path") -> Path:
        """The model folder, or an error naming it and the config ``key`` that points at it."""
        path = Path(self.name_or_path)
        if not (path / "config.json").is_file():
            what = (
                "does not exist"
                if not path.exists()
                else "has no config.json (not a Hugging Face model folder)"
            )
            raise FileNotFoundError(
                f"model folder {path} {what} ({key}). Point it at a folder written by "
                "save_pretrained; nothing is downloaded from a hub."
            )
        return path

    def check_reward_model(self, where: str) -> None:
        """Refuse a folder that is not a trained reward model (its score head would be random)."""
        path = self.check_folder(where)
        archs = json.loads((path / "config.json").read_text()).get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ValueError(
                f"{where}: {path} holds a {archs or 'model without architectures'}, not a reward model "
                "(a *ForSequenceClassification folder written by task=reward_model); its score head would be "
                "random. Train one with `python train.py task=reward_model reward=<name>` and point here."
            )

    def load_tokenizer(self, default: str | Path | None = None) -> PreTrainedTokenizerBase:
        path = self.tokenizer_path or self.check_folder()
        return load_tokenizer(path, trust_remote_code=self.trust_remote_code)

    def load_kwargs(self) -> dict:
        """What every ``from_pretrained`` of this spec gets."""
        kw = {"local_files_only": True, "trust_remote_code": self.trust_remote_code, "dtype": self.dtype}
        if self.attn_implementation:
            kw["attn_implementation"] = self.attn_implementation
        return kw

    def build(
        self, head: Head, tokenizer: PreTrainedTokenizerBase | None = None, trainable: bool = True
    ) -> nn.Module:
        """The model with ``head``; ``trainable=False`` (a frozen reference or reward model): no recompute."""
        _check_head(head)
        path = self.check_folder()
        kwargs = {"num_labels": 1} if head == "reward" else {}
        model = _AUTO[head].from_pretrained(str(path), **self.load_kwargs(), **kwargs)
        if tokenizer is not None and model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if self.attn_implementation:
            pin_attention(model)
        if self.gradient_checkpointing and trainable:
            enable_gradient_checkpointing(model)
        return model
