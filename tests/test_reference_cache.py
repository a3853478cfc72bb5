"""r_ref is sampled from the exact prompt token ids the rollouts use, and cached under a key of them:
other truncation, another tokenizer or other generation settings sample anew; the same settings reuse."""

from __future__ import annotations

import copy
import json
from functools import partial

import pytest
import torch
from tiny_hf import make_config, make_tokenizer
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from lit_rlhf.callbacks import RewardTransformCallback
from lit_rlhf.callbacks.reward_transform import prompt_items
from lit_rlhf.data.datamodules import PromptDataModule
from lit_rlhf.models import ValueModel
from lit_rlhf.reference import generation_settings
from lit_rlhf.tasks.ppo import PPOModule

PROMPTS = [
    "How do I boil an egg in boiling water?",
    "What is the capital of France, please?",
    "Tell me a joke about cats and a bar.",
    "Give me a recipe for soup with onions.",
    "The quick brown fox jumps over the dog.",
    "Answer briefly and politely, thank you.",
    "Put the carrots in water with some salt.",
    "Which dog walks into a bar and orders?",
]
REWARD = {"helpful": {"reference": {"statistic": "quantile", "q": 0.5}}}


@pytest.fixture(scope="module")
def models():
    """A tiny random Llama policy (as π and π_ref), critic and reward model, sharing one vocabulary."""
    torch.manual_seed(0)
    cfg = make_config("llama", make_tokenizer("llama"), hidden=32, layers=1)
    actor = AutoModelForCausalLM.from_config(cfg)
    cfg.num_labels = 1
    critic = ValueModel(AutoModel.from_config(cfg))
    rm = AutoModelForSequenceClassification.from_config(cfg)
    return actor, critic, rm


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def module(models, tok, **kw) -> PPOModule:
    actor, critic, rm = models
    return PPOModule(
        actor=actor,
        critic=critic,
        ref=copy.deepcopy(actor),
        reward_models={"helpful": rm},
        tokenizer=tok,
        optimizer=partial(torch.optim.AdamW),
        **kw,
    )


def datamodule(tok, path, max_prompt_tokens: int, chat_template: bool | str = False) -> PromptDataModule:
    """Plain prompts by default: truncated to a few tokens, a templated prompt would keep only the
    template's tail (the same ids for every tokenizer of the family)."""
    dm = PromptDataModule(
        tok,
        str(path),
        val_fraction=0.25,
        batch_size=2,
        max_prompt_tokens=max_prompt_tokens,
        chat_template=chat_template,
    )
    dm.setup("fit")
    return dm


def r_ref(cache, ppo: PPOModule, dm: PromptDataModule, n: int = 2) -> RewardTransformCallback:
    cb = RewardTransformCallback(reward=REWARD, n_samples=n, cache_dir=str(cache))
    cb.table = cb.reference_table(ppo, prompt_items(dm))
    return cb


def test_r_ref_samples_the_rollouts_prompt_ids(tmp_path, models, data_file):
    tok = make_tokenizer("llama")
    ppo, dm = module(models, tok, max_new_tokens=3), datamodule(tok, data_file, max_prompt_tokens=4)
    seen: list[list[int]] = []
    generate = ppo.generate_reference

    def spy(ids, mask):  # records the prompts π_ref is sampled on, then samples
        seen.extend(row[m.bool()].tolist() for row, m in zip(ids, mask))
        return generate(ids, mask)

    ppo.generate_reference = spy
    cb = r_ref(tmp_path, ppo, dm, n=2)
    items = [*dm._train, *dm._val]
    assert seen == [it["input_ids"] for it in items for _ in range(2)]  # truncated to 4 tokens, n = 2
    assert all(len(s) == 4 for s in seen)
    assert sorted(cb.table.row) == sorted(it["id"] for it in items)


def test_cache_key_follows_prompt_ids_tokenizer_and_generation(tmp_path, models, data_file):
    tok = make_tokenizer("llama")
    ppo, dm8 = module(models, tok, max_new_tokens=3), datamodule(tok, data_file, max_prompt_tokens=8)
    first = r_ref(tmp_path, ppo, dm8)
    assert first.loaded_from_cache is False
    again = r_ref(tmp_path, module(models, tok, max_new_tokens=3), datamodule(tok, data_file, 8))
    assert again.loaded_from_cache is True  # same settings: reused
    torch.testing.assert_close(again.table.values, first.table.values)

    dm4 = datamodule(tok, data_file, max_prompt_tokens=4)
    assert [it["input_ids"] for it in dm4._train] != [it["input_ids"] for it in dm8._train]
    assert r_ref(tmp_path, ppo, dm4).loaded_from_cache is False  # other truncation

    # another tokenizer (fewer merges) with the same special ids and the same models: only the prompt
    # token ids differ
    tok2 = make_tokenizer("llama", vocab_size=280)
    ppo2 = module(models, tok2, max_new_tokens=3)
    assert generation_settings(ppo2.generation_config) == generation_settings(ppo.generation_config)
    assert r_ref(tmp_path, ppo2, datamodule(tok2, data_file, 8)).loaded_from_cache is False

    # the sampling settings come from the module's generation config
    assert r_ref(tmp_path, module(models, tok, max_new_tokens=4), dm8).loaded_from_cache is False
    assert (
        r_ref(tmp_path, module(models, tok, max_new_tokens=3, temperature=0.7), dm8).loaded_from_cache
        is False
    )
    # the chat-template setting changes the prompt ids, hence the key
    templated = datamodule(tok, data_file, 8, chat_template=True)
    assert r_ref(tmp_path, ppo, templated).loaded_from_cache is False
    other_eos = module(models, tok, max_new_tokens=3)
    other_eos.generation_config.eos_token_id = [tok.eos_token_id, tok.pad_token_id + 1]
    assert r_ref(tmp_path, other_eos, dm8).loaded_from_cache is False
    assert len(list(tmp_path.glob("samples-*.pt"))) == 7


def test_prompt_items_prefers_the_datamodules_all_items(data_file):
    from types import SimpleNamespace

    tok = make_tokenizer("llama")
    dm = datamodule(tok, data_file, max_prompt_tokens=8)
    assert prompt_items(dm) == dm.all_items == [*dm._train, *dm._val]
    old = SimpleNamespace(_train=dm._train[:1], _val=dm._val)  # a datamodule without ``all_items``
    assert prompt_items(old) == [*dm._train[:1], *dm._val]
    new = SimpleNamespace(_train=[], _val=[], all_items=list(reversed(dm.all_items)))
    assert prompt_items(new) == new.all_items
