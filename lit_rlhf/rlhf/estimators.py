"""Critic-free advantage estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++) and their losses.

These replace GAE's learned value with a baseline built from the batch itself, so no critic is trained:

- :func:`group_advantages` -- GRPO's group-normalised reward (Shao et al., 2024, arXiv:2402.03300), or
  Dr. GRPO's un-normalised one (Liu et al., 2025, arXiv:2503.20783);
- :func:`rloo_advantages` -- the leave-one-out baseline of RLOO (Ahmadian et al., 2024, arXiv:2402.14740);
- :func:`reinforce_pp_advantages` -- REINFORCE++'s globally whitened return-to-go (Hu, 2025,
  arXiv:2501.03262).

:func:`policy_loss` is PPO's clipped surrogate with the three token aggregations these papers argue about,
and :func:`kl_loss` is GRPO's KL-to-reference penalty as a loss term. Grouped rewards are laid out as
the rollout makes them with ``repeat_interleave``: consecutive blocks of ``G`` rows share one prompt.
Functions are pure (tensors in, tensors out); call the estimators under ``torch.no_grad()``.

Under data parallelism (each process holds a shard of the batch) the batch-wide normalisations take the
global batch: :func:`reinforce_pp_advantages` whitens with an ``all_sum`` (an all-reduce), and the losses
divide by :class:`ShardNorms`, the global row and token counts of the minibatch over the world size
(:func:`shard_norms`). Group-wise estimators (GRPO, RLOO) need nothing: a group never spans processes.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lit_rlhf.rlhf.advantages import AllSum, masked_whiten
from lit_rlhf.rlhf.kl import KLEstimator, kl_penalty
from lit_rlhf.rlhf.losses import ppo_policy_loss

LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
LOSS_AGGS: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


class ShardNorms(NamedTuple):
    """Divisors of one data-parallel shard's loss: the minibatch's GLOBAL counts over the world size.

    DDP averages gradients over the W processes, so with these divisors the processes' losses (and
    gradients) average to those of the whole minibatch in one process.

    Attributes:
        rows: responses of the minibatch on all processes, / W (scalar float tensor).
        tokens: valid response tokens of the minibatch on all processes, / W (scalar float tensor).
    """

    rows: Tensor
    tokens: Tensor


def shard_norms(mask: Tensor, all_sum: AllSum, world_size: int) -> ShardNorms:
    """:class:`ShardNorms` of this shard's minibatch ``mask`` (B, R), with one all-reduce ``all_sum``.

    A row counts as a response if it has a token: a process none of whose rows fell in the minibatch takes
    part with a zero-mask stand-in row (:meth:`~lit_rlhf.training.sharding.DataParallel.minibatches`), which
    is not a response of the minibatch. Counts are clamped to 1 (an empty minibatch has loss 0, not NaN)."""
    mask = mask.bool()
    local = torch.stack([mask.any(-1).sum().float(), mask.sum().float()])
    rows, tokens = all_sum(local).clamp_min(1.0) / world_size  # (2,)
    return ShardNorms(rows=rows, tokens=tokens)


def _groups(rewards: Tensor, group_size: int, method: str) -> Tensor:
    """View rewards ``(B,)`` as ``(B / G, G)``, one row per prompt, after checking the layout."""
    if rewards.dim() != 1:
        raise ValueError(f"{method} needs rewards of shape (B,), got {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(
            f"{method} needs task.module.samples_per_prompt >= 2 (got {group_size}): a prompt with a "
            "single sample has no group baseline"
        )
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"{method}: {rewards.shape[0]} rewards are not a multiple of task.module.samples_per_prompt="
            f"{group_size}; rows must be consecutive blocks of G samples of one prompt (repeat_interleave)"
        )
    return rewards.view(-1, group_size)  # (P, G)


def _constant(groups: Tensor) -> Tensor:
    """``(P, 1)`` True where every reward of the group is equal."""
    return groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)  # (P, 1)


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """GRPO's outcome advantage (Shao et al., 2024, sec. 4.1.2; Dr. GRPO: Liu et al., 2025, Fig. 1).

    For the ``G`` samples ``u_1..u_G`` of one prompt, ``A_i = (u_i - mean(u)) / (std(u) + eps)`` with
    ``scale=True`` (GRPO), or ``A_i = u_i - mean(u)`` with ``scale=False`` (Dr. GRPO, which drops the
    std because it up-weights prompts that are nearly always right or wrong). ``std`` is the
    Bessel-corrected (``unbiased=True``) sample std, as ``torch.std`` in TRL's ``GRPOTrainer``
    (``scale_rewards``) and verl's ``compute_grpo_outcome_advantage``; ``eps`` sits outside the square
    root as in both. A group whose rewards are all equal carries no signal and gets exactly 0: in
    float32 the rounding of its mean alone would otherwise leave advantages of about 0.19 (eight equal
    rewards of 2.9) after the division by ``std + eps``.

    Args:
        rewards: Sequence rewards ``(B,)``, ``B = P * G`` in consecutive blocks of ``G`` per prompt.
        group_size: ``G``, samples per prompt (``task.module.samples_per_prompt``), >= 2.
        eps: Added to the group std before dividing.
        scale: Divide by the group std (GRPO); False gives Dr. GRPO.

    Returns:
        Advantages ``(B,)``, one per sequence (broadcast over its tokens by :func:`policy_loss`).

    Raises:
        ValueError: If ``G < 2`` or ``B`` is not a multiple of ``G``.
    """
    groups = _groups(rewards, group_size, "group_advantages (GRPO)")  # (P, G)
    adv = groups - groups.mean(dim=1, keepdim=True)  # (P, G)
    if scale:
        adv = adv / (groups.std(dim=1, keepdim=True, correction=1) + eps)  # (P, G)
    return torch.where(_constant(groups), 0.0, adv).view(-1)  # (B,)


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    """RLOO's leave-one-out advantage (Ahmadian et al., 2024, the RLOO estimator; Kool et al., 2019).

    ``A_i = u_i - 1/(k - 1) * sum_{j != i} u_j``: each sample is judged against the mean of the other
    ``k - 1`` samples of its prompt, so the baseline does not depend on the sample itself and the
    estimator stays unbiased. Equivalently ``A_i = k / (k - 1) * (u_i - mean(u))``; the advantages of a
    group sum to 0, and an all-equal group gets exactly 0.

    The KL to the reference enters through the reward, at the sequence level: pass
    ``u = r - beta * KL_seq`` with ``KL_seq = sum_t kl_t`` over the response tokens (the caller builds
    it, e.g. ``scores - beta * torch.where(mask, kl_penalty(...), 0).sum(1)``).

    Args:
        rewards: KL-penalised sequence rewards ``(B,)`` in consecutive blocks of ``k`` per prompt.
        k: Samples per prompt (``task.module.samples_per_prompt``), >= 2.

    Returns:
        Advantages ``(B,)``.

    Raises:
        ValueError: If ``k < 2`` or ``B`` is not a multiple of ``k``.
    """
    groups = _groups(rewards, k, "rloo_advantages (RLOO)")  # (P, k)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)  # (P, k) mean of the other k - 1
    return torch.where(_constant(groups), 0.0, groups - others).view(-1)  # (B,)


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Return-to-go over response tokens: ``G_t = r_t + gamma * G_{t+1}``, ``G = 0`` past the end.

    As in :func:`~lit_rlhf.rlhf.advantages.gae`, masked positions are skipped (their neighbours are
    joined) and hold 0, so a prompt prefix and right padding are handled alike.

    Args:
        token_rewards: Per-token rewards ``(B, R)``.
        mask: Response-token mask ``(B, R)``.
        gamma: Discount factor in ``[0, 1]``.

    Returns:
        Returns ``(B, R)``, 0 at masked positions.
    """
    if token_rewards.shape != mask.shape or token_rewards.dim() != 2:
        raise ValueError(
            f"discounted_returns needs token_rewards and mask of one shape (B, R), got "
            f"{tuple(token_rewards.shape)} and {tuple(mask.shape)}"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    mask = mask.bool()
    returns = torch.zeros_like(token_rewards)  # (B, R)
    running = token_rewards.new_zeros(token_rewards.shape[0])  # (B,) G of the next response token
    for t in reversed(range(token_rewards.shape[1])):
        g = token_rewards[:, t] + gamma * running  # (B,)
        running = torch.where(mask[:, t], g, running)
        returns[:, t] = torch.where(mask[:, t], g, 0.0)
    return returns


def reinforce_pp_advantages(
    token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, all_sum: AllSum | None = None
) -> Tensor:
    """REINFORCE++ advantage (Hu, 2025): globally whitened, discounted return-to-go.

    The token reward is ``r_t = [t = last] * score - beta * kl_t`` (the paper uses the k1 estimate
    ``kl_t = log pi_old - log pi_ref``); build it with :func:`~lit_rlhf.rlhf.kl.per_token_rewards`.
    With ``gamma = 1`` the return is the paper's ``A_t = score - beta * sum_{s >= t} kl_s``, then
    whitened with the mean and (unbiased) variance of all valid tokens of the batch,
    ``(A_t - mu) / sqrt(var + 1e-8)`` (:func:`~lit_rlhf.rlhf.advantages.masked_whiten`), as verl's
    ``compute_reinforce_plus_plus_outcome_advantage``. Normalising over the whole batch rather than per
    prompt is what separates REINFORCE++ from GRPO; it needs only one sample per prompt.

    Args:
        token_rewards: Per-token KL-penalised rewards ``(B, R)``.
        mask: Response-token mask ``(B, R)``.
        gamma: Discount factor in ``[0, 1]`` (1 in the paper).
        all_sum: Sums over the data-parallel processes: whiten over the global batch (``None``: this one).

    Returns:
        Advantages ``(B, R)``, 0 at masked positions.
    """
    return masked_whiten(discounted_returns(token_rewards, mask, gamma), mask, all_sum=all_sum)  # (B, R)


def loss_weights(
    mask: Tensor, loss_agg: LossAgg, max_len: int | None = None, norms: ShardNorms | None = None
) -> Tensor:
    """Per-token weights ``w`` such that an aggregated loss is ``sum_{i,t} w_{i,t} l_{i,t}``.

    - ``token_mean``: ``w = 1 / sum_{i,t} m_{i,t}``, every token of the batch counts alike (DAPO; TRL's
      ``loss_type="bnpo"``; verl's ``token-mean``).
    - ``seq_mean_token_mean``: ``w_i = 1 / (B |o_i|)``, the mean over each response then over responses,
      as in the GRPO objective (Shao et al., 2024, eq. 3; TRL's ``"grpo"``). Long responses get less
      weight per token, which Liu et al. (2025) show biases towards long wrong answers.
    - ``seq_mean_token_sum_norm``: ``w = 1 / (B * max_len)``, Dr. GRPO's constant normaliser (Liu et al.,
      2025, Fig. 1; TRL's ``"dr_grpo"``, sum / (B * max_completion_length)). verl's
      ``seq-mean-token-sum-norm`` divides by the padded length only, a factor B larger.

    A response with no tokens contributes nothing. Masked positions have ``w = 0``.

    Args:
        mask: Response-token mask ``(B, R)``.
        loss_agg: One of :data:`LOSS_AGGS`.
        max_len: The constant of ``seq_mean_token_sum_norm``, the generation budget
            (``task.module.max_new_tokens``); no response may be longer. Ignored otherwise.
        norms: Under data parallelism, the global counts over the world size (:func:`shard_norms`) that
            replace this shard's ``B`` and ``sum m``; ``None``: this batch is the whole batch.

    Returns:
        Weights ``(B, R)``, float32.
    """
    mask = mask.bool()
    m = mask.float()  # (B, R)
    B = mask.shape[0] if norms is None else norms.rows
    if loss_agg == "token_mean":
        return m / (m.sum().clamp_min(1.0) if norms is None else norms.tokens)
    if loss_agg == "seq_mean_token_mean":
        return m / (B * m.sum(dim=1, keepdim=True).clamp_min(1.0))
    if loss_agg == "seq_mean_token_sum_norm":
        if max_len is None or max_len < 1:
            raise ValueError(
                f"loss_agg='seq_mean_token_sum_norm' needs max_len >= 1, the generation budget "
                f"task.module.max_new_tokens (got {max_len})"
            )
        longest = int(mask.sum(dim=1).max()) if mask.shape[0] else 0
        if longest > max_len:
            raise ValueError(
                f"a response has {longest} tokens, more than max_len={max_len} "
                "(task.module.max_new_tokens): the Dr. GRPO normaliser must bound every response"
            )
        return m / (B * max_len)
    raise ValueError(f"task.module.loss_agg must be one of {', '.join(LOSS_AGGS)}, got {loss_agg!r}")


def aggregate(
    values: Tensor,
    mask: Tensor,
    loss_agg: LossAgg,
    max_len: int | None = None,
    norms: ShardNorms | None = None,
) -> Tensor:
    """Reduce per-token values ``(B, R)`` to a scalar with the weights of :func:`loss_weights`.

    Masked positions never leak in, even when they hold NaN or inf.
    """
    w = loss_weights(mask, loss_agg, max_len, norms).to(values.dtype)  # (B, R)
    return (torch.where(mask.bool(), values, 0.0) * w).sum()


def _check_token_shapes(name: str, mask: Tensor, **tensors: Tensor) -> None:
    for key, t in tensors.items():
        if t.shape != mask.shape or mask.dim() != 2:
            raise ValueError(f"{name} needs {key} of the mask's shape (B, R), got {tuple(t.shape)}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    loss_agg: LossAgg = "token_mean",
    max_len: int | None = None,
    norms: ShardNorms | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al., 2017, eq. 7) under a chosen token aggregation.

    ``l_{i,t} = -min(rho_{i,t} A_{i,t}, clip(rho_{i,t}, 1 - eps, 1 + eps) A_{i,t})`` and
    ``L = sum_{i,t} w_{i,t} l_{i,t}`` with the weights of :func:`loss_weights`. The surrogate is
    positively homogeneous in ``A`` (``l(cA) = c l(A)`` for ``c > 0``), so this is exactly
    :func:`~lit_rlhf.rlhf.losses.ppo_policy_loss` (a token mean) applied to ``A_{i,t} N w_{i,t}`` with
    ``N`` the number of valid tokens; ``token_mean`` is ``ppo_policy_loss`` unchanged. Add a KL term with
    the same ``loss_agg`` (:func:`kl_loss`) to get GRPO's full objective (Shao et al., 2024, eq. 3).

    Args:
        logprobs: ``log pi`` under the current policy ``(B, R)`` (requires grad).
        old_logprobs: ``log pi_old`` from the rollout ``(B, R)``.
        advantages: Per-sequence ``(B,)`` (GRPO, RLOO) or per-token ``(B, R)`` (REINFORCE++).
        mask: Response-token mask ``(B, R)``.
        clip_eps: Clipping range ``eps`` (> 0).
        loss_agg: Token aggregation, one of :data:`LOSS_AGGS`.
        max_len: Normaliser of ``seq_mean_token_sum_norm`` (``task.module.max_new_tokens``).
        norms: Global counts over the world size under data parallelism (:func:`shard_norms`); the token
            means of ``stats`` are then this shard's share of the global ones.

    Returns:
        ``(loss, stats)``: the scalar loss and detached token means ``clipfrac`` (share of valid tokens
        where the clipped term is active), ``approx_kl`` (``1/2 (log rho)^2``) and ``ratio_max``.
        Masked positions get zero gradient whatever they hold.
    """
    if advantages.dim() == 1:
        if advantages.shape[0] != mask.shape[0]:
            raise ValueError(
                f"advantages {tuple(advantages.shape)} must be (B,) or (B, R) for mask {tuple(mask.shape)}"
            )
        advantages = advantages.unsqueeze(1).expand_as(mask)  # (B, R)
    _check_token_shapes(
        "policy_loss", mask, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages
    )
    mask = mask.bool()
    # padding may hold anything (-inf log-probs, NaN advantages): select it away before exp, so that
    # neither the loss nor the gradient sees it
    logprobs = torch.where(mask, logprobs, 0.0)  # (B, R)
    old_logprobs = torch.where(mask, old_logprobs, 0.0)  # (B, R)
    w = loss_weights(mask, loss_agg, max_len, norms).to(advantages.dtype)  # (B, R)
    if norms is None:
        scaled = torch.where(mask, advantages, 0.0) * (w * mask.sum())  # (B, R) A N w
        return ppo_policy_loss(logprobs, old_logprobs, scaled, mask, clip_eps)
    scaled = torch.where(mask, advantages, 0.0) * (w * norms.tokens)  # (B, R) A N w, N global / W
    return ppo_policy_loss(logprobs, old_logprobs, scaled, mask, clip_eps, token_norm=norms.tokens)


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    estimator: KLEstimator = "k3",
    loss_agg: LossAgg = "token_mean",
    max_len: int | None = None,
    norms: ShardNorms | None = None,
) -> Tensor:
    """KL to the reference policy as a loss term, GRPO style (Shao et al., 2024, eq. 4).

    GRPO keeps the reward free of KL and instead adds ``beta * D_KL`` to the loss, estimated per token
    with ``k3 = exp(ref - lp) - (ref - lp) - 1 >= 0`` (Schulman, 2020), then aggregated like the policy
    loss: ``policy_loss(...) + beta * kl_loss(...)`` with one ``loss_agg`` equals TRL's ``GRPOTrainer``
    loss with ``beta > 0``. The gradient of ``k3`` is ``1 - exp(ref - lp)``: it pulls ``lp`` down where
    the policy is above the reference and up where it is below.

    Args:
        logprobs: ``log pi`` of the sampled tokens under the current policy ``(B, R)`` (requires grad).
        ref_logprobs: ``log pi_ref`` of the same tokens ``(B, R)``.
        mask: Response-token mask ``(B, R)``.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (:func:`~lit_rlhf.rlhf.kl.kl_penalty`).
        loss_agg: Token aggregation, one of :data:`LOSS_AGGS`.
        max_len: Normaliser of ``seq_mean_token_sum_norm`` (``task.module.max_new_tokens``).
        norms: Global counts over the world size under data parallelism (:func:`shard_norms`).

    Returns:
        Scalar loss (multiply by ``beta``); masked positions get zero gradient.
    """
    _check_token_shapes("kl_loss", mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    mask = mask.bool()
    lp = torch.where(mask, logprobs, 0.0)  # (B, R)
    ref = torch.where(mask, ref_logprobs, 0.0)  # (B, R)
    return aggregate(kl_penalty(lp, ref, estimator), mask, loss_agg, max_len, norms)
