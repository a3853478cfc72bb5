"""``logprobs_from_logits``: the chunked selective log-softmax against hand-computed values and autograd's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_rlhf.rlhf import logprobs as lp_mod
from lit_rlhf.rlhf import logprobs_from_logits


def reference(logits: torch.Tensor, labels: torch.Tensor, T: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / T, -1).gather(-1, labels[..., None])[..., 0]


def test_hand_computed_value_and_gradient():
    # softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2]; d log p_2 / d logits = one-hot(2) − softmax = [−1/4, −1/4, 1/2]
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)]]], requires_grad=True)
    out = logprobs_from_logits(logits, torch.tensor([[2]]))
    assert out.item() == pytest.approx(math.log(0.5), abs=1e-7)
    out.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.25, -0.25, 0.5]]]))


def test_hand_computed_temperature():
    # T = 2: softmax([0, 0, ln 2 / 2]) = [1, 1, √2] / (2 + √2); the gradient is (one-hot − softmax) / T
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)]]], requires_grad=True)
    out = logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0)
    z = 2 + math.sqrt(2)
    assert out.item() == pytest.approx(math.log(1 / z), abs=1e-7)
    out.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[1 - 1 / z, -1 / z, -math.sqrt(2) / z]]]) / 2)


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(0, 9),
    V=st.integers(1, 40),
    temperature=st.sampled_from([1.0, 0.7, 2.5]),
    bf16=st.booleans(),
    chunk=st.integers(1, 200),
    strided=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_equals_autograd_log_softmax(B, T, V, temperature, bf16, chunk, strided, seed):
    """Values and gradients equal autograd's fp32 ``log_softmax(logits / T).gather`` for any chunking, dtype,
    temperature and a strided view (the caller's ``logits[:, :-1]``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(lp_mod._CHUNK_ELEMENTS, "cpu", chunk)  # from 1 row per chunk to all rows
        check(B, T, V, temperature, torch.bfloat16 if bf16 else torch.float32, strided, seed)


def check(B, T, V, temperature, dtype, strided, seed):
    g = torch.Generator().manual_seed(seed)
    full = (torch.randn(B, T + 1, V, generator=g) * 5).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    upstream = torch.randn(B, T, generator=g)
    a = full.clone().requires_grad_()
    b = full.clone().requires_grad_()
    got = logprobs_from_logits(a[:, :-1] if strided else a[:, 1:].contiguous(), labels, temperature)
    want = reference(b[:, :-1] if strided else b[:, 1:], labels, temperature)
    assert got.dtype == torch.float32 and got.shape == (B, T)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    assert a.grad.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5  # the bf16 gradient rounds once, at the end, both ways
    torch.testing.assert_close(
        a.grad.float(), b.grad.float(), atol=tol, rtol=1e-3 if dtype == torch.float32 else tol
    )


def test_keeps_only_the_logits_for_backward():
    """No fp32 copy of bf16 logits is kept for the backward (autograd's version keeps one): the saved
    tensors are the logits themselves plus per-row scalars."""
    logits = torch.randn(2, 8, 1000).bfloat16().requires_grad_()
    labels = torch.randint(0, 1000, (2, 8))
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs_from_logits(logits, labels, 0.9)
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert len(big) == 1 and big[0].dtype == torch.bfloat16
    assert sum(t.numel() for t in saved) <= logits.numel() + 2 * labels.numel()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        reference(logits, labels, 0.9)
    assert any(t.dtype == torch.float32 and t.numel() >= logits.numel() for t in saved)  # the peer does


def test_fp64_logits_keep_fp64():
    logits = (torch.randn(2, 3, 7, dtype=torch.float64) * 30).requires_grad_()
    labels = torch.randint(0, 7, (2, 3))
    got = logprobs_from_logits(logits, labels, 0.9)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, F.log_softmax(logits / 0.9, -1).gather(-1, labels[..., None])[..., 0])
    assert torch.autograd.gradcheck(lambda x: logprobs_from_logits(x, labels, 0.9), (logits,))


def test_no_grad_and_empty():
    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    with torch.no_grad():
        torch.testing.assert_close(logprobs_from_logits(logits, labels), reference(logits, labels, 1.0))
    assert logprobs_from_logits(torch.randn(2, 0, 7), labels[:, :0]).shape == (2, 0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="must be labels"):
        logprobs_from_logits(torch.randn(2, 3, 7), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(torch.randn(2, 3, 7), torch.zeros(2, 3, dtype=torch.long), 0.0)
