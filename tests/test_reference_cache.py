"""r_ref is sampled from the exact prompt token ids the rollouts use, and cached under a key of them:
other truncation, another tokenizer or other generation settings sample anew; the same settings reuse.
Several references per prompt come from the same samples; a refusal is scored after the rendered prompt;
an ensemble's aggregate is part of the key."""

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
from lit_rlhf.rewards.reference import generation_settings
from lit_rlhf.rewards.transforms import Sigmoid
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


# --- several references per prompt, the refusal, ensembles (issue 18) --------------------------------


def callback(cache, reward=REWARD, transform=None, n: int = 4) -> RewardTransformCallback:
    return RewardTransformCallback(transform=transform, reward=reward, n_samples=n, cache_dir=str(cache))


def test_transform_references_come_from_the_same_cached_samples(tmp_path, models, data_file):
    """Sigmoid(samples=M) / Sigmoid(quantiles=…) re-derive r_ref from the cached (P, n) samples: no new
    sampling, the same key as the one-reference transforms (old caches stay valid)."""
    tok = make_tokenizer("llama")
    ppo, dm = module(models, tok, max_new_tokens=3), datamodule(tok, data_file, max_prompt_tokens=6)
    items = prompt_items(dm)
    one = callback(tmp_path)
    one.table = one.reference_table(ppo, items)
    assert one.loaded_from_cache is False
    (path,) = tmp_path.glob("samples-*.pt")
    samples = torch.load(path, weights_only=True)["helpful"]  # (P, n=4)
    assert samples.shape == (len(items), 4)
    torch.testing.assert_close(one.table.values[:, 0], torch.quantile(samples, 0.5, dim=-1))  # REWARD's q

    par = callback(tmp_path, transform=Sigmoid(samples=3))
    par.table = par.reference_table(ppo, items)
    assert par.loaded_from_cache is True and len(list(tmp_path.glob("samples-*.pt"))) == 1
    torch.testing.assert_close(par.table.refs["helpful"], samples[:, :3])  # the first M = 3 samples
    torch.testing.assert_close(par.table.values[:, 0], samples[:, :3].mean(-1))  # the telemetry's r_ref

    quant = callback(tmp_path, transform=Sigmoid(quantiles=[0.0, 1.0]))
    quant.table = quant.reference_table(ppo, items)
    assert quant.loaded_from_cache is True
    lo_hi = torch.stack([samples.min(-1).values, samples.max(-1).values], -1)
    torch.testing.assert_close(quant.table.refs["helpful"], lo_hi)

    # the reward PPO gets: u = mean over the prompt's 3 references of σ(r − r_ref,m)
    ids = torch.tensor([items[0]["id"], items[1]["id"]])
    scores = torch.tensor([[0.3], [-0.2]])
    par.transforms = {"helpful": par.transform_template}  # what setup() installs
    u, _ = par.transformed(scores, ids)
    expected = torch.sigmoid(scores - samples[:2, :3]).mean(-1, keepdim=True)
    torch.testing.assert_close(u, expected)

    with pytest.raises(ValueError, match=r"transform.samples=5 .* task.callbacks.reward_transform.n_samples"):
        callback(tmp_path, transform=Sigmoid(samples=5)).reference_table(ppo, items)


def test_n_samples_is_part_of_the_key_and_the_statistic_is_not(tmp_path, models, data_file):
    """Another ``n_samples`` samples anew; another statistic (``reward.helpful.reference.q``) re-derives
    r_ref from the cached samples."""
    tok = make_tokenizer("llama")
    ppo, dm = module(models, tok, max_new_tokens=3), datamodule(tok, data_file, max_prompt_tokens=6)
    items = prompt_items(dm)
    tables = {}
    for name, n, q in (("first", 2, 0.5), ("more", 3, 0.5), ("other_q", 2, 0.9)):
        cb = callback(tmp_path, reward={"helpful": {"reference": {"statistic": "quantile", "q": q}}}, n=n)
        cb.table = cb.reference_table(ppo, items)
        tables[name] = cb
    assert tables["first"].loaded_from_cache is False
    assert tables["more"].loaded_from_cache is False  # n changed → sampled anew
    assert tables["other_q"].loaded_from_cache is True  # same samples ...
    first, other = tables["first"].table.values[:, 0], tables["other_q"].table.values[:, 0]
    assert not torch.allclose(other, first)  # ... new statistic
    assert (other >= first).all()  # the 0.9 quantile of the same samples
    assert len(list(tmp_path.glob("samples-*.pt"))) == 2


def scored_sequences(ppo: PPOModule) -> list[list[int]]:
    """Spy on ``ppo.score``: the attended ids of every sequence it scores, in order."""
    seen: list[list[int]] = []
    score = ppo.score

    def spy(ids, mask, P=None):
        seen.extend(row[m.bool()].tolist() for row, m in zip(ids, mask))
        return score(ids, mask, P)

    ppo.score = spy
    return seen


def test_refusal_is_scored_after_the_rendered_prompt_like_any_response(tmp_path, models, data_file):
    """On user data the refusal is a config string: prompt ids rendered with the chat template, then the
    text without special tokens and EOS — the ids reward-model training builds for (prompt, refusal)."""
    from lit_rlhf.data.tokenize import encode_examples

    tok = make_tokenizer("llama")  # ChatML template
    ppo = module(models, tok, max_new_tokens=3)
    dm = datamodule(tok, data_file, max_prompt_tokens=64, chat_template=True)
    items = prompt_items(dm)
    text = "I can't help with that."
    reward = {"helpful": {"reference": {"statistic": "refusal", "response": text}}}
    seen = scored_sequences(ppo)
    cb = callback(tmp_path, reward=reward, n=1)
    cb.table = cb.reference_table(ppo, items)
    prompts = [it["prompt"] for it in items]
    expected = [ids for ids, _ in encode_examples(tok, prompts, [text] * len(prompts), 64, 256, True)]
    assert seen[-len(items) :] == expected  # the last P scored sequences: one refusal per prompt
    assert all(s[-1] == tok.eos_token_id and "<|im_start|>" in tok.decode(s) for s in expected)
    with torch.no_grad():
        from lit_rlhf.models.scoring import reward_scores

        rm = ppo.reward_models["helpful"]
        one = reward_scores(
            rm, torch.tensor([expected[0]]), torch.ones(1, len(expected[0]), dtype=torch.long)
        )
    assert cb.table.lookup(torch.tensor([items[0]["id"]]))[0, 0].item() == pytest.approx(one.item(), abs=1e-5)


def test_refusal_text_defaults_to_the_worlds_only_on_world_data(tmp_path):
    from lit_rlhf.rewards.reference import ReferenceSpec
    from lit_rlhf.world import REFUSAL

    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text("{}")
    spec = ReferenceSpec("refusal")
    reward = {
        "harmless": {"data": str(world / "pairs_harmless.jsonl"), "reference": {"statistic": "refusal"}},
        "mine": {"data": str(tmp_path / "hh.jsonl"), "reference": {"statistic": "refusal"}},
    }
    cb = callback(tmp_path, reward=reward)
    assert cb.fixed_response_text("harmless", spec) == REFUSAL
    assert cb.fixed_response_text("mine", ReferenceSpec("refusal", response="No.")) == "No."
    with pytest.raises(
        ValueError, match=r"reward.mine.reference.statistic=refusal needs reward.mine.reference.response"
    ):
        cb.fixed_response_text("mine", spec)


def test_ensemble_key_has_its_members_and_aggregate_and_plain_keys_are_unchanged(tmp_path, models, data_file):
    from lit_rlhf.rewards.ensemble import RewardEnsemble
    from lit_rlhf.rewards.reference import module_fingerprint, reward_fingerprint

    actor, critic, rm = models
    torch.manual_seed(1)
    rm2 = AutoModelForSequenceClassification.from_config(rm.config)
    assert reward_fingerprint(rm) == module_fingerprint(rm)  # a plain model's key part is what it always was
    tok = make_tokenizer("llama")
    dm = datamodule(tok, data_file, max_prompt_tokens=6)

    def table(ensemble: RewardEnsemble) -> RewardTransformCallback:
        ppo = module((actor, critic, ensemble), tok, max_new_tokens=3)
        return r_ref(tmp_path, ppo, dm)

    std1 = table(RewardEnsemble([rm, rm2], "mean_minus_std", 1.0))
    assert std1.loaded_from_cache is False
    assert table(RewardEnsemble([rm, rm2], "mean_minus_std", 1.0)).loaded_from_cache is True
    std2 = table(RewardEnsemble([rm, rm2], "mean_minus_std", 2.0))  # same weights, another k
    assert std2.loaded_from_cache is False
    assert (std2.table.values <= std1.table.values + 1e-6).all()  # a larger k is more conservative
    assert table(RewardEnsemble([rm, rm2], "min")).loaded_from_cache is False
    assert table(RewardEnsemble([rm2, rm], "mean_minus_std", 1.0)).loaded_from_cache is False  # members
    assert len(list(tmp_path.glob("samples-*.pt"))) == 4


def test_r_ref_carries_the_missing_eos_penalty_the_rollouts_get(tmp_path, models, data_file):
    """With task.module.missing_eos_penalty set, a rollout cut without EOS is scored r − penalty before the
    transform; r_ref must be derived from reference samples scored the same way, or a policy that never
    ends its responses is compared with an unpenalised baseline. The penalty is applied on load: the
    cached raw samples serve every penalty."""
    tok = make_tokenizer("llama")
    mean = {"helpful": {"reference": {"statistic": "mean"}}}
    items = prompt_items(datamodule(tok, data_file, max_prompt_tokens=6))
    ppo = module(models, tok, max_new_tokens=2)
    ended: list[torch.Tensor] = []
    generate = ppo.generate_reference

    def spy(ids, mask):  # records which reference samples ended with EOS
        seq, rmask, has_eos = generate(ids, mask)[:3]  # Samples: the sampler log-probs come 4th
        ended.append(has_eos)
        return seq, rmask, has_eos

    ppo.generate_reference = spy
    plain = callback(tmp_path, reward=mean, n=4)
    plain.table = plain.reference_table(ppo, items)
    cut = (~torch.cat(ended)).float().view(len(items), 4)  # (P, n) 1 where cut at max_new_tokens
    assert cut.any()  # a random tiny model rarely says EOS within 2 tokens: most samples are cut

    penalised = callback(tmp_path, reward=mean, n=4)
    with_penalty = module(models, tok, max_new_tokens=2, missing_eos_penalty=5.0)
    penalised.table = penalised.reference_table(with_penalty, items)
    assert penalised.loaded_from_cache is True  # the same samples
    expected = plain.table.values[:, 0] - 5.0 * cut.mean(-1)
    torch.testing.assert_close(penalised.table.values[:, 0], expected)
