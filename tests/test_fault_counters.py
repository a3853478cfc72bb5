"""The fault policy's counters are part of the module's state: a resumed run keeps counting skipped
batches and updates (``<algorithm>/skipped_*``) and its bad-batch streak where the checkpoint left them."""

from __future__ import annotations

import copy
from functools import partial

import torch
from tiny_hf import make_config, make_tokenizer
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_rlhf.tasks.grpo import GRPOModule


def grpo() -> GRPOModule:
    tok = make_tokenizer("llama")
    torch.manual_seed(0)
    cfg = make_config("llama", tok, hidden=32, layers=1)
    actor = AutoModelForCausalLM.from_config(cfg)
    cfg.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(cfg)
    return GRPOModule(
        actor=actor,
        ref=copy.deepcopy(actor),
        reward_models={"helpful": rm},
        tokenizer=tok,
        optimizer=partial(torch.optim.AdamW),
        samples_per_prompt=2,
    )


def test_skip_counters_and_bad_streak_survive_a_checkpoint() -> None:
    before = grpo()
    before.skipped_batches, before.skipped_updates, before._bad_streak = 3, 7, 2
    checkpoint = {"state_dict": before.state_dict()}
    before.on_save_checkpoint(checkpoint)

    after = grpo()
    after.on_load_checkpoint(checkpoint)
    assert (after.skipped_batches, after.skipped_updates, after._bad_streak) == (3, 7, 2)

    old = {k: v for k, v in checkpoint.items() if k != "fault_policy"}  # a checkpoint from before: zeros
    fresh = grpo()
    fresh.on_load_checkpoint(old)
    assert (fresh.skipped_batches, fresh.skipped_updates, fresh._bad_streak) == (0, 0, 0)
