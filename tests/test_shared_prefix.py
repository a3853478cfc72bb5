"""Shared-prefix forwards (lit_rlhf/rollout/shared_prefix.py) equal the plain ones: log-probs, values,
scores and their gradients, on left-padded prompts of different lengths, GPT-2, Llama, Qwen2 and LoRA, on
both shared paths (``grouped``: one packed forward with the grouped attention; ``split``: a prompt pass, then
the responses on its KV cache); a family that cannot share falls back with one log line; the config switch
is checked."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_hf import make_config, make_tokenizer
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    MistralConfig,
)

from lit_rlhf.models import TinyGPT2, ValueModel, lora
from lit_rlhf.models.heads import sequence_scores as plain_scores
from lit_rlhf.rewards.ensemble import RewardEnsemble
from lit_rlhf.rollout import grouped_attention as ga
from lit_rlhf.rollout import shared_prefix as sp
from lit_rlhf.rollout.rollout import token_logprobs as plain_logprobs
from lit_rlhf.tasks.config import GRPOConfig

ATOL = 2e-5
FAMILIES = ["gpt2", "llama", "qwen2"]


def model(family: str, head: str = "causal_lm", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = make_config(family, make_tokenizer(family), hidden=32, layers=2)
    config.num_labels = 1
    if family == "gpt2":
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    if head == "value":
        return ValueModel(AutoModel.from_config(config))
    cls = AutoModelForSequenceClassification if head == "reward" else AutoModelForCausalLM
    return cls.from_config(config)


def groups(
    V: int, G: int = 3, P: int = 6, R: int = 5, pads=(0, 2, 4), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """len(pads) prompts left-padded by ``pads`` tokens (different lengths), G responses each, consecutive;
    responses end early on some rows (right padding). Returns (ids (N, P + R), mask (N, P + R))."""
    gen = torch.Generator().manual_seed(seed)
    n = len(pads)
    ids = torch.randint(3, V, (n, P), generator=gen)
    mask = torch.ones(n, P, dtype=torch.long)
    for i, k in enumerate(pads):
        mask[i, :k], ids[i, :k] = 0, 0
    ids, mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
    resp = torch.randint(3, V, (n * G, R), generator=gen)
    lengths = torch.randint(1, R + 1, (n * G,), generator=gen)
    rmask = (torch.arange(R)[None] < lengths[:, None]).long()
    return torch.cat([ids, resp * rmask], 1), torch.cat([mask, rmask], 1)


def grads(out: torch.Tensor, m: torch.nn.Module) -> list[torch.Tensor]:
    params = [p for p in m.parameters() if p.requires_grad]
    return [
        g if g is not None else torch.zeros_like(p)
        for g, p in zip(torch.autograd.grad(out, params, allow_unused=True), params)
    ]


def assert_same(a: torch.Tensor, b: torch.Tensor, ga=None, gb=None) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)
    for x, y in zip(ga or [], gb or []):
        torch.testing.assert_close(x, y, atol=ATOL, rtol=1e-4)


@pytest.fixture(params=["grouped", "split"])
def path(request, monkeypatch) -> list[str]:
    """Run the test on one shared path; the list records the paths the forwards took."""
    taken: list[str] = []
    real_grouped, real_split = ga.forward, sp.split_forward
    monkeypatch.setattr(ga, "forward", lambda *a, **k: taken.append("grouped") or real_grouped(*a, **k))
    monkeypatch.setattr(sp, "split_forward", lambda *a, **k: taken.append("split") or real_split(*a, **k))
    if request.param == "split":
        monkeypatch.setattr(sp, "_groupable", lambda model: False)
    yield taken
    assert taken and set(taken) == {request.param}  # every shared forward took this path


# ------------------------------------------------------------------ grouping
def test_distinct_prompts_by_hand() -> None:
    ids = torch.tensor([[0, 5, 6, 9], [0, 5, 6, 8], [4, 5, 6, 7], [0, 5, 6, 1], [4, 5, 6, 2]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    pre = sp.distinct_prompts(ids, mask, P=3)
    # rows 0, 1 share a prompt; row 3 has its tokens but not its mask; rows 2, 4 share another
    assert len(pre.rows) == 3
    assert pre.owner[0] == pre.owner[1] and pre.owner[2] == pre.owner[4]
    assert len({int(pre.owner[0]), int(pre.owner[2]), int(pre.owner[3])}) == 3
    assert torch.equal(pre.owner[pre.rows], torch.arange(3))  # each prompt's row is one of its own rows


def test_slots_by_hand() -> None:
    assert ga.slots(torch.tensor([2, 0, 2, 1, 0, 2])).tolist() == [0, 0, 1, 0, 1, 2]


def test_the_packed_layout_by_hand() -> None:
    """Rows 0 and 2 share prompt (5, 6); row 1's prompt (7, 8) is left-padded; row 2's response ends early."""
    ids = torch.tensor([[5, 6, 11, 12], [0, 8, 13, 14], [5, 6, 15, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]])
    lay = ga.layout(ids, mask, owner=torch.tensor([0, 1, 0]), rows=torch.tensor([0, 1]), P=2, R=2)
    assert lay.ids.tolist() == [[5, 6, 11, 12, 15, 0], [0, 8, 13, 14, 0, 0]]
    assert lay.pos.tolist() == [[0, 1, 2, 3, 2, 2], [0, 0, 1, 2, 0, 0]]  # a pad repeats the last position
    assert lay.col.tolist() == [[2, 3], [2, 3], [4, 5]]
    seen = lambda bias: (bias == 0).int().tolist()  # noqa: E731  (1: the query attends to the key)
    assert seen(lay.prompt_bias[:, 0]) == [[[1, 0], [1, 1]], [[1, 0], [0, 1]]]  # a pad key is never seen
    # per packed row, per slot: each response's queries over [prompt | itself]
    assert seen(lay.response_bias[0, 0]) == [
        [[1, 1, 1, 0], [1, 1, 1, 1]],  # row 0
        [[1, 1, 1, 0], [1, 1, 1, 1]],  # row 2: its pad (last) only sees itself among the response keys
    ]
    assert seen(lay.response_bias[1, 0]) == [
        [[0, 1, 1, 0], [0, 1, 1, 1]],  # row 1: not the prompt's pad
        [[0, 1, 1, 0], [0, 1, 0, 1]],  # an empty slot: sees only itself
    ]


def test_a_model_whose_layers_skip_the_grouped_attention_falls_back_once(caplog, monkeypatch) -> None:
    m = model("llama").train()
    ids, mask = groups(m.config.vocab_size)
    monkeypatch.setattr(ga, "_layers", lambda model: 99)  # as if 2 of 99 layers had called it
    monkeypatch.setattr(sp, "_not_routed", set())
    r = mask[:, 6:]
    with caplog.at_level(logging.INFO, logger=sp.__name__):
        for _ in range(2):
            a, b = plain_logprobs(m, ids, mask, 6, 1.0), sp.token_logprobs(m, ids, mask, 6, 1.0)
            assert_same(a * r, b * r, grads((a * r).sum(), m), grads((b * r).sum(), m))
    notes = [r.message for r in caplog.records if "apart" in r.message]
    assert len(notes) == 1 and "LlamaForCausalLM" in notes[0] and "2 of 99" in notes[0]
    assert m.config._attn_implementation != ga.NAME  # switched back after the failed forward


def test_a_flash_attention_model_keeps_the_kv_cache_path() -> None:
    m = model("llama")
    assert sp._groupable(m)
    m.config._attn_implementation = "flash_attention_2"
    assert not sp._groupable(m)
    with pytest.raises(RuntimeError, match="outside"):  # the attention needs its layout
        ga.grouped_attention(m, *[torch.zeros(1, 1, 2, 2)] * 3, None)


# ------------------------------------------------------------------ equality with the plain forward
@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_and_gradients_equal_the_plain_forward(family: str, path) -> None:
    m = model(family).train()
    ids, mask = groups(m.config.vocab_size)
    P, rmask = 6, mask[:, 6:]
    a = plain_logprobs(m, ids, mask, P, 0.7)
    b = sp.token_logprobs(m, ids, mask, P, 0.7)
    assert_same(a * rmask, b * rmask, grads((a * rmask).sum(), m), grads((b * rmask).sum(), m))
    with torch.no_grad():  # the rollout's no-grad call
        assert_same(
            plain_logprobs(m, ids, mask, P, 1.0) * rmask, sp.token_logprobs(m, ids, mask, P, 1.0) * rmask
        )


def test_a_shuffled_minibatch_with_partial_groups_shares_what_repeats(path) -> None:
    """The update's minibatches are random rows: groups come partial, out of order, or single."""
    m = model("llama").train()
    ids, mask = groups(m.config.vocab_size, G=4)
    idx = torch.tensor([5, 0, 11, 3, 4, 9, 8])  # prompts 1, 0, 2 twice each, prompt 2 a third time; shuffled
    ids, mask, P = ids[idx], mask[idx], 6
    a, b = plain_logprobs(m, ids, mask, P, 1.0), sp.token_logprobs(m, ids, mask, P, 1.0)
    r = mask[:, P:]
    assert_same(a * r, b * r, grads((a * r).sum(), m), grads((b * r).sum(), m))
    assert path  # it did share
    path.clear()
    sp.token_logprobs(m, ids[[0, 1, 2]], mask[[0, 1, 2]], P, 1.0)  # three different prompts: plain
    assert not path
    sp.token_logprobs(m, ids, mask, P, 1.0)  # the fixture's check needs a shared forward last


def test_tiny_gpt2_and_lora_share_and_lora_reference_too(path) -> None:
    pytest.importorskip("peft")
    tok = make_tokenizer("gpt2")
    torch.manual_seed(0)
    base = TinyGPT2(n_layer=2, n_embd=32, n_head=4).build("causal_lm", tok)
    m = lora.LoRA(r=4).apply(base, "causal_lm").train()
    for name, p in m.named_parameters():  # adapters start at B = 0: give them a value so they act
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids, mask = groups(len(tok))
    P, r = 6, mask[:, 6:]
    a, b = plain_logprobs(m, ids, mask, P, 1.0), sp.token_logprobs(m, ids, mask, P, 1.0)
    ga, gb = grads((a * r).sum(), m), grads((b * r).sum(), m)
    assert ga and all("lora_" in n for n, p in m.named_parameters() if p.requires_grad)
    assert_same(a * r, b * r, ga, gb)
    with torch.no_grad(), lora.reference(m) as ref:  # π_ref: adapters off
        ra, rb = plain_logprobs(ref, ids, mask, P, 1.0), sp.token_logprobs(ref, ids, mask, P, 1.0)
    assert_same(ra * r, rb * r)
    assert not torch.allclose(ra * r, a.detach() * r, atol=1e-3)  # the adapters did act


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_values_and_their_gradients_equal_the_plain_critic(family: str, path) -> None:
    critic = model(family, "value").train()
    ids, mask = groups(critic.config.vocab_size)
    P, r = 6, mask[:, 6:]
    a = critic(ids, mask)[:, P - 1 : -1]
    b = sp.values(critic, ids, mask, P)
    assert a.shape == b.shape
    assert_same(a * r, b * r, grads((a * r).sum(), critic), grads((b * r).sum(), critic))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_reward_scores_equal_the_plain_ones(family: str, path) -> None:
    rm = model(family, "reward").eval()
    ids, mask = groups(rm.config.vocab_size)
    with torch.no_grad():
        assert_same(plain_scores(rm, ids, mask), sp.sequence_scores(rm, ids, mask, 6))
        ensemble = RewardEnsemble([rm, model(family, "reward", seed=1).eval()], "mean_minus_std", k=1.0)
        assert_same(ensemble(ids, mask), sp.sequence_scores(ensemble, ids, mask, 6))


# ------------------------------------------------------------------ families that cannot share
def sliding_window_llm() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
    )
    return AutoModelForCausalLM.from_config(cfg)


def test_a_sliding_window_model_falls_back_with_one_log_line(caplog, monkeypatch) -> None:
    m = sliding_window_llm().eval()
    ids, mask = groups(64)
    monkeypatch.setattr(sp, "split_forward", None)  # must not be reached
    sp._noted.clear()
    with caplog.at_level(logging.INFO, logger=sp.__name__), torch.no_grad():
        for _ in range(2):
            assert torch.equal(sp.token_logprobs(m, ids, mask, 6, 1.0), plain_logprobs(m, ids, mask, 6, 1.0))
    notes = [r.message for r in caplog.records if "shared_prefix" in r.message]
    assert len(notes) == 1 and "MistralForCausalLM" in notes[0] and "sliding" in notes[0]
    with pytest.raises(ValueError, match=r"shared_prefix=true, but the policy \(MistralForCausalLM\)"):
        sp.require({"policy": m})


def test_gradient_checkpointing_shares_without_grad_and_falls_back_with_it() -> None:
    m = model("llama").train()
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert sp.unsupported(m) == "gradient checkpointing drops the KV cache under autograd"
    ids, mask = groups(m.config.vocab_size)
    r = mask[:, 6:]
    a, b = plain_logprobs(m, ids, mask, 6, 1.0), sp.token_logprobs(m, ids, mask, 6, 1.0)
    assert_same(a * r, b * r, grads((a * r).sum(), m), grads((b * r).sum(), m))
    with torch.no_grad():
        assert sp.unsupported(m) is None
        assert_same(plain_logprobs(m, ids, mask, 6, 1.0) * r, sp.token_logprobs(m, ids, mask, 6, 1.0) * r)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        sp.require({"policy": m})
    sp.require({"reward model helpful": model("llama", "reward")})  # frozen, plain attention: fine


# ------------------------------------------------------------------ the switch
@pytest.mark.parametrize(
    ("given", "mode"), [("auto", "auto"), (True, True), ("false", False), (False, False)]
)
def test_the_switch_takes_auto_true_false(given, mode) -> None:
    assert GRPOConfig(samples_per_prompt=2, shared_prefix=given).shared_prefix == mode


def test_the_switch_refuses_other_values_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"task.module.shared_prefix must be auto, true or false, got 'yes'"):
        GRPOConfig(samples_per_prompt=2, shared_prefix="yes")
