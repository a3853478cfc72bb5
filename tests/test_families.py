"""SFT, reward-model and PPO steps on tiny random models of three families with conversational TRL data.

Llama (pad = eos, ChatML template), Qwen2 (pad ≠ eos, a checkpoint generation_config.json with a
repetition penalty) and GPT-2 (no template, pad = eos fallback), each with a BPE tokenizer trained in the
test. The chat-templated prompt token ids must be the same in SFT, reward-model training, r_ref sampling
and PPO rollouts: a reward model scores exactly what the policy produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_hf import make_model_folder
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import hydra_cfg
from lit_rlhf.data.chat import render_prompts
from lit_rlhf.models import load_tokenizer
from lit_rlhf.run.pipeline import run

pytestmark = pytest.mark.slow  # every test trains SFT, a reward model and PPO steps

QUESTIONS = ["boil an egg", "bake bread", "fix a bike", "plant a tree", "learn to swim", "make soup"]
QUICK = [
    "trainer.enable_progress_bar=false",
    "logger=none",
    "task.datamodule.batch_size=4",
    "task.datamodule.max_prompt_tokens=160",  # whole prompts: the tiny BPE spends many tokens on them
]


def user(q: str, chat: bool = True) -> list[dict] | str:
    return [{"role": "user", "content": f"How do I {q}?"}] if chat else f"How do I {q}?"


def write_data(tmp: Path, chat: bool) -> dict[str, Path]:
    """Pairs, SFT examples and prompts in TRL's conversational formats (``chat``) or its standard (string)
    ones — a tokenizer without a chat template cannot render conversations."""
    pairs, sft, prompts = [], [], []
    for i in range(4):
        for q in QUESTIONS:
            good, bad = f"Step {i}: first {q} slowly, then check it.", "No."
            if chat:
                good, bad = {"role": "assistant", "content": good}, {"role": "assistant", "content": bad}
                pairs.append({"prompt": user(q), "chosen": [good], "rejected": [bad]})
                sft.append({"messages": [*user(q), good]})
                prompts.append({"prompt": [{"role": "user", "content": f"How do I {q}, version {i}?"}]})
            else:
                pairs.append({"prompt": user(q, False), "chosen": good, "rejected": bad})
                sft.append({"prompt": user(q, False), "completion": good})
                prompts.append({"prompt": f"How do I {q}, version {i}?"})
    out = {}
    for name, rows in (("pairs", pairs), ("sft", sft), ("prompts", prompts)):
        out[name] = tmp / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def run_task(tmp: Path, name: str, overrides: list[str]) -> Path:
    with hydra_cfg(tmp / name, [*QUICK, *overrides], cache=tmp / "cache") as cfg:
        run(cfg)
        return Path(cfg.paths.output_dir) / "model"


@pytest.mark.parametrize(
    ("family", "generation"), [("llama", None), ("qwen2", {"repetition_penalty": 2.5}), ("gpt2", None)]
)
def test_sft_reward_model_and_ppo_steps(tmp_path: Path, family: str, generation, monkeypatch) -> None:
    torch.set_num_threads(1)
    base = make_model_folder(family, tmp_path / "base", generation_config=generation)
    tok = load_tokenizer(base)  # as every stage loads it: pad = eos when the folder has no pad
    chat = family != "gpt2"
    data = write_data(tmp_path, chat)
    model = ["model=hf", f"model.name_or_path={base}"]

    # which prompt ids each stage feeds its model
    seen: dict[str, set[tuple[int, ...]]] = {"sft": set(), "reward_model": set(), "rollout": set()}

    def rows(ids: torch.Tensor, mask: torch.Tensor) -> set[tuple[int, ...]]:
        return {tuple(i[m.bool()].tolist()) for i, m in zip(ids, mask)}

    # 1. SFT on {"messages"} conversations (GPT-2: {"prompt", "completion"} strings)
    sft_out = run_task(
        tmp_path,
        "sft",
        [
            *model,
            "task=sft",
            "data=jsonl",
            f"data.path={data['sft']}",
            "task.max_epochs=1",
            "task.datamodule.max_length=256",
        ],
    )
    before = AutoModelForCausalLM.from_pretrained(base).state_dict()
    after = AutoModelForCausalLM.from_pretrained(sft_out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "SFT did not move the weights"
    assert (sft_out / "README.md").is_file()  # the model card

    # 2. a reward model on conversational pairs, from the base model's weights
    rm_out = run_task(
        tmp_path,
        "rm",
        [
            *model,
            "task=reward_model",
            "reward=helpful",
            "data=jsonl",
            f"data.path={data['pairs']}",
            f"data.preference.helpful={data['pairs']}",
            "task.max_epochs=2",
            "task.datamodule.max_length=256",
            "task.module.lr=3e-3",
            "task.module.warmup_steps=1",
        ],
    )
    rm = AutoModelForSequenceClassification.from_pretrained(rm_out)
    assert rm.config.architectures[0].endswith("ForSequenceClassification")

    # 3. PPO steps with +transform=logsigmoid: spy on the prompts rollouts and r_ref sample from
    from lit_rlhf.tasks import policy as policy_mod

    real_generate = policy_mod.PolicyModule.generate

    def spy(self, model, input_ids, attention_mask, **kwargs):  # who= (the engine's weights to push)
        seen["rollout"] |= rows(input_ids, attention_mask)
        return real_generate(self, model, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(policy_mod.PolicyModule, "generate", spy)
    ppo_out = run_task(
        tmp_path,
        "ppo",
        [
            *model,
            "+transform=logsigmoid",
            "reward=helpful",
            f"reward.helpful.path={rm_out}",
            "data=jsonl",
            f"data.path={data['prompts']}",
            f"task.policy_path={base}",
            "task.iterations=2",
            "task.val_check_interval=2",
            "task.module.max_new_tokens=6",
            "task.module.eval_samples_per_prompt=1",
            "task.module.lr=1e-3",
            "task.callbacks.reward_transform.n_samples=2",
        ],
    )
    moved = AutoModelForCausalLM.from_pretrained(ppo_out).state_dict()
    assert any(not torch.equal(before[k], moved[k]) for k in before), "PPO did not move the weights"

    # the same prompt ids in every stage: rendered by the tokenizer's template where it has one
    prompts = [json.loads(line)["prompt"] for line in data["prompts"].read_text().splitlines()]
    expected = {tuple(ids) for ids, _ in render_prompts(tok, prompts, "auto")}
    assert seen["rollout"] == expected  # rollouts, evaluation and r_ref sampling all see exactly these
    if tok.chat_template:
        text = tok.decode(next(iter(expected)))
        assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    # SFT and reward-model sequences start with the same rendering of their (shared) prompts
    questions = [user(q, chat) for q in QUESTIONS]
    rendered = [tuple(ids) for ids, _ in render_prompts(tok, questions, "auto")]
    from lit_rlhf.data import PreferenceDataModule, SFTDataModule

    sft_dm = SFTDataModule(tok, str(data["sft"]), val_fraction=0.0, max_prompt_tokens=64, max_length=128)
    rm_dm = PreferenceDataModule(
        tok, str(data["pairs"]), val_fraction=0.0, max_prompt_tokens=64, max_length=128
    )
    sft_dm.setup()
    rm_dm.setup()
    starts_sft = {tuple(it["input_ids"][: it["n_prompt"]]) for it in sft_dm._train}
    assert starts_sft == set(rendered)
    for item in rm_dm._train:
        assert any(tuple(item["chosen_ids"][: len(r)]) == r for r in rendered)
        assert item["chosen_ids"][-1] == tok.eos_token_id  # the reward is read at the EOS the policy emits
