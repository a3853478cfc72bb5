"""benchmarks/cost.py, ceiling.py and the ``run.py --set`` overrides: pure pieces, nothing timed."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import ceiling  # noqa: E402
import cost  # noqa: E402
from common import SIZES, Settings  # noqa: E402
from sizes import model_config, word_tokenizer  # noqa: E402
from work import UnequalWork, ppo_expected_work, verify_work  # noqa: E402


def test_override_parses_each_field_as_its_type():
    s = SIZES["toy"].override(["ppo_max_new_tokens=256", "lr=3e-5", "prompt_tokens=12"])
    assert (s.ppo_max_new_tokens, s.lr, s.prompt_tokens) == (256, 3e-5, 12)
    assert isinstance(s.lr, float) and isinstance(s.ppo_max_new_tokens, int)
    assert s.ppo_batch_prompts == SIZES["toy"].ppo_batch_prompts  # untouched fields keep the size's value
    assert SIZES["toy"].ppo_max_new_tokens == 24  # the size itself is not changed


@pytest.mark.parametrize(
    "item, message",
    [
        ("ppo_max_tokens=5", "KEY one of .*ppo_max_new_tokens"),
        ("ppo_steps", "expected KEY=VALUE"),
        ("ppo_steps=two", "ppo_steps='two': expected a int"),
        ("precision=bf16", "with --size and --precision"),
    ],
)
def test_override_refuses_unknown_keys_and_bad_values(item, message):
    with pytest.raises(SystemExit, match=message):
        SIZES["toy"].override([item])


def test_run_refuses_an_unknown_set_key_before_running_anything():
    p = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--set", "nope=1"], capture_output=True, text=True
    )
    assert p.returncode != 0 and "--set 'nope=1'" in p.stderr and "Traceback" not in p.stderr


def test_run_refuses_ppo_samples_per_prompt_which_trl_cannot_match():
    cmd = [sys.executable, str(BENCH / "run.py"), "--tasks", "ppo", "--set", "ppo_samples_per_prompt=4"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode != 0 and "TRL's PPO samples one response per prompt" in p.stderr
    assert "Traceback" not in p.stderr


def test_gpt2_position_table_grows_to_the_longest_sequence_only():
    tok = word_tokenizer(100)
    assert model_config("toy", tok).n_positions == 128  # default settings: the documented toy model
    assert model_config("toy", tok, min_positions=100).n_positions == 128
    assert model_config("toy", tok, min_positions=266).n_positions == 266
    llama = model_config("smollm2", word_tokenizer(49152), min_positions=10_000)
    assert llama.max_position_embeddings == 8192  # rope: no table to grow


def test_phase_shares_by_hand():
    lit = {
        "rollout: generation": 2.0,
        "rollout: policy log-prob forward": 0.5,
        "rollout: reference forward": 0.5,
        "update: policy forward": 1.0,
        "update: backward + optimizer + loss maths": 0.8,
        "step total": 5.0,
    }
    assert cost.phase_shares(lit) == pytest.approx(
        {"generation": 0.4, "rollout forwards": 0.2, "update forwards": 0.2, "backward, optimizer, rest": 0.2}
    )
    # TRL's names: generation with logits kept, combined forwards, a "rest" phase with no "forward"
    trl = {
        "rollout: generation (logits kept)": 1.0,
        "rollout: value + reward forwards": 1.0,
        "update: policy+value forward": 2.0,
        "rollout: log-softmax, masks, rewards, GAE (rest)": 3.0,
        "step total": 10.0,
    }
    shares = cost.phase_shares(trl)
    assert shares == pytest.approx(
        {"generation": 0.1, "rollout forwards": 0.1, "update forwards": 0.2, "backward, optimizer, rest": 0.6}
    )
    assert sum(shares.values()) == pytest.approx(1.0)


def test_sampled_tolerance_widens_only_the_sampled_counts():
    expected = ppo_expected_work(SIZES["toy"], prompt_tokens=5)
    work = {
        "ppo_iterations": 10,
        "minibatch_updates": 40,
        "critic_steps": 40,
        "prompt_tokens": 800,
        "generated_positions": 3840,
        "rollouts": 160,
    }
    lit = {**work, "response_tokens": 3000, "tokens": 3800}
    peer = {**work, "response_tokens": 2200, "tokens": 3000}  # 27 % fewer sampled tokens
    with pytest.raises(UnequalWork, match="response_tokens"):
        verify_work("ppo", lit, peer, expected)
    verify_work("ppo", lit, peer, expected, sampled_tolerance=0.4)
    with pytest.raises(UnequalWork, match="rollouts: lit=160 peer=144"):  # exact counts stay exact
        verify_work("ppo", lit, {**peer, "rollouts": 144}, expected, sampled_tolerance=0.4)


def test_cost_refuses_unknown_cells():
    p = subprocess.run(
        [sys.executable, str(BENCH / "cost.py"), "--cells", "8x16,7x7"], capture_output=True, text=True
    )
    assert p.returncode != 0 and "unknown ['7x7']" in p.stderr and "8x16" in p.stderr


@pytest.mark.parametrize("size, vocab", [("toy", 100), ("smollm2", 49152)])
def test_layer_shapes_are_the_models_weight_matrices(size, vocab, monkeypatch):
    # every 2-D weight of the body (Linear in Llama, Conv1D in GPT-2) and the head, counted from the model
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(size, word_tokenizer(vocab)))
    if size == "toy":
        monkeypatch.setitem(ceiling.MODELS, "toy", {**ceiling.MODELS["toy"], "vocab_size": vocab})
    body, head = ceiling.layer_shapes(size)
    body_weights = sum(a * b * n for (a, b), n in body.items())
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    all_2d = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # tied head counted once
    assert body_weights == all_2d - embeddings
    assert head == (model.config.hidden_size, vocab)


def _flop_clock(rows, shape, train, dtype, reps=5):
    """matmul_seconds replaced by the matmul's FLOPs: 2·rows·in·out per product, 3 products when training."""
    return 2 * rows * shape[0] * shape[1] * (3 if train else 1)


def test_step_bound_counts_each_phase_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(ceiling, "matmul_seconds", _flop_clock)
    monkeypatch.setattr(ceiling, "runs_dir", lambda size: tmp_path)
    monkeypatch.setitem(ceiling.MODELS, "toy", {**ceiling.MODELS["toy"], "vocab_size": 100})
    (tmp_path / "data").mkdir()
    (tmp_path / "data/prompts_meta.json").write_text('{"prompt_tokens": 5}')
    pairs = [
        {"chosen_ids": [1] * 7, "rejected_ids": [1] * 9},
        {"chosen_ids": [1] * 3, "rejected_ids": [1] * 4},
    ]
    (tmp_path / "data/pairs_ids.jsonl").write_text("".join(f"{p}\n".replace("'", '"') for p in pairs))
    s = Settings(rm_batch_pairs=2, ppo_batch_prompts=4, ppo_max_new_tokens=3, ppo_epochs=2, ppo_minibatches=2)
    body = 4 * (256 * 768 + 256 * 256 + 2 * 256 * 1024)  # 4 GPT-2 blocks: qkv, proj, MLP in and out
    head = 256 * 100
    # reward model: one step of 2 pairs = 4 sequences padded to 9 tokens, forward + backward, no LM head
    assert ceiling.step_bound("rm", s) == {"update": 6 * body * 4 * 9}
    ppo = ceiling.step_bound("ppo", s)
    # prefill (4 × 5 rows, the first token's logits from its last position), then 2 more tokens × 4 rows
    assert ppo["generation"] == 2 * body * 4 * 5 + 2 * head * 4 + 2 * 2 * (body + head) * 4
    # reference (with head), reward and value (without) over 4 × 8 positions
    assert ppo["rollout forwards"] == 2 * (body + head) * 32 + 2 * 2 * body * 32
    # 2 epochs × 2 minibatches of 2 sequences: policy (with head) and critic, forward + backward
    assert ppo["update"] == 4 * 6 * ((body + head) * 16 + body * 16)
    grpo = ceiling.step_bound("grpo", replace(s, group_batch_prompts=2, group_size=4, grpo_epochs=1))
    assert grpo["rollout forwards"] == 2 * (body + head) * 64 + 2 * body * 64  # no critic
    assert grpo["update"] == 2 * 6 * (body + head) * 32  # 1 epoch × 2 minibatches of 4 rollouts × 8
    phases, flops = ceiling.step_bound_flops("ppo", s)  # the FLOPs it reports are those it timed
    assert flops == sum(phases.values()) == sum(ppo.values())


def _attention_clock(batch, q_len, kv_len, heads, train, dtype):
    """attention_seconds replaced by its score count: batch · queries · keys, × 3 with the backward."""
    return batch * q_len * kv_len * (3 if train else 1)


def test_attention_is_counted_apart_from_the_matmul_bound_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(ceiling, "matmul_seconds", _flop_clock)
    monkeypatch.setattr(ceiling, "attention_seconds", _attention_clock)
    monkeypatch.setattr(ceiling, "runs_dir", lambda size: tmp_path)
    monkeypatch.setitem(ceiling.MODELS, "toy", {**ceiling.MODELS["toy"], "vocab_size": 100})
    (tmp_path / "data").mkdir()
    (tmp_path / "data/prompts_meta.json").write_text('{"prompt_tokens": 5}')
    s = Settings(ppo_batch_prompts=4, ppo_max_new_tokens=3, ppo_epochs=2, ppo_minibatches=2)
    b = ceiling.step_bounds("ppo", s)
    layers = 4
    # prefill 4 × 5 queries × 5 keys; 2 decoding steps over 6 and 7 keys = 2 × the middle (5 + 3 // 2 = 6)
    assert b.attention["generation"] == layers * (4 * 5 * 5 + 2 * 4 * 1 * 6)
    assert b.attention["rollout forwards"] == layers * 3 * 4 * 8 * 8  # reference, reward, value
    # 2 epochs × 2 minibatches × (policy + critic) of 2 sequences × 8 tokens, forward + backward
    assert b.attention["update"] == layers * 8 * 2 * 8 * 8 * 3
    assert b.phases == ceiling.step_bound("ppo", s)  # the matmul-only bound leaves attention out
    assert ceiling.attention_shape("smollm2") == (30, 9, 3, 64)


def test_the_two_timed_attention_kernels_compute_the_same_attention():
    """Timing the plain kernel times a real attention: it equals SDPA's, causal and at a decoding step."""
    torch.manual_seed(0)
    for q_len, causal in ((6, True), (1, False)):
        q, k, v = torch.randn(2, 4, q_len, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
        sdpa, plain = ceiling.attention_kernels(q, k, v, causal)
        torch.testing.assert_close(plain(), sdpa(), rtol=1e-5, atol=1e-5)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    sdpa, plain = ceiling.attention_kernels(q, k, v, causal=True)
    assert not torch.allclose(plain(), ceiling.attention_kernels(q, k, v, causal=False)[1]())  # mask matters


def test_expected_distinct_prompts_of_a_random_minibatch_by_hand():
    # 4 prompts × 2 rollouts, minibatches of 4 rows: a prompt is missing with C(6, 4) / C(8, 4) = 15/70
    assert ceiling.expected_prompts(4, 2, 4) == pytest.approx(4 * 55 / 70)
    assert ceiling.expected_prompts(2, 4, 8) == 2  # every row: every prompt
    assert ceiling.expected_prompts(3, 1, 2) == pytest.approx(2)  # groups of one: nothing shared


def test_shared_prefix_floor_counts_each_prompt_once_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(ceiling, "matmul_seconds", _flop_clock)
    monkeypatch.setattr(ceiling, "attention_seconds", _attention_clock)
    monkeypatch.setattr(ceiling, "runs_dir", lambda size: tmp_path)
    monkeypatch.setitem(ceiling.MODELS, "toy", {**ceiling.MODELS["toy"], "vocab_size": 100})
    (tmp_path / "data").mkdir()
    (tmp_path / "data/prompts_meta.json").write_text('{"prompt_tokens": 5}')
    # GRPO: 4 prompts × G = 2 = 8 rollouts of 5 prompt + 3 response tokens; 1 epoch of 2 minibatches of 4
    s = Settings(
        ppo_max_new_tokens=3, group_batch_prompts=4, group_size=2, grpo_epochs=1, group_minibatches=2
    )
    body = 4 * (256 * 768 + 256 * 256 + 2 * 256 * 1024)
    head = 256 * 100
    b = ceiling.step_bounds("grpo", s, shared=True)
    # prefill of the 4 distinct prompts, first-token logits of 8 rows, 2 more tokens × 8 rows
    assert b.phases["generation"] == 2 * body * 4 * 5 + 2 * head * 8 + 2 * 2 * (body + head) * 8
    # reference (with head) and reward over 4 × 5 prompt rows + 8 × 3 response rows = 44 (not 8 × 8 = 64)
    assert b.phases["rollout forwards"] == 2 * (body + head) * 44 + 2 * body * 44
    # a minibatch of 4 random rollouts holds round(4 · 55/70) = 3 distinct prompts: 3 × 5 + 4 × 3 = 27 rows
    assert b.phases["update"] == 2 * 6 * (body + head) * 27
    equal = ceiling.step_bound("grpo", s)
    assert equal["rollout forwards"] == 2 * (body + head) * 64 + 2 * body * 64
    assert equal["update"] == 2 * 6 * (body + head) * 32
    layers = 4  # attention: prompts among themselves once, responses over 8 keys
    assert b.attention["generation"] == layers * (4 * 5 * 5 + 2 * 8 * 1 * 6)
    assert b.attention["rollout forwards"] == layers * 2 * (4 * 5 * 5 + 8 * 3 * 8)
    assert b.attention["update"] == layers * 2 * 3 * (3 * 5 * 5 + 4 * 3 * 8)
    # whole-group minibatches (minibatch_by_group): 4 rollouts = 2 groups = 2 prompts, 2 × 5 + 4 × 3 = 22 rows
    grouped = ceiling.step_bounds("grpo", replace(s, minibatch_by_group="true"), shared=True)
    assert grouped.phases["update"] == 2 * 6 * (body + head) * 22
    assert grouped.attention["update"] == layers * 2 * 3 * (2 * 5 * 5 + 4 * 3 * 8)
    assert grouped.phases["rollout forwards"] == b.phases["rollout forwards"]  # only the update changes
    # PPO with one sample per prompt: the shared floor is the equal-work floor
    ppo = Settings(ppo_batch_prompts=4, ppo_max_new_tokens=3, ppo_epochs=2, ppo_minibatches=2)
    assert ceiling.step_bound("ppo", ppo, shared=True) == ceiling.step_bound("ppo", ppo)
    # PPO with 2 samples per prompt (ab.py's ppo_samples_per_prompt): the 4 rollouts are 2 prompts × 2, so the
    # reference, reward and value forwards cover 2 × 5 + 4 × 3 = 22 rows instead of 4 × 8 = 32
    ppo2 = ceiling.step_bound("ppo", replace(ppo, ppo_samples_per_prompt=2), shared=True)
    assert ppo2["rollout forwards"] == 2 * (body + head) * 22 + 2 * 2 * body * 22
