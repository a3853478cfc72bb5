"""A real training step with shared prefixes equals the plain one: GRPO (policy, reference, reward model) and
PPO with samples_per_prompt > 1 (the critic too) move the weights, and move them to where the plain path
does (SGD: the step is the gradient, so equal weights mean equal losses and gradients)."""

from __future__ import annotations

import copy
from functools import partial

import lightning as L
import pytest
import torch
from test_shared_prefix import model
from tiny_hf import make_tokenizer
from torch.utils.data import DataLoader

from lit_rlhf.rollout import shared_prefix as sp
from lit_rlhf.tasks.grpo import GRPOModule
from lit_rlhf.tasks.ppo import PPOModule

SPLIT, GROUPED = sp.split_forward, sp.grouped_forward
SETTINGS = {"lr": 0.05, "max_new_tokens": 5, "ppo_epochs": 1, "num_minibatches": 2, "samples_per_prompt": 4}


def batch() -> dict:
    """Three prompts of 3, 5 and 6 tokens, left padded to 6."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (3, 6), generator=gen)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, :3] = mask[1, :1] = 0
    return {"input_ids": ids * mask, "attention_mask": mask, "prompt_ids": torch.arange(3)}


def fit_one_step(module: L.LightningModule) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader([batch()], batch_size=None))


def tiny_module(cls: type, **settings) -> L.LightningModule:
    """``cls`` (a policy task) over tiny Llama models: actor, its copy as π_ref, a reward model (PPO: a
    critic), SGD."""
    actor = model("llama")
    kw = {"critic": model("llama", "value", seed=2)} if cls is PPOModule else {}
    return cls(
        actor=actor,
        ref=copy.deepcopy(actor),
        reward_models={"helpful": model("llama", "reward", seed=1)},
        tokenizer=make_tokenizer("llama"),
        optimizer=partial(torch.optim.SGD),
        **settings,
        **kw,
    )


def step(cls: type, shared: bool, calls: list, monkeypatch) -> tuple[dict, dict, dict]:
    """(weights before, weights after, logged metrics) of one step of ``cls`` with or without sharing."""
    module = tiny_module(cls, shared_prefix=shared, **SETTINGS)
    trained = [m for m in (module.actor, getattr(module, "critic", None)) if m is not None]
    before = {f"{i}.{k}": v.clone() for i, m in enumerate(trained) for k, v in m.state_dict().items()}

    def spy(real, m, *a, **k):
        calls.append((real.__name__, torch.is_grad_enabled()))
        return real(m, *a, **k)

    monkeypatch.setattr(sp, "split_forward", partial(spy, SPLIT))
    monkeypatch.setattr(sp, "grouped_forward", partial(spy, GROUPED))
    fit_one_step(module)
    after = {f"{i}.{k}": v.clone() for i, m in enumerate(trained) for k, v in m.state_dict().items()}
    metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items()}
    return before, after, metrics


@pytest.mark.slow  # four one-step Trainer.fit runs: ~15 s on a shared machine
@pytest.mark.parametrize("cls", [GRPOModule, PPOModule])
def test_a_shared_step_moves_the_weights_where_the_plain_step_does(cls: type, monkeypatch) -> None:
    plain_calls: list[tuple[str, bool]] = []
    shared_calls: list[tuple[str, bool]] = []
    before, plain, plain_logs = step(cls, False, plain_calls, monkeypatch)
    before2, shared, shared_logs = step(cls, True, shared_calls, monkeypatch)
    assert not plain_calls
    # the update (autograd) and the rollout shared, in one grouped forward per model
    assert set(shared_calls) == {("grouped_forward", True), ("grouped_forward", False)}
    for k in before:
        torch.testing.assert_close(before[k], before2[k])  # the same start
    moved = max(float((plain[k] - before[k]).abs().max()) for k in before)
    assert moved > 1e-3
    if cls is PPOModule:  # the critic moved too
        assert any(not torch.equal(plain[k], before[k]) for k in before if k.startswith("1."))
    for k in before:
        torch.testing.assert_close(shared[k], plain[k], atol=2e-5, rtol=1e-4)
    a = cls.algorithm
    for key in (f"{a}/pg_loss", f"{a}/kl", f"{a}/reward"):
        assert shared_logs[key] == pytest.approx(plain_logs[key], abs=1e-5), key
