"""Shared-prefix forwards: each distinct prompt of a batch is computed once for all the responses to it.

GRPO and RLOO score G responses per prompt (PPO too with ``samples_per_prompt > 1``, and evaluation), and a
plain forward computes the prompt G times. Here the rows of a batch are grouped by their prompt (tokens and
mask of the first P columns) and the U distinct prompts are computed once, on one of two paths:

* **grouped** (transformers 5, eager or SDPA attention; the default): one forward over U packed rows
  ``[prompt | response 1 | … | response G]`` with Prefix Grouper's attention (Liu et al., 2025;
  :mod:`~lit_rlhf.rollout.grouped_attention`): every linear layer runs once over the group's P + G·R tokens,
  and each response attends to the prompt's keys and its own, never a sibling's.
* **split** (any other attention kernel, e.g. flash attention, or a family whose layers do not take the
  grouped attention): the U prompts run once with the KV cache on, each layer's keys and values are gathered
  back to the N rows (``index_select``: its backward sums the gradients of all G responses into the
  prompt's computation), and the responses run on that cache.

Both give every token the position a whole-sequence forward gives it
(:func:`~lit_rlhf.models.heads.position_ids`) and read only what a plain forward's caller reads: the first
response token is predicted by the prompt's last position, the critic's values need the same positions, a
reward model reads the hidden state at the last attended token.

Every function falls back to the plain forward when nothing repeats (U = N) or :func:`unsupported` names a
reason (a sliding-window / hybrid cache, no cache argument, gradient checkpointing under autograd — which
recomputes outside the shared forward), with a one-line note per model class and reason.
"""

from __future__ import annotations

import inspect
import logging
from functools import cache
from typing import NamedTuple

import torch
import transformers
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedModel

from lit_rlhf.models.heads import ValueModel, pool_index, position_ids, score_head, unwrap
from lit_rlhf.models.heads import sequence_scores as plain_sequence_scores
from lit_rlhf.rewards.ensemble import RewardEnsemble
from lit_rlhf.rlhf import logprobs_from_logits
from lit_rlhf.rollout import grouped_attention
from lit_rlhf.rollout.rollout import _keeps_logits
from lit_rlhf.rollout.rollout import token_logprobs as plain_token_logprobs

log = logging.getLogger(__name__)
_noted: set[tuple[str, str]] = set()


class Prefixes(NamedTuple):
    """Which rows of a batch share a prompt.

    Attributes:
        rows: (U,) one row of the batch per distinct prompt (the one whose prompt is computed).
        owner: (N,) for each row, its prompt's index in ``rows``.
    """

    rows: Tensor
    owner: Tensor


def distinct_prompts(input_ids: Tensor, attention_mask: Tensor, P: int) -> Prefixes:
    """Group the N rows by their first P columns (tokens and mask): the U distinct prompts of the batch."""
    key = torch.cat([input_ids[:, :P], attention_mask[:, :P].to(input_ids.dtype)], 1)  # (N, 2P)
    _, owner = torch.unique(key, dim=0, return_inverse=True)  # (N,) in 0 … U−1
    N = len(input_ids)
    first = torch.full((int(owner.max()) + 1,), N, dtype=torch.long, device=owner.device)
    rows = first.scatter_reduce(0, owner, torch.arange(N, device=owner.device), "amin")  # (U,)
    return Prefixes(rows, owner)


@cache
def _cache_argument(cls: type) -> str | None:
    if not issubclass(cls, PreTrainedModel):
        return None
    params = inspect.signature(cls.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _full_attention_only(config) -> bool:
    """Whether every layer attends to the whole past (no sliding window, no linear/recurrent layers)."""
    try:
        layers = DynamicCache(config=config).layers
    except TypeError:  # transformers before the per-layer caches: read the config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return getattr(text, "sliding_window", None) is None and set(
            getattr(text, "layer_types", None) or ["full_attention"]
        ) == {"full_attention"}
    from transformers.cache_utils import DynamicLayer  # noqa: PLC0415  (transformers >= 4.56)

    return all(type(layer) is DynamicLayer for layer in layers)


def _checkpointing(hf: nn.Module) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # the first: transformers 5
        if hasattr(type(hf), name):
            return bool(getattr(hf, name))
    return False


def unsupported(model: nn.Module) -> str | None:
    """Why ``model`` (a causal LM or a backbone) cannot share prompts in this call, or ``None`` if it can."""
    hf = unwrap(model)
    if _cache_argument(type(hf)) is None:
        return "it is not a transformers model whose forward takes a KV cache"
    if not _full_attention_only(hf.config):
        return "it has sliding-window or non-attention layers"
    if _checkpointing(hf) and hf.training and torch.is_grad_enabled():
        return "gradient checkpointing drops the KV cache under autograd"
    return None


def _networks(model: nn.Module) -> list[nn.Module]:
    """The transformers models a shared forward of ``model`` runs."""
    if isinstance(model, RewardEnsemble):
        return [unwrap(m) for m in model.members]
    return [model.backbone if isinstance(model, ValueModel) else unwrap(model)]


def require(models: dict[str, nn.Module], key: str = "task.module.shared_prefix") -> None:
    """``shared_prefix=true``: each model (role → model) must share, trained ones under autograd too; else a
    one-line error naming the role and the reason."""
    for role, model in models.items():
        for hf in _networks(model):
            trained = any(p.requires_grad for p in hf.parameters())
            reason = unsupported(hf) or (
                "gradient checkpointing drops the KV cache under autograd"
                if trained and _checkpointing(hf)
                else None
            )
            if reason:
                raise ValueError(f"{key}=true, but the {role} ({type(hf).__name__}) cannot share: {reason}")


def _servable(model: nn.Module) -> bool:
    reason = unsupported(model)
    if reason is not None:
        key = (type(unwrap(model)).__name__, reason)
        if key not in _noted:
            _noted.add(key)
            log.info("shared_prefix: %s computes every prompt per response (%s)", key[0], reason)
    return reason is None


def _forward(model: nn.Module, ids: Tensor, mask: Tensor, pos: Tensor, past=None, **kw):
    """One forward with the KV cache on; returns (output, cache)."""
    name = _cache_argument(type(unwrap(model)))
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{name: past}, **kw)
    new = getattr(out, "cache", None)
    return out, new if new is not None else out.past_key_values


def expand_cache(past, index: Tensor) -> DynamicCache:
    """Each layer's keys and values gathered along the batch: row i gets prompt ``index[i]``'s."""
    return DynamicCache([(k.index_select(0, index), v.index_select(0, index)) for k, v, *_ in past])


def split_forward(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, P: int, R_in: int, **prompt_kw
):
    """The U distinct prompts once, then the first ``R_in`` response tokens of all N rows on their cache.

    Returns:
        ``(prefixes, prompt_output, response_output)``; the response output is ``None`` when ``R_in = 0``.
    """
    pre = distinct_prompts(input_ids, attention_mask, P)
    pos = position_ids(attention_mask)  # (N, P + R): what a whole-sequence forward uses
    r = pre.rows
    p_out, past = _forward(model, input_ids[r, :P], attention_mask[r, :P], pos[r, :P], **prompt_kw)
    if R_in == 0:
        return pre, p_out, None
    past = expand_cache(past, pre.owner)
    end = P + R_in
    r_out, _ = _forward(model, input_ids[:, P:end], attention_mask[:, :end], pos[:, P:end], past)
    return pre, p_out, r_out


def prefilled_cache(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> dict:
    """``generate``'s KV cache for left-padded prompts that repeat (G samples per prompt): each distinct
    prompt's first P − 1 tokens computed once and gathered to its rows, as ``{cache argument: cache}``;
    ``generate`` then runs the last prompt token and decodes as usual. ``{}`` when nothing repeats or the
    model cannot share (:func:`unsupported`)."""
    P = input_ids.shape[1]
    if P < 2:
        return {}
    pre = distinct_prompts(input_ids, attention_mask, P - 1)  # once: it also says whether anything repeats
    if len(pre.rows) == len(input_ids) or not _servable(model):
        return {}
    r, pos = pre.rows, position_ids(attention_mask)
    kw = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    _, past = _forward(model, input_ids[r, : P - 1], attention_mask[r, : P - 1], pos[r, : P - 1], **kw)
    return {_cache_argument(type(unwrap(model))): expand_cache(past, pre.owner)}


def _repeats(input_ids: Tensor, attention_mask: Tensor, P: int) -> bool:
    if P == 0 or input_ids.shape[1] == P:
        return False
    return len(distinct_prompts(input_ids, attention_mask, P).rows) < len(input_ids)


_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
_not_routed: set[type] = set()  # model classes whose layers did not call the grouped attention


def _groupable(model: nn.Module) -> bool:
    """Whether ``model``'s attention can run :mod:`~lit_rlhf.rollout.grouped_attention`: transformers 5 (its
    custom-4D-mask and attention-interface paths, tested there), eager or SDPA attention (a flash-attention
    kernel keeps the KV-cache path)."""
    hf = unwrap(model)
    return (
        _TRANSFORMERS_5
        and type(hf) not in _not_routed
        and hf.config._attn_implementation in ("eager", "sdpa")
    )


def grouped_forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    P: int,
    R_in: int,
    logits_from: int | None = None,
):
    """The U distinct prompts and the first ``R_in`` response tokens of all N rows in one forward over U
    packed rows (:mod:`~lit_rlhf.rollout.grouped_attention`), a causal LM's logits kept from packed column
    ``logits_from`` on; ``None`` if the model's attention layers do not take it (noted once per class; the
    caller uses :func:`split_forward`).

    Returns:
        ``(layout, output)`` or ``None``.
    """
    pre = distinct_prompts(input_ids, attention_mask, P)
    lay = grouped_attention.layout(input_ids, attention_mask, pre.owner, pre.rows, P, R_in)
    kw = {} if logits_from is None else {"logits_to_keep": lay.ids.shape[1] - logits_from}
    try:
        return lay, grouped_attention.forward(model, lay, **kw)
    except grouped_attention.NotRouted as e:
        _not_routed.add(type(unwrap(model)))
        log.info("shared_prefix: %s runs prompt and responses apart (%s)", type(unwrap(model)).__name__, e)
        return None


def token_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, P: int, temperature: float
) -> Tensor:
    """:func:`~lit_rlhf.rollout.rollout.token_logprobs` with each distinct prompt computed once: (N, R)."""
    if not (_repeats(input_ids, attention_mask, P) and _servable(model)):
        return plain_token_logprobs(model, input_ids, attention_mask, P, temperature)
    R = input_ids.shape[1] - P
    if R > 1 and _keeps_logits(model) and _groupable(model):
        # packed column P − 1 predicts every row's response token 0; P + slot·(R − 1) + t its token t + 1
        done = grouped_forward(model, input_ids, attention_mask, P, R - 1, logits_from=P - 1)
        if done is not None:
            lay, out = done
            logits = out.logits  # (U, L − P + 1, V): columns P − 1 …
            first = logprobs_from_logits(logits[lay.owner, :1], input_ids[:, P : P + 1], temperature)
            labels = lay.ids.new_zeros(logits.shape[:2])
            labels[lay.owner[:, None], lay.col - P + 1] = input_ids[:, P + 1 :]
            # (U, L − P + 1); empty slots read nothing
            packed = logprobs_from_logits(logits, labels, temperature)
            return torch.cat([first, packed[lay.owner[:, None], lay.col - P + 1]], 1)
    kw = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    pre, p_out, r_out = split_forward(model, input_ids, attention_mask, P, R - 1, **kw)
    first = p_out.logits[:, -1:][pre.owner]  # (N, 1, V): predicts response token 0
    out = [logprobs_from_logits(first, input_ids[:, P : P + 1], temperature)]
    if r_out is not None:  # response position t predicts token t + 1
        out.append(logprobs_from_logits(r_out.logits, input_ids[:, P + 1 :], temperature))
    return torch.cat(out, 1)


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    if isinstance(model, ValueModel):
        return model.backbone, model.head
    return unwrap(model).base_model, score_head(model)


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, P: int) -> Tensor:
    """:func:`~lit_rlhf.models.heads.sequence_scores` with each distinct prompt computed once: (N,).

    A :class:`~lit_rlhf.rewards.ensemble.RewardEnsemble` aggregates its members' scores, each shared.
    """
    if isinstance(model, RewardEnsemble):
        members = [sequence_scores(m, input_ids, attention_mask, P) for m in model.members]
        return model.score(torch.stack(members, -1))[:, 0]
    backbone, head = _backbone_and_head(model)
    if not (_repeats(input_ids, attention_mask, P) and _servable(backbone)):
        return plain_sequence_scores(model, input_ids, attention_mask)
    R = input_ids.shape[1] - P
    # (N,) where the model is read (its pooling): usually a response position; a prompt one if R has no token
    last = pool_index(model, input_ids, attention_mask)
    rows = torch.arange(len(input_ids), device=input_ids.device)
    done = grouped_forward(backbone, input_ids, attention_mask, P, R) if _groupable(backbone) else None
    if done is not None:
        lay, out = done
        where = torch.where(last >= P, lay.col[rows, (last - P).clamp(min=0)], last)  # packed column
        return head(out.last_hidden_state[lay.owner, where])[:, 0].float()
    pre, p_out, r_out = split_forward(backbone, input_ids, attention_mask, P, R)
    in_response = r_out.last_hidden_state[rows, (last - P).clamp(min=0)]  # (N, H)
    in_prompt = p_out.last_hidden_state[pre.owner, last.clamp(max=P - 1)]  # (N, H)
    hidden = torch.where((last >= P)[:, None], in_response, in_prompt)
    return head(hidden)[:, 0].float()


def values(critic: ValueModel, input_ids: Tensor, attention_mask: Tensor, P: int) -> Tensor:
    """V(s_t) before each response token, (N, R), each distinct prompt computed once (as
    ``critic(input_ids, attention_mask)[:, P - 1 : -1]``)."""
    if not (_repeats(input_ids, attention_mask, P) and _servable(critic.backbone)):
        return critic(input_ids, attention_mask)[:, P - 1 : -1]
    R = input_ids.shape[1] - P
    done = None
    if R > 1 and _groupable(critic.backbone):
        done = grouped_forward(critic.backbone, input_ids, attention_mask, P, R - 1)
    if done is not None:
        lay, out = done
        states = out.last_hidden_state  # (U, P + G·(R − 1), H)
        hidden = torch.cat(
            [states[lay.owner, P - 1 : P], states[lay.owner[:, None], lay.col]], 1
        )  # (N, R, H)
        return critic.head(hidden)[..., 0].float()
    pre, p_out, r_out = split_forward(critic.backbone, input_ids, attention_mask, P, R - 1)
    hidden = p_out.last_hidden_state[:, -1:][pre.owner]  # (N, 1, H): the state before response token 0
    if r_out is not None:
        hidden = torch.cat([hidden, r_out.last_hidden_state], 1)  # (N, R, H)
    return critic.head(hidden)[..., 0].float()
