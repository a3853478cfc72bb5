"""The issue's two commands on Hugging Face datasets, through ``python train.py`` (tiny models, seconds):
a reward model on a ``save_to_disk`` folder and GRPO on a parquet prompt file whose prompt column is
``question`` — with ``data.path`` alone, on the default ``data=world`` group. Bad rows and an offline Hub id
are cases of the failure table (``failure_table_inputs.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_cli import World, expect, same_weights

datasets = pytest.importorskip("datasets")
PAIRS = [{"prompt": f"about cats {i}", "chosen": "cats purr", "rejected": "no"} for i in range(40)]


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> World:
    torch.set_num_threads(1)
    return World(tmp_path_factory.mktemp("data_cli"))


def own(overrides: list[str]) -> list[str]:
    """A World command line without ``data=jsonl``: ``data.path`` alone selects the user's data."""
    return [o for o in overrides if o != "data=jsonl"]


@pytest.mark.slow
def test_reward_model_trains_on_a_saved_dataset_folder(w: World, tmp_path: Path) -> None:
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(folder := tmp_path / "pairs"))
    run = w.train_py(tmp_path, *own(w.rm(folder)))
    expect(run, 0, f"data.path={folder}: training on it instead of the embedded world", "val/rm_acc")
    assert not same_weights(tmp_path / "run" / "model", w.m["rm"])  # a reward model trained from the policy
    assert not (w.cache / "world-seed0").exists()  # the embedded world was not generated


@pytest.mark.slow
def test_grpo_trains_on_a_parquet_prompt_file_with_a_mapped_prompt_column(w: World, tmp_path: Path) -> None:
    rows = [{"question": p["prompt"], "answer": "purr"} for p in PAIRS]
    datasets.Dataset.from_list(rows).to_parquet(str(path := tmp_path / "questions.parquet"))
    run = w.train_py(tmp_path, *own(w.ppo(prompts=path)), "task=grpo", "data.columns.prompt=question")
    expect(run, 0, "lit_rlhf grpo: done", "r_ref[helpful] (quantile): 1 per prompt")
    assert "over 40 prompts" in run.out  # the 40 questions are the prompts
    assert not same_weights(tmp_path / "run" / "model", w.m["policy"])  # the policy moved
