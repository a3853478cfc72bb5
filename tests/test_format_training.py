"""Every TRL preference format, standard and conversational, trains a reward model, and every format with
prompts feeds PPO rollouts (tiny Llama with a ChatML template, pad = eos)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_hf import make_model_folder
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import hydra_cfg
from lit_rlhf.run.pipeline import run

pytestmark = pytest.mark.slow  # every test trains a reward model or PPO steps

Q = ["boil an egg", "bake bread", "fix a bike", "plant a tree"]
GOOD, BAD = "First heat the water, then wait ten minutes.", "No."


def user(q: str) -> list[dict]:
    return [{"role": "user", "content": f"How do I {q}?"}]


def asst(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


PREFERENCE = {
    "explicit_standard": lambda q: {"prompt": f"How do I {q}?", "chosen": GOOD, "rejected": BAD},
    "explicit_conversational": lambda q: {"prompt": user(q), "chosen": asst(GOOD), "rejected": asst(BAD)},
    "implicit_standard": lambda q: {
        "chosen": f"\n\nHuman: How do I {q}?\n\nAssistant: {GOOD}",
        "rejected": f"\n\nHuman: How do I {q}?\n\nAssistant: {BAD}",
    },
    "implicit_conversational": lambda q: {"chosen": user(q) + asst(GOOD), "rejected": user(q) + asst(BAD)},
}
PROMPTS = {
    "prompt_standard": lambda q: {"prompt": f"How do I {q}?"},
    "prompt_conversational": lambda q: {"prompt": user(q)},
    "completion_conversational": lambda q: {"prompt": user(q), "completion": asst(GOOD)},
    "messages": lambda q: {"messages": user(q) + asst(GOOD)},
}
QUICK = ["trainer.enable_progress_bar=false", "logger=none", "task.datamodule.max_prompt_tokens=160"]


def write(path: Path, make) -> Path:
    rows = [make(f"{q} ({i})") for i in range(3) for q in Q]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_model_folder("llama", tmp_path_factory.mktemp("llama") / "m")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, llama) -> Path:
    """A reward-model folder of the same family and tokenizer (an untrained head: only the flow matters)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("rm")
    AutoModelForSequenceClassification.from_pretrained(llama, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(llama).save_pretrained(out)
    return out


@pytest.mark.parametrize("fmt", sorted(PREFERENCE))
def test_each_preference_format_trains_a_reward_model(tmp_path: Path, llama: Path, fmt: str) -> None:
    data = write(tmp_path / f"{fmt}.jsonl", PREFERENCE[fmt])
    overrides = [
        *QUICK,
        "model=hf",
        f"model.name_or_path={llama}",
        "task=reward_model",
        "reward=helpful",
        "data=jsonl",
        f"data.path={data}",
        f"data.preference.helpful={data}",
        "task.max_epochs=1",
        "task.datamodule.batch_size=4",
        "task.datamodule.max_length=256",
        "task.module.warmup_steps=1",
    ]
    with hydra_cfg(tmp_path, overrides) as cfg:
        run(cfg)
        out = Path(cfg.paths.output_dir) / "model"
    trained = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    base = AutoModelForCausalLM.from_pretrained(llama).state_dict()
    moved = [k for k, v in trained.items() if k in base and not torch.equal(v, base[k])]
    assert moved, f"{fmt}: the backbone did not move"


@pytest.mark.parametrize("fmt", [*sorted(PROMPTS), "explicit_conversational", "implicit_standard"])
def test_each_format_with_prompts_feeds_ppo(
    tmp_path: Path, llama: Path, reward_model: Path, fmt: str
) -> None:
    data = write(tmp_path / f"{fmt}.jsonl", {**PROMPTS, **PREFERENCE}[fmt])
    overrides = [
        *QUICK,
        "model=hf",
        f"model.name_or_path={llama}",
        "+transform=logsigmoid",
        "reward=helpful",
        f"reward.helpful.path={reward_model}",
        "data=jsonl",
        f"data.path={data}",
        f"task.policy_path={llama}",
        "task.iterations=1",
        "task.val_check_interval=1",
        "task.datamodule.batch_size=4",
        "task.module.max_new_tokens=4",
        "task.module.eval_samples_per_prompt=1",
        "task.callbacks.reward_transform.n_samples=1",
    ]
    with hydra_cfg(tmp_path, overrides) as cfg:
        run(cfg)
        out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["val/response_length"] >= 1
    tuned = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(llama).state_dict()
    assert any(not torch.equal(tuned[k], base[k]) for k in base), f"{fmt}: PPO did not move the policy"
