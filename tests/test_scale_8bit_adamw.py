"""Scaling out, 8-bit optimizers: ``optimizer=adamw8bit`` / ``paged_adamw8bit`` (bitsandbytes) name the
``lit_rlhf[bnb]`` extra when it is missing, import quietly, and train a reward model and PPO's actor and
critic with 8-bit optimizer state. The trainer group: ``test_scale_trainers.py``; DDP on CPU:
``test_scale_ddp_cpu.py``."""

from __future__ import annotations

import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)

from conftest import ROOT, hydra_cfg

VOCAB = 512  # wte has VOCAB·32 = 16384 elements: above bitsandbytes' min_8bit_size (4096)


def tiny_gpt2(cls: type, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=1, n_head=2, num_labels=1, pad_token_id=0
    )
    return cls(config)


def fit_steps(module: L.LightningModule, batches: list[dict], **trainer_kw) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **trainer_kw,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))


def optimizer_from_config(tmp_path: Path, name: str):
    with hydra_cfg(tmp_path, [f"optimizer={name}"]) as cfg:
        return instantiate(cfg.optimizer)


# ------------------------------------------------------------------ 8-bit AdamW
def test_adamw8bit_without_bitsandbytes_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_rlhf.training import optim

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    p = torch.nn.Parameter(torch.zeros(2))
    for factory in (optim.adamw8bit, optim.paged_adamw8bit):
        with pytest.raises(ImportError, match=r"lit_rlhf\[bnb\]"):
            factory([p], lr=1e-3)


@pytest.mark.slow  # a fresh interpreter importing torch and bitsandbytes: ~10 s
def test_bitsandbytes_import_is_quiet() -> None:
    pytest.importorskip("bitsandbytes")
    code = (
        "import logging; logging.basicConfig(); "
        "from lit_rlhf.training.optim import _bitsandbytes; _bitsandbytes()"
    )
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "bitsandbytes" not in out.stdout + out.stderr, out.stderr


def assert_8bit_state(opt: torch.optim.Optimizer, big: torch.Tensor, small: torch.Tensor) -> None:
    state = opt.state[big]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    assert state["state1"].shape == big.shape
    # bitsandbytes keeps tensors below min_8bit_size (4096 elements) in 32-bit: the check above is real
    assert opt.state[small]["state1"].dtype == torch.float32


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
def test_reward_model_step_with_8bit_adamw(tmp_path: Path, name: str) -> None:
    pytest.importorskip("bitsandbytes")
    from lit_rlhf.tasks.reward_model import RewardModelModule

    model = tiny_gpt2(GPT2ForSequenceClassification)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = RewardModelModule(model, optimizer_from_config(tmp_path, name), lr=1e-2, warmup_steps=0)
    B, T = 4, 12
    gen = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1, VOCAB, (2 * B, T), generator=gen),  # B chosen rows, then B rejected
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
    }
    with pytest.warns(UserWarning, match="Paged") if name.startswith("paged") else nullcontext():
        fit_steps(module, [batch, batch])

    wte = model.transformer.wte.weight
    assert not torch.equal(wte, before["transformer.wte.weight"])
    assert not torch.equal(model.score.weight, before["score.weight"])
    assert_8bit_state(module.optimizers().optimizer, wte, model.transformer.ln_f.bias)


def test_ppo_step_with_8bit_adamw(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from lit_rlhf.models import ValueModel
    from lit_rlhf.tasks.ppo import PPOModule

    actor, ref = tiny_gpt2(GPT2LMHeadModel), tiny_gpt2(GPT2LMHeadModel)
    critic = ValueModel(tiny_gpt2(GPT2Model))
    rm = tiny_gpt2(GPT2ForSequenceClassification, seed=1)
    actor_before, critic_before = actor.transformer.wte.weight.clone(), critic.backbone.wte.weight.clone()
    module = PPOModule(
        actor=actor,
        critic=critic,
        ref=ref,
        reward_models={"helpful": rm},
        tokenizer=SimpleNamespace(pad_token_id=0, eos_token_id=1),
        optimizer=optimizer_from_config(tmp_path, "adamw8bit"),
        lr=1e-2,
        value_lr=1e-2,
        max_new_tokens=4,
        ppo_epochs=1,
        num_minibatches=1,
    )
    B, P = 4, 6
    batch = {
        "input_ids": torch.randint(2, VOCAB, (B, P), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.ones(B, P, dtype=torch.long),
        "prompt_ids": torch.arange(B),
    }
    fit_steps(module, [batch])

    assert not torch.equal(actor.transformer.wte.weight, actor_before)
    assert not torch.equal(critic.backbone.wte.weight, critic_before)
    opt_actor, opt_critic = (o.optimizer for o in module.optimizers())
    assert_8bit_state(opt_actor, actor.transformer.wte.weight, actor.transformer.ln_f.bias)
    assert_8bit_state(opt_critic, critic.backbone.wte.weight, critic.backbone.ln_f.bias)
