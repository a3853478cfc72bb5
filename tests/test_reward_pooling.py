"""A reward model is read where it was trained to be read (``reward.<name>.pooling``).

transformers' ``*ForSequenceClassification`` forward — what TRL's RewardTrainer trains through — pools at
the last token that is not ``pad_token_id``; with pad = eos (SmolLM2, Llama without a pad token) that is
the token before a final EOS. lit_rlhf's own reward models are trained and read at the EOS (the last
attended token). ``pooling: auto`` reads a folder lit_rlhf wrote (its model card) at the EOS and any
other folder as transformers does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_hf import make_config, make_tokenizer
from transformers import AutoModelForSequenceClassification

from conftest import hydra_cfg
from lit_rlhf.models.scoring import reward_scores
from lit_rlhf.run.card import write_model_card
from lit_rlhf.run.pipeline import build_reward_model


def reward_folder(out: Path, lit_rlhf_card: bool) -> Path:
    """A random tiny Llama reward model (pad = eos = <|im_end|>), as another trainer or lit_rlhf saves it."""
    tok = make_tokenizer("llama")
    assert tok.pad_token_id == tok.eos_token_id
    torch.manual_seed(0)
    cfg = make_config("llama", tok, hidden=32, layers=2)
    cfg.num_labels = 1
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    if lit_rlhf_card:
        write_model_card(out, "reward_model", "tiny", ["pairs.jsonl"], [], {})
    return out


def responses(tok) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + response + EOS per row, right-padded with pad (= eos), as TRL batches them."""
    texts = [("How do I boil an egg?", "Put it in boiling water."), ("Paris", "Paris is the capital.")]
    rows = [tok(p).input_ids + tok(r).input_ids + [tok.eos_token_id] for p, r in texts]
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    return ids, mask


def build(tmp_path: Path, folder: Path, *overrides: str):
    tok = make_tokenizer("llama")
    args = ["model=hf", f"model.name_or_path={folder}", f"reward.helpful.path={folder}", *overrides]
    with hydra_cfg(tmp_path, args) as cfg:
        return build_reward_model(cfg, "helpful", folder, tok), tok


@torch.no_grad()
def test_a_reward_model_trained_elsewhere_scores_as_in_transformers_forward(tmp_path: Path) -> None:
    folder = reward_folder(tmp_path / "trl_rm", lit_rlhf_card=False)
    rm, tok = build(tmp_path, folder)  # reward.helpful.pooling: auto (the default)
    ids, mask = responses(tok)
    theirs = AutoModelForSequenceClassification.from_pretrained(folder)(
        input_ids=ids, attention_mask=mask
    ).logits[:, 0]
    torch.testing.assert_close(reward_scores(rm, ids, mask), theirs, rtol=1e-5, atol=1e-6)
    at_eos, _ = build(tmp_path, folder, "+reward.helpful.pooling=eos")  # the other reading differs
    assert not torch.allclose(reward_scores(at_eos, ids, mask), theirs, atol=1e-3)


@torch.no_grad()
def test_the_shared_prefix_path_reads_where_the_pooling_says(tmp_path: Path) -> None:
    """Rollouts score G responses of a prompt with the prompt computed once (rollout/shared_prefix.py)."""
    from lit_rlhf.rollout import shared_prefix

    folder = reward_folder(tmp_path / "trl_rm", lit_rlhf_card=False)
    rm, tok = build(tmp_path, folder)
    prompt = tok("How do I boil an egg?").input_ids
    answers = [tok(r).input_ids + [tok.eos_token_id] for r in ("Boil it.", "Put it in boiling water.")]
    R = max(map(len, answers))
    ids = torch.tensor([prompt + a + [tok.pad_token_id] * (R - len(a)) for a in answers])
    mask = torch.tensor([[1] * (len(prompt) + len(a)) + [0] * (R - len(a)) for a in answers])
    theirs = AutoModelForSequenceClassification.from_pretrained(folder)(
        input_ids=ids, attention_mask=mask
    ).logits[:, 0]
    shared = shared_prefix.sequence_scores(rm, ids, mask, len(prompt))
    torch.testing.assert_close(shared, theirs, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_lit_rlhf_reward_models_are_read_at_the_eos(tmp_path: Path) -> None:
    folder = reward_folder(tmp_path / "ours", lit_rlhf_card=True)
    rm, tok = build(tmp_path, folder)
    ids, mask = responses(tok)
    plain = AutoModelForSequenceClassification.from_pretrained(folder)
    hidden = plain.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, T, H)
    last = mask.sum(-1) - 1  # the EOS of each right-padded row
    expected = plain.score(hidden[torch.arange(2), last])[:, 0]
    torch.testing.assert_close(reward_scores(rm, ids, mask), expected, rtol=1e-5, atol=1e-6)


def test_an_unknown_pooling_is_refused_naming_the_key(tmp_path: Path) -> None:
    folder = reward_folder(tmp_path / "rm", lit_rlhf_card=False)
    with pytest.raises(ValueError, match=r"reward\.helpful\.pooling must be one of"):
        build(tmp_path, folder, "+reward.helpful.pooling=first")


@pytest.mark.slow  # ~20 s: TRL's RewardTrainer trains a tiny Llama on the shipped pairs
def test_a_trl_reward_model_scores_the_same_in_lit_rlhf_and_transformers(tmp_path: Path) -> None:
    """The issue's case end to end: TRL's RewardTrainer (pad = eos) trains on examples/chat_pairs.jsonl;
    lit_rlhf (pooling auto) scores the shipped responses exactly as transformers' forward does."""
    trl = pytest.importorskip("trl")
    from datasets import load_dataset

    from conftest import ROOT
    from lit_rlhf.data.tokenize import encode_examples

    folder = reward_folder(tmp_path / "init", lit_rlhf_card=False)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tok = make_tokenizer("llama")
    pairs = load_dataset("json", data_files=str(ROOT / "examples" / "chat_pairs.jsonl"), split="train")
    args = trl.RewardConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
    )
    trl.RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok).train()
    trained = tmp_path / "trl_rm"
    model.save_pretrained(trained)
    tok.save_pretrained(trained)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # TRL trained it

    rm, tok = build(tmp_path, trained)
    # the ids lit_rlhf scores (rollouts, reward-model data): the rendered prompt, the response, then EOS —
    # no template text after the EOS, so with pad = eos the two readings are one token apart
    shown = pairs.select(range(6))
    responses = [r["chosen"][0]["content"] for r in shown]
    rows = [ids for ids, _ in encode_examples(tok, shown["prompt"], responses, 256, 512, True)]
    assert all(r[-1] == tok.eos_token_id == tok.pad_token_id for r in rows)
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    with torch.no_grad():
        theirs = AutoModelForSequenceClassification.from_pretrained(trained)(
            input_ids=ids, attention_mask=mask
        ).logits[:, 0]
        torch.testing.assert_close(reward_scores(rm, ids, mask), theirs, rtol=1e-5, atol=1e-5)
