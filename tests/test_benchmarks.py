"""Pure helpers of benchmarks/common.py: FLOP counts, the equal-work check, the step clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import StepClock, check_equal, matmul_params, ppo_step_flops, train_flops  # noqa: E402


def test_train_flops_is_six_n_d():
    assert train_flops(10, 7) == 420.0


def test_ppo_step_flops_by_hand():
    # N_lm = 3, N_cls = 2, B = 2, P = 1, R = 2 → 6 token positions
    f = ppo_step_flops(3, 2, batch=2, prompt_len=1, resp_len=2, epochs=2)
    assert f["generation"] == f["ref"] == 2 * 3 * 6
    assert f["value"] == f["reward"] == 2 * 2 * 6
    assert f["update"] == 2 * 6 * (3 + 2) * 6
    assert f["total"] == 36 + 36 + 24 + 24 + 360


def test_check_equal_exact_and_tolerance():
    a, b = {"steps": 4, "tok": 100}, {"steps": 4, "tok": 104}
    assert check_equal(a, b, ("steps",), {"tok": 0.05}) == []
    assert check_equal(a, {"steps": 5, "tok": 100}, ("steps",), {}) == ["steps: lit=4 peer=5"]
    assert check_equal(a, {"steps": 4, "tok": 120}, (), {"tok": 0.05})


def test_step_clock_needs_warmup():
    c = StepClock(stamps=[1.0, 3.0, 6.0], cpu=[0.5, 1.0, 2.0])
    assert c.timed_seconds(1) == 5.0
    assert c.timed_cpu_seconds(1) == 1.5
    with pytest.raises(RuntimeError):
        c.timed_seconds(0)


def test_matmul_params_counts_blocks_and_head():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2, num_labels=1)
    lm = transformers.GPT2LMHeadModel(cfg)
    blocks = sum(p.numel() for n, p in lm.named_parameters() if n.startswith("transformer.h."))
    assert matmul_params(lm) == blocks + 11 * 8
    rm = transformers.GPT2ForSequenceClassification(cfg)
    assert matmul_params(rm) == blocks + 8
