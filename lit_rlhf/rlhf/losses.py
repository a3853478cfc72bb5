"""Losses: PPO clipped surrogate, clipped value loss, Bradley-Terry reward-model loss.

Each loss returns a scalar to backpropagate and, for PPO, a dict of detached scalar tensors for
logging (``ppo/clipfrac``, ``ppo/approx_kl``, ...).

The token means of the PPO losses take an optional ``token_norm``, the divisor of the summed token losses.
Under data parallelism pass the minibatch's GLOBAL token count divided by the world size: DDP averages
gradients over the processes, so the average of the processes' losses (and of their gradients) is then the
token mean of the whole minibatch, as one process holding it computes (verl and OpenRLHF do the same). The
mean of per-process token means is not: it weights a token of a process with short responses more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_rlhf.rlhf.advantages import masked_mean


def _check_clip(clip_eps: float, name: str) -> None:
    if not clip_eps > 0:
        raise ValueError(f"{name} must be > 0, got {clip_eps}")


def token_mean(x: Tensor, mask: Tensor, token_norm: Tensor | None = None) -> Tensor:
    """``sum_t m_t x_t / token_norm``: :func:`masked_mean` when ``token_norm`` is None (this shard's own
    count), else this shard's share of the global token mean (see the module docstring)."""
    if token_norm is None:
        return masked_mean(x, mask)
    mask = mask.bool()
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum() / token_norm


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    token_norm: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss (Schulman et al., 2017, eq. 7), averaged over response tokens.

    ``rho_t = exp(log pi(y_t) - log pi_old(y_t))`` and
    ``L = mean_t -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)``.

    Args:
        logprobs: ``log pi`` under the current policy ``(B, T)`` (requires grad).
        old_logprobs: ``log pi_old`` from the rollout ``(B, T)``.
        advantages: Advantages ``(B, T)``, usually whitened.
        mask: Response-token mask ``(B, T)``.
        clip_eps: Clipping range ``eps`` (> 0).
        token_norm: Divisor of the summed token terms (default: this batch's token count; under DDP the
            global count / world size). ``clipfrac`` and ``approx_kl`` use it too, so that their mean over
            processes is the global token mean.

    Returns:
        ``(loss, stats)``: the scalar loss and detached scalars ``clipfrac`` (fraction of masked tokens
        where the clipped term is the active one), ``approx_kl`` (masked mean of ``1/2 (log rho)^2``)
        and ``ratio_max`` (largest ``rho`` over masked tokens).
    """
    _check_clip(clip_eps, "ppo clip_eps")
    mask = mask.bool()
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    loss_unclipped = -advantages * ratio  # (B, T)
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)  # (B, T)
    loss = token_mean(torch.maximum(loss_unclipped, loss_clipped), mask, token_norm)
    with torch.no_grad():
        stats = {
            "clipfrac": token_mean((loss_clipped > loss_unclipped).float(), mask, token_norm),
            "approx_kl": token_mean(0.5 * log_ratio**2, mask, token_norm),
            "ratio_max": torch.where(mask, ratio, float("-inf")).max(),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float,
    token_norm: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss of PPO2 (as in TRL / OpenAI baselines), averaged over response tokens.

    ``v_clip = v_old + clip(v - v_old, -eps, eps)`` and
    ``L = 1/2 mean_t max((v_t - R_t)^2, (v_clip_t - R_t)^2)``.

    Args:
        values: Current value predictions ``(B, T)`` (requires grad).
        old_values: Value predictions from the rollout ``(B, T)``.
        returns: Value targets ``(B, T)`` from :func:`gae`.
        mask: Response-token mask ``(B, T)``.
        clip_eps: Clipping range ``eps`` for the value change (> 0).
        token_norm: Divisor of the summed token terms, as in :func:`ppo_policy_loss`.

    Returns:
        ``(loss, stats)``: the scalar loss and ``vf_clipfrac``, the fraction of masked tokens where the
        clipped error is the larger one.
    """
    _check_clip(clip_eps, "value clip_eps")
    mask = mask.bool()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # (B, T)
    err_unclipped = (values - returns) ** 2  # (B, T)
    err_clipped = (values_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * token_mean(torch.maximum(err_unclipped, err_clipped), mask, token_norm)
    with torch.no_grad():
        # inside the clip range v_old + (v − v_old) is v up to rounding: only a real clip counts
        active = ((values - old_values).abs() > clip_eps) & (err_clipped > err_unclipped)  # (B, T)
        stats = {"vf_clipfrac": token_mean(active.float(), mask, token_norm)}
    return loss, stats


def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | float | None = None, center_coef: float = 0.0
) -> Tensor:
    """Bradley-Terry reward-model loss, ``-log sigma(r_c - r_r - m)`` (+ optional reward centering).

    ``L = mean(-log sigma(r_c - r_r - m)) + c * mean((r_c + r_r)^2)``; the second term is TRL's
    ``center_rewards_coefficient`` (Eisenstein et al., 2023), which pins the rewards' mean near 0
    without changing the preference probabilities. Uses ``F.logsigmoid``, stable for any margin.

    Args:
        chosen: Rewards of the preferred responses ``(B,)``.
        rejected: Rewards of the dispreferred responses ``(B,)``.
        margin: Optional margin ``(B,)`` or scalar (Llama-2 style); ``None`` means 0.
        center_coef: Weight ``c`` of the centering term (>= 0).

    Returns:
        Scalar loss.
    """
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must match")
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    delta = chosen - rejected  # (B,)
    if margin is not None:
        delta = delta - margin
    loss = -F.logsigmoid(delta).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss
