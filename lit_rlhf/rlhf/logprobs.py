"""Token log-probabilities ``log softmax(logits / T)[label]`` without vocabulary-sized temporaries.

The language-model head's logits are the largest tensor of every forward: ``(rows, V)`` with V = 49,152 for
SmolLM2, 151,936 for Qwen. Written with autograd's ops, ``log_softmax(logits.float() / T).gather(label)``
keeps an fp32 copy of the logits for the backward and runs several more vocabulary-sized passes there
(softmax, the gather's zeros and scatter, their sum, the cast back). :class:`SelectiveLogSoftmax` does the
same maths a few rows at a time, so each chunk stays in cache between the max, the sum of exponentials and
the backward's ``softmax − one-hot``; it keeps only the logits themselves (in their own dtype) and one
log-normaliser per row for the backward — half the memory of the fp32 copy for bf16 logits — and writes the
gradient once, in the logits' dtype. Measured at the 135M policy's shapes (``benchmarks/logprobs.py``): the
op's forward + backward 1.6–2.0× faster than autograd's with freed memory kept mapped, as training runs
(1.4–6.7× with glibc's defaults, whose fresh vocabulary-sized blocks page-fault) — about 2 % of one group's
policy forward + backward, too little to see in a whole step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_CHUNK_ELEMENTS = {"cpu": 1 << 19}  # rows per chunk ≈ this / V: 2 MB of fp32 on CPU (in cache)
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 24  # a GPU wants fewer, larger kernels


def _chunk_rows(logits: Tensor) -> int:
    elements = _CHUNK_ELEMENTS.get(logits.device.type, _CHUNK_ELEMENTS_ACCELERATOR)
    return max(1, elements // max(1, logits.shape[-1]))


def _chunks(logits: Tensor):
    """``(b, slice)`` over the ``(B, T, V)`` logits, a few rows of one sequence at a time (views, no copy)."""
    step = _chunk_rows(logits)
    for b in range(logits.shape[0]):
        for t in range(0, logits.shape[1], step):
            yield b, slice(t, t + step)


class SelectiveLogSoftmax(torch.autograd.Function):
    """``log softmax(logits / T)[labels]`` in fp32 (fp64 for fp64 logits) from logits of any float dtype,
    chunked (module docstring).

    Backward: ``∂/∂logits = g / T · (one-hot(label) − softmax(logits / T))``, written in the logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
        acc = torch.promote_types(logits.dtype, torch.float32)  # fp32, or fp64 for fp64 logits
        log_z = torch.empty(labels.shape, dtype=acc, device=logits.device)  # (B, T)
        for b, t in _chunks(logits):
            x = logits[b, t].to(acc)
            log_z[b, t] = torch.logsumexp(x / temperature if temperature != 1.0 else x, -1)
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).to(acc)
        if temperature != 1.0:
            picked = picked / temperature
        ctx.save_for_backward(logits, labels, log_z)
        ctx.temperature = temperature
        return picked - log_z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logits, labels, log_z = ctx.saved_tensors
        T = ctx.temperature
        out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad = grad.to(log_z.dtype)
        grad = grad / T if T != 1.0 else grad
        for b, t in _chunks(logits):
            x = logits[b, t].to(log_z.dtype)
            p = torch.exp((x / T if T != 1.0 else x) - log_z[b, t, None])  # softmax(logits / T)
            g = grad[b, t, None]
            p.mul_(-g).scatter_add_(-1, labels[b, t, None], g)
            out[b, t] = p
        return out, None, None


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probabilities of ``labels`` under ``logits / temperature``: ``log softmax(logits / T)[labels]``.

    Args:
        logits: ``(B, T, V)`` logits of any float dtype, already aligned with ``labels`` (shifted by the
            caller); a strided view is read in place.
        labels: ``(B, T)`` token ids in ``[0, V)``; mask padding separately.
        temperature: the sampling temperature the logits are divided by.

    Returns:
        ``(B, T)`` fp32 log-probabilities (fp64 for fp64 logits), computed in that precision whatever the
        logits' dtype (bf16 logits are not rounded further); differentiable with respect to ``logits``.
    """
    if logits.shape[:-1] != labels.shape or logits.dim() != 3:
        raise ValueError(f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + (V,), 3-D")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.is_contiguous():  # one sequence of B·T rows: chunks span rows of several sequences
        flat = SelectiveLogSoftmax.apply(
            logits.view(1, -1, logits.shape[-1]), labels.reshape(1, -1), float(temperature)
        )
        return flat.view(labels.shape)
    return SelectiveLogSoftmax.apply(logits, labels, float(temperature))
