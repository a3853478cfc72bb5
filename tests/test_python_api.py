"""``examples/python_api.py`` runs: SFT, a reward model, then PPO and GRPO (with a reward function beside the
reward model) built in Python without Hydra, on a tiny embedded world (~30 s on 2 cores)."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

import lit_rlhf

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_imports_from_lit_rlhf_and_documents_its_arguments():
    for name in lit_rlhf.__all__:
        obj = getattr(lit_rlhf, name)
        params = [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        assert obj.__doc__, name
        assert [p.name for p in params if p.name not in obj.__doc__] == [], name
    assert {"RewardFunction", "word_limit", "build_world", "ValueModel"} <= set(lit_rlhf.__all__)


@pytest.mark.slow
def test_python_api_example_trains_ppo_and_grpo(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("python_api", ROOT / "examples" / "python_api.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(tmp_path, iterations=2)
    for algo in ("ppo", "grpo"):
        r = results[algo]
        assert r["policy_moved"] == 1.0, algo
        assert {"reward/helpful_transformed", "reward/helpful_above_ref", "gold/win_rate_helpful"} <= set(
            r
        ), algo
        assert r["reward/helpful_transformed"] < 0  # log σ(·) < 0
    assert -20 < results["grpo"]["reward/short_transformed"] <= 0  # log max(p, ε) of the word-limit rule
    assert "reward/short_raw" not in results["ppo"]
