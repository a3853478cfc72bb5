"""examples/: the conversational sample files are in the formats their README states, and
``experiment=smollm2`` composes into a PPO run on them, with a reward-model stage on the same model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ROLES = {"system", "user", "assistant"}
MAX_WORDS = 40


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / name).read_text(encoding="utf-8").splitlines()]


def check_conversation(messages: list, where: str) -> None:
    """Messages with known roles and non-empty text; a system turn only first; user/assistant alternate."""
    assert isinstance(messages, list) and messages, where
    for m in messages:
        assert set(m) == {"role", "content"} and m["role"] in ROLES, (where, m)
        assert isinstance(m["content"], str) and m["content"].strip(), (where, m)
    turns = [m["role"] for m in messages]
    if turns[0] == "system":
        turns = turns[1:]
    assert "system" not in turns, where
    assert all(a != b for a, b in zip(turns, turns[1:])), (where, turns)
    assert turns[0] == "user", where


def last_user(prompt: list[dict]) -> str:
    return [m["content"] for m in prompt if m["role"] == "user"][-1]


def words(messages: list[dict]) -> int:
    return len(messages[-1]["content"].split())


def test_pairs_are_explicit_conversational_preferences():
    rows = read("chat_pairs.jsonl")
    assert len(rows) == 48
    for i, r in enumerate(rows, 1):
        where = f"chat_pairs.jsonl:{i}"
        assert set(r) == {"prompt", "chosen", "rejected"}, where
        check_conversation(r["prompt"], where)
        assert r["prompt"][-1]["role"] == "user", where
        for key in ("chosen", "rejected"):
            assert len(r[key]) == 1 and r[key][0]["role"] == "assistant", (where, key)
            check_conversation([r["prompt"][-1], *r[key]], f"{where}:{key}")
            assert words(r[key]) <= MAX_WORDS, (where, key)
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"], where
    # the README's figures: rejected answers are shorter on average, 3 of 48 longer than their chosen one
    chosen = [words(r["chosen"]) for r in rows]
    rejected = [words(r["rejected"]) for r in rows]
    assert round(sum(chosen) / 48) == 22 and round(sum(rejected) / 48) == 8
    assert sum(b > a for a, b in zip(chosen, rejected)) == 3


def test_prompts_and_demonstrations_have_their_formats():
    prompts = read("chat_prompts.jsonl")
    assert len(prompts) == 32
    for i, r in enumerate(prompts, 1):
        assert set(r) == {"prompt"}, i
        check_conversation(r["prompt"], f"chat_prompts.jsonl:{i}")
        assert r["prompt"][-1]["role"] == "user", i
    demos = read("chat_sft.jsonl")
    assert len(demos) == 32
    for i, r in enumerate(demos, 1):
        assert set(r) == {"messages"}, i
        check_conversation(r["messages"], f"chat_sft.jsonl:{i}")
        assert r["messages"][-1]["role"] == "assistant" and words(r["messages"]) <= MAX_WORDS, i


def test_the_brief_prompts_are_the_prompts_asking_for_one_sentence():
    """experiment=smollm2_grpo's prompts: chat_prompts.jsonl with " Answer in one sentence." appended."""
    plain, brief = read("chat_prompts.jsonl"), read("chat_prompts_brief.jsonl")
    assert len(brief) == len(plain) == 32
    for a, b in zip(plain, brief):
        assert b["prompt"][:-1] == a["prompt"][:-1] and b["prompt"][-1]["role"] == "user"
        assert b["prompt"][-1]["content"] == a["prompt"][-1]["content"] + " Answer in one sentence."


def test_the_three_files_ask_different_questions():
    pairs = {last_user(r["prompt"]) for r in read("chat_pairs.jsonl")}
    prompts = {last_user(r["prompt"]) for r in read("chat_prompts.jsonl")}
    demos = {last_user(r["messages"]) for r in read("chat_sft.jsonl")}
    assert len(pairs) == 48 and len(prompts) == 32 and len(demos) == 32  # no repeats within a file
    assert not (pairs & prompts) and not (pairs & demos) and not (prompts & demos)


def test_readme_examples_are_lines_of_the_files():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    block = readme.split("```json\n", 1)[1].split("```", 1)[0].splitlines()
    lines = {
        line
        for name in ("chat_pairs.jsonl", "chat_prompts.jsonl", "chat_sft.jsonl")
        for line in (EXAMPLES / name).read_text(encoding="utf-8").splitlines()
    }
    assert len(block) == 3 and all(line in lines for line in block), block


@pytest.fixture
def compose_train():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield lambda overrides: compose(config_name="train", overrides=[f"paths.root_dir={ROOT}", *overrides])


def test_smollm2_preset_runs_ppo_from_the_instruct_model_on_the_examples(compose_train):
    cfg = compose_train(["experiment=smollm2"])
    assert cfg.task.name == "ppo" and list(cfg.reward) == ["helpful"]
    assert cfg.model._target_ == "lit_rlhf.models.Pretrained"
    assert cfg.task.policy_path == cfg.model.name_or_path  # no SFT stage: the instruct model is the policy
    assert cfg.model.name_or_path.endswith("/models/SmolLM2-135M-Instruct")
    assert Path(cfg.task.datamodule.train_path) == EXAMPLES / "chat_prompts.jsonl"
    assert Path(cfg.reward.helpful.data) == EXAMPLES / "chat_pairs.jsonl"
    assert cfg.task.datamodule.batch_size == 4 and cfg.task.callbacks.reward_transform.n_samples == 4
    assert cfg.task.iterations % cfg.task.val_check_interval == 0  # the last evaluation is at the end

    # the reward-model stage is composed without the preset: pipeline.reward_model carries its settings
    stage = compose_train(["task=reward_model", "reward=helpful", *cfg.pipeline.reward_model])
    assert stage.task.name == "reward_model" and stage.model.name_or_path == cfg.model.name_or_path
    assert Path(stage.reward.helpful.data) == EXAMPLES / "chat_pairs.jsonl"
    assert stage.task.module.lr == pytest.approx(1e-5) and stage.task.max_epochs == 2
    assert (stage.task.datamodule.max_length, stage.task.datamodule.max_prompt_tokens) == (256, 128)


@pytest.mark.parametrize("task", ["ppo", "grpo", "rloo", "reinforce_pp"])
@pytest.mark.parametrize("generation", ["hf", "vllm"])
def test_smollm2_preset_composes_with_every_policy_task_and_engine(compose_train, task, generation):
    """The README's own-model commands: ``experiment=smollm2 task=… generation=…`` sets only keys the chosen
    algorithm has (its typed config refuses any other), and ``experiment=smollm2_grpo`` likewise."""
    from hydra.utils import get_class

    for overrides in (["experiment=smollm2", f"task={task}"], ["experiment=smollm2_grpo"]):
        cfg = compose_train([*overrides, f"generation={generation}", "+transform=logsigmoid"])
        module_cls = get_class(cfg.task.module._target_)
        settings = {k: v for k, v in cfg.task.module.items() if k != "_target_"}
        known = {f.name for f in dataclasses.fields(module_cls.config_class)}
        assert not set(settings) - known, (overrides, sorted(set(settings) - known))
        assert cfg.generation._target_.rsplit(".", 1)[-1].lower() == f"{generation}generation"
