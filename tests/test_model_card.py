"""Model cards: huggingface_hub reads their metadata, and their loading snippet loads the folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import ModelCard
from tiny_hf import make_config, make_model_folder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lit_rlhf.run.card import write_model_card

OVERRIDES = ["task=ppo", "+transform=logsigmoid", 'pipeline.sft=["task.max_epochs=1"]']


def snippet(text: str) -> str:
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return code


def sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return make_model_folder("gpt2", tmp_path_factory.mktemp("card") / "policy")


def test_policy_card_metadata_sections_and_loading(policy: Path) -> None:
    metrics = {"gold/win_rate_both": 0.6, "ppo/kl": 3.21}
    path = write_model_card(
        policy, "policy", "HuggingFaceTB/SmolLM2-135M", ["prompts.jsonl"], OVERRIDES, metrics,
        errors={"gold/win_rate_both": 0.049},
    )  # fmt: skip
    assert path == policy / "README.md"
    card = ModelCard.load(path)  # a local Path: nothing is downloaded
    assert card.data.library_name == "transformers"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert card.data.pipeline_tag == "text-generation"
    assert {"lit_rlhf", "rlhf", "ppo"} <= set(card.data.tags)
    text = card.text
    assert sections(text) == [
        "What it is", "Base model", "Data", "Configuration", "Metrics", "Versions", "How to load"
    ]  # fmt: skip
    assert "`prompts.jsonl`" in text
    assert """python train.py task=ppo +transform=logsigmoid 'pipeline.sft=["task.max_epochs=1"]'""" in text
    assert "| `gold/win_rate_both` | 0.600 ± 0.049 |" in text and "| `ppo/kl` | 3.21 |" in text
    assert f"torch {torch.__version__}" in text and f"transformers {transformers.__version__}" in text
    scope: dict = {}
    exec(snippet(text), scope)  # the card's own instructions load this folder
    assert type(scope["model"]).__name__ == "GPT2LMHeadModel"
    assert scope["out"].shape[0] == 1 and scope["out"].shape[1] > scope["batch"]["input_ids"].shape[1]


def test_reward_model_card_loads_a_scoring_model(policy: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(policy)
    cfg = make_config("gpt2", tok)
    cfg.num_labels, cfg.pad_token_id = 1, tok.eos_token_id
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    write_model_card(tmp_path, "reward_model", str(policy), ["pairs.jsonl"], ["task=reward_model"], {})
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None  # a local folder is no Hub id: named in the text only
    assert f"`{policy}`" in card.text and "(none recorded)" in card.text
    assert card.data.pipeline_tag == "text-classification" and "reward-model" in card.data.tags
    scope: dict = {}
    exec(snippet(card.text), scope)
    assert type(scope["model"]).__name__ == "GPT2ForSequenceClassification"
    assert scope["score"].shape == (1,) and torch.isfinite(scope["score"]).all()


def test_sft_card_and_unknown_kind(tmp_path: Path) -> None:
    write_model_card(tmp_path, "sft", "lit_rlhf tiny GPT-2 (random init)", [], [], {"val/loss": 2.5})
    card = ModelCard.load(tmp_path / "README.md")
    assert "sft" in card.data.tags and card.data.base_model is None
    assert "AutoModelForCausalLM.from_pretrained" in card.text and "- (not recorded)" in card.text
    with pytest.raises(ValueError, match="kind must be one of"):
        write_model_card(tmp_path, "critic", "x", [], [], {})
