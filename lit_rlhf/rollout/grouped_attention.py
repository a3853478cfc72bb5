"""A whole group in one forward: its prompt once, then its G responses side by side in one packed row.

Row u of the packed batch is ``[prompt | response 1 | … | response G]`` (P + G·R columns), so every linear
layer runs once over 384 tokens for a group of 4 × 64 after a 128-token prompt instead of 768, in one call.
Attention is Prefix Grouper's (Liu et al., 2025): the prompt attends to itself causally, and each response to
the prompt's keys (read once for all G responses: one ``(G·R) × P`` product per group, no copy) and causally
to its own keys, never to a sibling's. Its cost is the split path's (``G·R·(P + R) + P²`` scores per group),
not the ``(P + G·R)²`` of one packed row with a 4D mask. Grouped-query models' keys and values are not
repeated per query head: the query heads that share a key head are rows of one product.

The attention is registered with transformers' ``AttentionInterface`` and switched on for one forward only
(:func:`grouped`); it reads the group layout from a context variable. A model whose layers do not go through
the interface is caught by counting the calls (:func:`forward` raises :class:`NotRouted`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import AttentionInterface

from lit_rlhf.models.heads import position_ids, unwrap

NAME = "lit_rlhf_prefix_grouped"
_MIN = torch.finfo(torch.float32).min


class Layout(NamedTuple):
    """Where each row of the N-row batch sits in the U packed rows.

    Attributes:
        owner: (N,) each row's packed row (its distinct prompt's index).
        rows: (U,) the batch row whose prompt each packed row holds.
        col: (N, R) the packed column of each row's response tokens.
        ids, pos: (U, P + G·R) packed tokens and their positions (those of a whole-row forward).
        prompt_bias: (U, 1, P, P) additive mask of the prompt's attention (causal, padding).
        response_bias: (U, 1, G, R, P + R) additive mask of each response over [prompt | itself].
        calls: how many attention layers ran on this layout (``[int]``, counted by the attention).
    """

    owner: Tensor
    rows: Tensor
    col: Tensor
    ids: Tensor
    pos: Tensor
    prompt_bias: Tensor
    response_bias: Tensor
    calls: list


def slots(owner: Tensor) -> Tensor:
    """(N,) each row's place among the rows of its group, 0 … G_u − 1, in batch order."""
    N = len(owner)
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner)
    start = counts.cumsum(0) - counts
    out = torch.empty_like(owner)
    out[order] = torch.arange(N, device=owner.device) - start[owner[order]]
    return out


def _bias(allowed: Tensor) -> Tensor:
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed, _MIN)


def layout(input_ids: Tensor, attention_mask: Tensor, owner: Tensor, rows: Tensor, P: int, R: int) -> Layout:
    """Pack the first ``R`` response tokens of each row after its prompt (``owner``/``rows``: the distinct
    prompts, :func:`~lit_rlhf.rollout.shared_prefix.distinct_prompts`)."""
    dev, U = input_ids.device, len(rows)
    slot = slots(owner)
    G = int(slot.max()) + 1
    t = torch.arange(R, device=dev)
    col = P + slot[:, None] * R + t  # (N, R)
    at = (owner[:, None].expand(-1, R), col)
    full_pos = position_ids(attention_mask)

    ids = input_ids.new_zeros(U, P + G * R)
    ids[:, :P], ids[at] = input_ids[rows, :P], input_ids[:, P : P + R]
    pos = full_pos.new_zeros(U, P + G * R)
    pos[:, :P], pos[at] = full_pos[rows, :P], full_pos[:, P : P + R]

    keep_p = attention_mask[rows, :P].bool()  # (U, P)
    keep_r = torch.zeros(U, G, R, dtype=torch.bool, device=dev)  # an empty slot keeps nothing
    keep_r[owner, slot] = attention_mask[:, P : P + R].bool()
    causal_p = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
    causal_r = torch.ones(R, R, dtype=torch.bool, device=dev).tril()
    # a query always sees itself, so no row of scores is all masked (a left pad's output is never read)
    prompt = (keep_p[:, None, :] & causal_p) | torch.eye(P, dtype=torch.bool, device=dev)  # (U, P, P)
    own = (keep_r[:, :, None, :] & causal_r) | torch.eye(R, dtype=torch.bool, device=dev)  # (U, G, R, R)
    response = torch.cat([keep_p[:, None, None, :].expand(-1, G, R, -1), own], -1)  # (U, G, R, P + R)
    return Layout(owner, rows, col, ids, pos, _bias(prompt)[:, None], _bias(response)[:, None], [0])


_current: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("grouped_layout", default=None)


def _softmax(scores: Tensor, like: Tensor) -> Tensor:
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(like.dtype)


def grouped_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers' attention signature: (U, h, L, d) query, (U, h_kv, L, d) key and value →
    (U, L, h, d). The mask transformers passes is ignored; the layout's biases are used.

    Grouped-query attention without repeating keys and values: query head i reads key/value head
    i // (h / h_kv) (transformers' ``repeat_kv``), so the h / h_kv query heads of a key head are stacked as
    rows of one product against that head's keys; the key and value gradients come out of the products
    summed over those query heads, with no copy to sum back.
    """
    lay = _current.get()
    if lay is None:
        raise RuntimeError(f"{NAME} attention ran outside lit_rlhf's grouped forward")
    lay.calls[0] += 1
    U, h, L, d = query.shape
    hk = key.shape[1]
    n = h // hk  # query heads per key/value head
    P = lay.prompt_bias.shape[-1]
    G, R = lay.response_bias.shape[2:4]
    scaling = d**-0.5 if scaling is None else scaling
    training = module.training and dropout > 0
    # split, not sliced: the backward concatenates the parts' gradients instead of zero-filling per slice
    qp, qr = query.view(U, hk, n, L, d).split([P, G * R], 3)
    kp, kr = key.split([P, G * R], 2)
    vp, vr = value.split([P, G * R], 2)
    kpt = kp.transpose(-1, -2)  # (U, hk, d, P)

    # the prompt: causal over itself
    s = (qp.reshape(U, hk, n * P, d) @ kpt).view(U, hk, n, P, P) * scaling + lay.prompt_bias[:, :, None]
    w = nn.functional.dropout(_softmax(s, query), dropout, training)
    out_p = (w.view(U, hk, n * P, P) @ vp).view(U, h, P, d)

    # each response: the prompt's keys (one (n·G·R) × P product per key head, read once) and its own, causally
    on_prompt = (qr.reshape(U, hk, n * G * R, d) @ kpt).view(U, hk, n, G, R, P)
    q_own = qr.view(U, hk, n, G, R, d).transpose(2, 3).reshape(U, hk, G, n * R, d)
    own = (q_own @ kr.view(U, hk, G, R, d).transpose(-1, -2)).view(U, hk, G, n, R, R).transpose(2, 3)
    s = torch.cat([on_prompt, own], -1) * scaling + lay.response_bias[:, :, None]  # (U, hk, n, G, R, P + R)
    w_p, w_own = nn.functional.dropout(_softmax(s, query), dropout, training).split([P, R], -1)
    from_prompt = (w_p.reshape(U, hk, n * G * R, P) @ vp).view(U, hk, n, G, R, d)
    w_own = w_own.transpose(2, 3).reshape(U, hk, G, n * R, R)
    from_own = (w_own @ vr.view(U, hk, G, R, d)).view(U, hk, G, n, R, d).transpose(2, 3)
    out_r = (from_prompt + from_own).reshape(U, h, G * R, d)
    return torch.cat([out_p.transpose(1, 2), out_r.transpose(1, 2)], 1), None


AttentionInterface.register(NAME, grouped_attention)


class NotRouted(RuntimeError):
    """The model's attention layers did not call the registered attention (it cannot be grouped)."""


@contextlib.contextmanager
def grouped(model: nn.Module, lay: Layout) -> Iterator[None]:
    """Run ``model``'s attention as :func:`grouped_attention` over ``lay`` inside the block."""
    config = unwrap(model).config
    before = config._attn_implementation
    token = _current.set(lay)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        _current.reset(token)


def _layers(model: nn.Module) -> int:
    config = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


def forward(model: nn.Module, lay: Layout, **kw):
    """``model`` over the packed rows; raises :class:`NotRouted` if its attention did not use the layout."""
    with grouped(model, lay):
        out = model(
            input_ids=lay.ids, attention_mask=lay.prompt_bias, position_ids=lay.pos, use_cache=False, **kw
        )
    if lay.calls[0] != _layers(model):
        raise NotRouted(f"{lay.calls[0]} of {_layers(model)} attention layers ran the grouped attention")
    return out
