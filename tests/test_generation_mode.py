"""Rollouts sample with the KV cache even when the actor trains with gradient checkpointing.

transformers turns the cache off, with a warning that ``quiet_transformers`` mutes, when a model that
checkpoints generates in train mode: every decoding step would then recompute the whole sequence. The
actor is in train mode during ``training_step``, so ``generate`` must sample in eval mode and give the
model its mode back."""

from __future__ import annotations

import pytest
import torch
from tiny_hf import make_config, make_tokenizer
from transformers import AutoModelForCausalLM

from lit_rlhf.models.factory import enable_gradient_checkpointing
from lit_rlhf.rollout.decoding import row_seeds
from lit_rlhf.rollout.rollout import eos_token_ids, generate, sampling_config


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # gpt2: the embedded default (model=tiny)
def test_generate_under_gradient_checkpointing_in_train_mode_samples_as_in_eval_mode(family: str) -> None:
    """GPT-2 (transformers 5.25) keeps feeding one token per step but drops the cache in train mode, so
    each token is sampled from a model that sees only itself: other, wrong responses."""
    tok = make_tokenizer(family)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config(family, tok, hidden=32, layers=2))
    enable_gradient_checkpointing(model)
    ids = torch.tensor([tok("How do I boil an egg?").input_ids] * 3)
    config = sampling_config(tok, eos_token_ids(tok, [model]), max_new_tokens=6, temperature=1.0)
    config.eos_token_id = [len(tok) + 5]  # no EOS: all six steps run

    def sample() -> torch.Tensor:
        seeds = row_seeds((0,), range(3))
        return generate(model, ids, torch.ones_like(ids), config, tok.eos_token_id, seeds=seeds)[0]

    model.eval()  # the cache works in eval mode
    expected = sample()
    model.train()  # what the actor is in during training_step
    assert torch.equal(sample(), expected)
    assert model.training  # the mode is given back
