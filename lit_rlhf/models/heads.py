"""Scalar heads on any causal-LM backbone: reward scores and critic values, read where the mask says.

Two networks end in one scalar per position:

* the **reward model** is a ``*ForSequenceClassification`` folder (what ``task=reward_model`` saves and
  TRL users load). Its own ``forward`` pools at the right-most token that is not ``pad_token_id`` — with
  pad = eos (SmolLM2, GPT-2's fallback) that is the token *before* the EOS, and a config/tokenizer pad
  mismatch moves it silently. :func:`sequence_scores` therefore runs the backbone and applies the score head
  at the last position of the **attention mask** (the EOS, or the last token of a truncated sequence);
* the **critic** is a :class:`ValueModel`: ``AutoModel`` (any architecture ``AutoModelForCausalLM`` loads,
  including those with no ``*ForTokenClassification``: Gemma3, OLMo2, OPT, GPT-J, …) plus a linear head,
  as OpenRLHF's ``get_llm_for_sequence_regression`` does. It can start from the policy or the reward model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModel, PreTrainedModel


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, so a left-padded row sees the positions of a right-padded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def last_index(attention_mask: Tensor) -> Tensor:
    """(N, T) mask → (N,) index of the right-most 1 of each row (left or right padding alike)."""
    T = attention_mask.shape[-1]
    pos = torch.arange(T, device=attention_mask.device)  # (T,)
    return (pos * attention_mask.long()).argmax(-1)  # (N,)


def unwrap(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def score_head(model: nn.Module) -> nn.Module:
    """The scalar head of a ``*ForSequenceClassification``: ``score`` in most families, or ``classifier``."""
    hf = unwrap(model)
    for name in ("score", "classifier"):
        head = getattr(hf, name, None)
        if isinstance(head, nn.Module):
            return head
    raise TypeError(f"{type(hf).__name__} has no `score` or `classifier` head; is it a reward model?")


POOLINGS = ("eos", "last_non_pad")
_POOLING = "_lit_rlhf_pooling"


def set_pooling(model: nn.Module, pooling: str, pad_token_id: int | None = None) -> nn.Module:
    """Where :func:`sequence_scores` reads ``model``: ``eos`` (the last attended token, lit_rlhf's own reward
    models) or ``last_non_pad`` (the last token that is not ``pad_token_id``, as transformers'
    ``*ForSequenceClassification`` forward and so TRL's RewardTrainer pool)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "last_non_pad" and pad_token_id is None:
        raise ValueError("pooling=last_non_pad needs the pad token id the reward model was trained with")
    setattr(model, _POOLING, (pooling, pad_token_id))
    return model


def pooling_of(model: nn.Module) -> tuple[str, int | None]:
    """``(pooling, pad_token_id)`` of :func:`set_pooling`; ``("eos", None)`` if never set."""
    return getattr(model, _POOLING, ("eos", None))


def last_non_pad_index(input_ids: Tensor, pad_token_id: int) -> Tensor:
    """(N, T) ids → (N,) index of the right-most token that is not ``pad_token_id``: transformers'
    sequence-classification pooling (with pad = eos, the token before a final EOS)."""
    T = input_ids.shape[-1]
    pos = torch.arange(T, device=input_ids.device)  # (T,)
    return (pos * (input_ids != pad_token_id).long()).argmax(-1)  # (N,)


def pool_index(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(N,) the position each row of ``model``'s scores is read at (:func:`set_pooling`)."""
    pooling, pad = pooling_of(model)
    return last_index(attention_mask) if pooling == "eos" else last_non_pad_index(input_ids, pad)


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Scalar score of each sequence at its last attended token (or where :func:`set_pooling` says).

    Args:
        model: a ``*ForSequenceClassification`` with one label (optionally PEFT-wrapped), or a
            :class:`ValueModel`.
        input_ids: (N, T), left or right padded.
        attention_mask: (N, T).

    Returns:
        (N,) float32 scores.
    """
    rows = torch.arange(len(input_ids), device=input_ids.device)
    last = pool_index(model, input_ids, attention_mask)  # (N,)
    if isinstance(model, ValueModel):
        return model(input_ids, attention_mask)[rows, last]
    hf = unwrap(model)
    hidden = hf.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
    ).last_hidden_state  # (N, T, H)
    return score_head(model)(hidden[rows, last])[:, 0].float()  # head on N vectors only


class ValueModel(nn.Module):
    """A backbone and a linear value head: one scalar per token (the PPO critic).

    Args:
        backbone: a ``transformers`` base model (``AutoModel``: returns ``last_hidden_state``).
        head: maps ``hidden_size`` → 1; ``None`` = a new ``nn.Linear`` initialised like transformers' heads
            (normal with the config's ``initializer_range``, zero bias).
    """

    def __init__(self, backbone: PreTrainedModel, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        if head is None:
            head = nn.Linear(backbone.config.hidden_size, 1)
            nn.init.normal_(head.weight, std=getattr(backbone.config, "initializer_range", 0.02))
            nn.init.zeros_(head.bias)
            head.to(dtype=backbone.dtype)
        self.head = head

    @property
    def config(self):
        return self.backbone.config

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> ValueModel:
        """Backbone from any model folder (a policy or a reward model); a fresh head."""
        return cls(AutoModel.from_pretrained(path, **kwargs))

    @classmethod
    def from_reward_model(cls, reward_model: PreTrainedModel) -> ValueModel:
        """Backbone and head taken from a trained reward model (InstructGPT's critic initialisation)."""
        return cls(reward_model.base_model, score_head(reward_model))

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Values V(s_t) for every position: (B, T) float32 (positions skip left padding)."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
        ).last_hidden_state  # (B, T, H)
        return self.head(hidden)[..., 0].float()  # (B, T)
