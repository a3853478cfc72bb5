"""Scoring with a Bradley–Terry reward model: r(x, y) read at the last attended token."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.models.heads import POOLINGS, sequence_scores


def reward_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Scalar rewards of a ``*ForSequenceClassification`` model with one label.

    The score is read at the right-most position of ``attention_mask`` (the EOS, or the last token of a
    truncated response), both in reward-model training and in RL — never where ``pad_token_id`` says, which
    with pad = eos would be the token before the EOS. Positions skip left padding.

    Args:
        model: reward model.
        input_ids: (N, T) token ids, left or right padded.
        attention_mask: (N, T).

    Returns:
        (N,) rewards.
    """
    return sequence_scores(model, input_ids, attention_mask)  # (N,)


@torch.inference_mode()
def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_prompt_tokens: int = 32,
    max_length: int = 64,
    batch_size: int = 256,
) -> torch.Tensor:
    """Score (prompt, response) texts → (N,) rewards; the API later stages and scripts use.

    Tokenisation is the same as in reward-model training: prompt and response tokenised separately,
    ``prompt + response + eos``, prompt truncated from the left, response from the right.
    """
    from lit_rlhf.data.tokenize import encode_examples, pad_batch  # noqa: PLC0415  (data imports models')

    if len(prompts) != len(responses):
        raise ValueError(f"score_texts got {len(prompts)} prompts and {len(responses)} responses")
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = encode_examples(
            tokenizer,
            prompts[i : i + batch_size],
            responses[i : i + batch_size],
            max_prompt_tokens,
            max_length,
        )
        ids, mask = pad_batch([ids for ids, _ in rows], tokenizer.pad_token_id)
        out.append(reward_scores(model, ids.to(device), mask.to(device)).cpu())
    return torch.cat(out) if out else torch.empty(0)


def weights_fingerprint(folder: str | Path) -> str:
    """A short hash of a model folder's weight files (what caches key on)."""
    import hashlib  # noqa: PLC0415

    folder = Path(folder)
    files = sorted(
        p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".json"} and p.is_file()
    )
    if not files:
        raise FileNotFoundError(f"{folder} holds no model files (config.json / *.safetensors)")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def written_by_lit_rlhf(folder: str | Path) -> bool:
    """Whether a model folder was saved by lit_rlhf: its model card (``README.md``) carries the
    ``lit_rlhf`` tag (:func:`lit_rlhf.run.card.card_data`)."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return False
    from huggingface_hub import ModelCard  # noqa: PLC0415

    try:
        tags = ModelCard.load(card).data.tags or []
    except Exception:  # a card without valid front matter: not ours
        return False
    return "lit_rlhf" in tags


def resolve_pooling(setting: str | None, folder: str | Path, key: str) -> str:
    """The pooling of a reward model folder: ``eos`` | ``last_non_pad`` as set, or for ``auto`` (and None)
    ``eos`` for a folder lit_rlhf trained and ``last_non_pad`` (transformers' and TRL's) for any other.

    Raises:
        ValueError: another value, naming ``key``.
    """
    setting = setting or "auto"
    if setting not in (*POOLINGS, "auto"):
        raise ValueError(f"{key} must be one of {(*POOLINGS, 'auto')}, got {setting!r}")
    if setting != "auto":
        return setting
    return "eos" if written_by_lit_rlhf(folder) else "last_non_pad"
