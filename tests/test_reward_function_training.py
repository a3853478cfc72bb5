"""A reward model AND a reward function under ``+transform=logsigmoid`` (the paper's AND) trains end to end
through ``python train.py`` on the tiny Llama (ChatML, BPE; ``tests/tiny_hf.py``): GRPO with the BT
helpfulness model and the word-limit rule (``reward=helpful_word_limit``) as a probability. The rule's
term is in TensorBoard, and its pass rate rises: the policy learns to answer in fewer words."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_hf import make_config, make_model_folder, make_tokenizer
from train_cli import csv_logger, expect, logged, same_weights, train_py, write_jsonl
from transformers import AutoModelForSequenceClassification


def reward_model(out: Path) -> Path:
    """A random Bradley–Terry reward model of the tiny Llama family (the policy's tokenizer)."""
    tok = make_tokenizer("llama")
    cfg = make_config("llama", tok)
    cfg.num_labels = 1
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow  # ~30 s: 20 GRPO iterations of 4 prompts x 4 samples
def test_grpo_with_a_reward_model_and_the_word_limit_rule_learns_the_rule(tmp_path: Path) -> None:
    policy, rm = make_model_folder("llama", tmp_path / "policy"), reward_model(tmp_path / "rm")
    chat = [{"prompt": [{"role": "user", "content": f"Tell me about cats {i}"}]} for i in range(32)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", chat)
    run = train_py(
        tmp_path, tmp_path / "cache",
        "task=grpo", "model=hf", f"model.name_or_path={policy}", f"task.policy_path={policy}",
        "reward=helpful_word_limit", f"reward.helpful.path={rm}", "+transform=logsigmoid",
        "reward.word_limit.function.max_words=1", f"data.path={prompts}",
        "task.datamodule.max_prompt_tokens=64", "task.iterations=20", "task.val_check_interval=20",
        "task.datamodule.batch_size=4", "task.module.max_new_tokens=12", "task.module.lr=3e-3",
        "task.module.warmup_steps=0", "task.module.kl_coef=0",
        "task.module.eval_samples_per_prompt=1", "task.callbacks.reward_transform.n_samples=2",
        "task.optimized_metric=grpo/kl", "logger=tensorboard", *csv_logger(tmp_path / "run"),
    )  # fmt: skip
    expect(run, 0, "r_ref[word_limit]", "reward/word_limit_transformed", "reward/helpful_transformed")
    assert not same_weights(tmp_path / "run" / "model", policy)

    # the rule's term is in TensorBoard beside the reward model's
    (events,) = (tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*")
    tags = set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    for name in ("word_limit", "helpful"):
        assert {f"reward/{name}_raw", f"reward/{name}_transformed", f"reward/{name}_above_ref"} <= tags

    # the rule's pass probability (its raw value) rises: answers in fewer words
    passed = logged(tmp_path / "run", "reward/word_limit_raw")
    assert len(passed) == 20 and sum(passed[-5:]) / 5 > sum(passed[:5]) / 5 + 0.1, passed
    transformed = logged(tmp_path / "run", "reward/word_limit_transformed")
    assert all(u <= 0 for u in transformed)  # log p: a factor of the AND, never above log 1
