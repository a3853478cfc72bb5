"""``generation=hf`` prefills each distinct prompt once for its G samples (issue #33 item 2): the sampled
tokens equal the per-row prefill's, on left-padded prompts of different lengths, GPT-2, Llama, Qwen2 and a
LoRA policy; the model sees each prompt once (U rows) and then one token per row; a family that cannot share
prefills per row."""

from __future__ import annotations

import pytest
import torch
from test_shared_prefix import sliding_window_llm
from tiny_hf import make_config, make_tokenizer
from transformers import AutoModelForCausalLM, GenerationConfig

from lit_rlhf.generation.hf import HFGeneration
from lit_rlhf.models import TinyGPT2, lora
from lit_rlhf.rollout.decoding import row_seeds

N_PROMPTS, P, G = 3, 7, 4


def prompts(vocab: int, pad: int, G: int = G) -> tuple[torch.Tensor, torch.Tensor]:
    """3 prompts left-padded by 0, 2 and 5 tokens, each repeated G times (consecutive rows)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (N_PROMPTS, P), generator=gen)
    mask = torch.ones(N_PROMPTS, P, dtype=torch.long)
    for i, k in enumerate((0, 2, 5)):
        mask[i, :k], ids[i, :k] = 0, pad
    return ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)


def sample(model, ids, mask, share: bool) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The sampled sequences and the (rows, tokens) of every forward the model ran."""
    calls: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(tuple((kw.get("input_ids") if "input_ids" in kw else a[0]).shape)),
        with_kwargs=True,
    )
    config = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.0, eos_token_id=[1])
    try:
        seq, *_ = HFGeneration(share).generate(
            model, ids, mask, config, 0, row_seeds((0, 1), range(len(ids)))
        )
    finally:
        hook.remove()
    return seq, calls


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_prefill_once_per_group_samples_the_same_tokens(family: str) -> None:
    torch.manual_seed(0)
    tok = make_tokenizer(family)
    model = AutoModelForCausalLM.from_config(make_config(family, tok, hidden=32, layers=2)).eval()
    ids, mask = prompts(len(tok), tok.pad_token_id or 0)
    shared, shared_calls = sample(model, ids, mask, share=True)
    plain, plain_calls = sample(model, ids, mask, share=False)
    assert torch.equal(shared, plain)
    assert plain_calls[0] == (N_PROMPTS * G, P)  # every row prefills its whole prompt
    # each distinct prompt's first P − 1 tokens once, then every row its last prompt token, then decoding
    assert shared_calls[:2] == [(N_PROMPTS, P - 1), (N_PROMPTS * G, 1)]
    assert len(shared_calls) == len(plain_calls) + 1


def test_prompts_that_do_not_repeat_prefill_as_before() -> None:
    tok = make_tokenizer("llama")
    model = AutoModelForCausalLM.from_config(make_config("llama", tok, hidden=32, layers=2)).eval()
    ids, mask = prompts(len(tok), tok.pad_token_id or 0, G=1)
    shared, calls = sample(model, ids, mask, share=True)
    assert calls[0] == (N_PROMPTS, P) and torch.equal(shared, sample(model, ids, mask, share=False)[0])


def test_a_lora_policy_and_its_reference_prefill_once_too() -> None:
    pytest.importorskip("peft")
    tok = make_tokenizer("gpt2")
    torch.manual_seed(0)
    m = lora.LoRA(r=4).apply(TinyGPT2(n_layer=2, n_embd=32, n_head=4).build("causal_lm", tok), "causal_lm")
    for name, p in m.named_parameters():  # adapters start at B = 0: give them a value so they act
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    ids, mask = prompts(len(tok), tok.pad_token_id or 0)
    policy = sample(m, ids, mask, share=True)
    assert torch.equal(policy[0], sample(m, ids, mask, share=False)[0])
    assert policy[1][0] == (N_PROMPTS, P - 1)
    with lora.reference(m) as ref:  # π_ref: the adapters off
        reference = sample(ref, ids, mask, share=True)[0]
        assert torch.equal(reference, sample(ref, ids, mask, share=False)[0])
    assert not torch.equal(reference, policy[0])  # the adapters did act


def test_a_sliding_window_model_prefills_per_row() -> None:
    m = sliding_window_llm().eval()
    ids, mask = prompts(64, 0)
    shared, calls = sample(m, ids, mask, share=True)
    assert calls[0] == (N_PROMPTS * G, P) and torch.equal(shared, sample(m, ids, mask, share=False)[0])
