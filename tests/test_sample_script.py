"""scripts/sample.py: answers through the chat template with the rollout's sampling, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_hf import make_model_folder

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from sample import sample, word_limit_summary  # noqa: E402


def test_sample_renders_the_template_and_counts_tokens(tmp_path: Path) -> None:
    folder = make_model_folder("llama", tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"How do I bake bread {i}?"}]} for i in range(3)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = sample(str(folder), str(prompts), n=2, max_new_tokens=5)
    assert [r["prompt"] for r in out["responses"]] == ["How do I bake bread 0?", "How do I bake bread 1?"]
    assert all(1 <= r["tokens"] <= 5 for r in out["responses"])
    assert out["mean_tokens"] == sum(r["tokens"] for r in out["responses"]) / 2


def test_samples_per_prompt_repeat_each_prompt_and_differ(tmp_path: Path) -> None:
    folder = make_model_folder("llama", tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi?"}]}) + "\n")
    out = sample(str(folder), str(prompts), n=1, max_new_tokens=6, samples=4)
    assert [r["prompt"] for r in out["responses"]] == ["Hi?"] * 4
    assert len({r["response"] for r in out["responses"]}) > 1  # four draws, not one answer four times


def test_reward_model_scores_each_answer_as_rollouts_do(tmp_path: Path, monkeypatch) -> None:
    """--reward-model: one score per answer, read from the sampled token ids and their mask (prompt and
    answer, as rollouts are scored), the mean their mean."""
    import sample as sample_module  # noqa: PLC0415

    seen = []
    real = sample_module.reward_scores
    monkeypatch.setattr(sample_module, "reward_scores", lambda m, i, a: seen.append((i, a)) or real(m, i, a))
    folder = make_model_folder("llama", tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}?"}]} for i in range(2)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = sample(str(folder), str(prompts), n=2, max_new_tokens=5, samples=2, reward_model=str(folder))
    scores = [r["reward"] for r in out["responses"]]
    assert len(scores) == 4 and len(set(scores)) > 1
    assert out["mean_reward"] == pytest.approx(sum(scores) / 4)
    ((ids, mask),) = seen
    assert ids.shape == mask.shape and ids.shape[0] == 4
    # rows 0, 1 (and 2, 3) answer one prompt: their attended lengths differ by their answers' token counts
    n, k = mask.sum(-1).tolist(), [r["tokens"] for r in out["responses"]]
    assert n[0] - n[1] == k[0] - k[1] and n[2] - n[3] == k[2] - k[3] and min(k) >= 1


def test_a_reward_model_with_another_tokenizer_is_refused(tmp_path: Path) -> None:
    policy, other = make_model_folder("llama", tmp_path / "m"), make_model_folder("gpt2", tmp_path / "rm")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi?"}]}) + "\n")
    with pytest.raises(ValueError, match="--reward-model .*: its tokenizer differs"):
        sample(str(policy), str(prompts), n=1, max_new_tokens=3, reward_model=str(other))


def test_word_limit_summary_by_hand() -> None:
    rows = [{"prompt": "q", "response": r} for r in ("a b", "a b c d", "a b c d e f g h")]
    # limit 4: passes, passes, 4/8; share 2/3, mean probability (1 + 1 + 0.5) / 3
    assert word_limit_summary(rows, 4) == pytest.approx((2 / 3, 2.5 / 3))


@pytest.mark.slow  # scripts/sample.py in a subprocess
def test_sample_reports_a_missing_folder_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "sample.py"),
            str(tmp_path / "nope"),
            str(tmp_path / "p.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "sample.py: error:" in proc.stderr and "Traceback" not in proc.stderr
