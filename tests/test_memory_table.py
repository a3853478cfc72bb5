"""scripts/memory_table.py: parameter counts against real models, byte totals against hand sums."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("memory_table", ROOT / "scripts" / "memory_table.py")
mt = importlib.util.module_from_spec(_spec)
sys.modules["memory_table"] = mt  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(mt)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def gpt2_config(s) -> GPT2Config:
    return GPT2Config(
        vocab_size=s.vocab, n_positions=s.n_positions, n_embd=s.d_model, n_layer=s.n_layer,
        n_head=s.n_head, n_inner=s.d_ff, num_labels=1,
    )  # fmt: skip


def llama_config(s) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=s.vocab, hidden_size=s.d_model, intermediate_size=s.d_ff, num_hidden_layers=s.n_layer,
        num_attention_heads=s.n_head, num_key_value_heads=s.n_kv_head or s.n_head,
        tie_word_embeddings=False, num_labels=1,
    )  # fmt: skip


def test_gpt2_small_has_its_known_124m_parameters() -> None:
    assert mt.param_count(mt.GPT2_125M) == 124_439_808  # the published count of `gpt2`
    with torch.device("meta"):  # shapes only, no memory
        assert n_params(GPT2LMHeadModel(gpt2_config(mt.GPT2_125M))) == 124_439_808
        rm = GPT2ForSequenceClassification(gpt2_config(mt.GPT2_125M))
    assert n_params(rm) == mt.scalar_head_params(mt.GPT2_125M)


def test_small_gpt2_built_on_cpu_matches_the_formula() -> None:
    s = mt.Shape(
        "tiny", n_layer=2, d_model=64, n_head=4, d_ff=256, vocab=1000, n_positions=128, bias=True, tied=True
    )
    assert n_params(GPT2LMHeadModel(gpt2_config(s))) == mt.param_count(s)


@pytest.mark.parametrize("shape", [mt.LLAMA_1B, mt.LLAMA_7B], ids=lambda s: s.name)
def test_llama_shapes_match_transformers(shape) -> None:
    with torch.device("meta"):
        assert n_params(LlamaForCausalLM(llama_config(shape))) == mt.param_count(shape)
        assert n_params(LlamaForSequenceClassification(llama_config(shape))) == mt.scalar_head_params(shape)
    assert mt.param_count(mt.LLAMA_7B) == 6_738_415_616  # LLaMA-2-7B


def test_lora_count_by_hand() -> None:
    # GPT-2 small, r=16: c_attn 768→2304: 16·(768+2304); c_proj 768→768: 16·1536; 12 layers
    assert mt.lora_params(mt.GPT2_125M, 16) == 12 * (16 * 3072 + 16 * 1536) == 884_736
    # LLaMA-2-7B, r=8: q, k, v, o all 4096→4096: 4 · 8 · 8192 per layer
    assert mt.lora_params(mt.LLAMA_7B, 8) == 32 * 4 * 8 * 8192


def test_byte_totals_by_hand() -> None:
    s, lm = mt.GPT2_125M, 124_439_808
    head = lm + 768  # tied LM: the backbone is the whole LM; the critic/reward adds h → 1
    ddp = mt.memory(s, "ddp", 8, "adamw")
    assert ddp["actor"] == 2 * lm and ddp["reference"] == 2 * lm and ddp["reward"] == 2 * head
    assert ddp["grads"] == 2 * (lm + head)
    assert ddp["optimizer"] == (4 + 8) * (lm + head)  # fp32 master + m + v
    assert mt.memory(s, "ddp", 8, "adamw8bit")["optimizer"] == (4 + 2) * (lm + head)

    fsdp = mt.memory(s, "fsdp", 8, "adamw")
    for key in ("actor", "critic", "reference", "reward", "grads", "optimizer"):
        assert fsdp[key] == pytest.approx(ddp[key] / 8)
    zero2 = mt.memory(s, "zero2", 8, "adamw")
    assert zero2["actor"] == ddp["actor"] and zero2["optimizer"] == pytest.approx(ddp["optimizer"] / 8)

    lora = mt.memory(s, "ddp", 8, "adamw", lora_rank=16)
    assert lora["reference"] == 0  # the actor's base with adapters disabled
    assert lora["grads"] == 2 * (2 * 884_736 + 768)  # two sets of adapters + value head

    # Korthikanti et al.: L·s·b·h·(34 + 5·a·s/h) = 12·1024·4·768·(34 + 80)
    assert ddp["activations"] == 12 * 1024 * 4 * 768 * 114 == 4_303_355_904
    assert (
        mt.activation_bytes(s, 1024, 4, checkpointing=True) == 12 * 2 * 1024 * 4 * 768 + 1024 * 4 * 768 * 114
    )


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        mt.memory(mt.GPT2_125M, "tp", 8)


def test_script_prints_a_table_per_size_and_the_formulas() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "memory_table.py"), "--gpus", "8"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.count("### ") == 3 and "| FSDP / ZeRO-3 | LoRA r=16 | adamw8bit |" in out
    assert "Korthikanti" in out
