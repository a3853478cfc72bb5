"""Hand-computed checks of the pure RLHF maths in ``lit_rlhf.rlhf``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_rlhf.rlhf import (
    AdaptiveKLController,
    FixedKLController,
    bradley_terry_loss,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    ppo_policy_loss,
    value_loss,
)

T_ = torch.tensor


def close(a: torch.Tensor, b, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


# --- masked statistics --------------------------------------------------------------------------


def test_masked_mean_var_ignore_masked_values_even_nan():
    x = T_([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")]])
    mask = T_([[True, True, True], [True, True, False]])
    close(masked_mean(x, mask), 3.0)  # (1+2+3+4+5) / 5
    close(masked_mean(x, mask, dim=1), [2.0, 4.5])
    # deviations from 3: 4, 1, 0, 1, 4 -> sum 10; unbiased /4, biased /5
    close(masked_var(x, mask), 2.5)
    close(masked_var(x, mask, unbiased=False), 2.0)


def test_masked_mean_empty_mask_is_zero_not_nan():
    close(masked_mean(T_([1.0, 2.0]), T_([False, False])), 0.0)


def test_masked_whiten():
    x = T_([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    mask = T_([[True, True, True], [True, True, False]])
    w = masked_whiten(x, mask)
    close(w[0], (T_([1.0, 2.0, 3.0]) - 3.0) / math.sqrt(2.5 + 1e-8))
    close(w[1, 2], 0.0)  # masked position
    close(masked_mean(w, mask), 0.0)
    close(masked_var(w, mask), 1.0, atol=1e-5)
    # shift_mean=False keeps the mean, only rescales
    close(masked_mean(masked_whiten(x, mask, shift_mean=False), mask), 3.0, atol=1e-5)


def test_masked_whiten_constant_is_finite_zero():
    x = torch.full((4, 5), 0.1)
    w = masked_whiten(x, torch.ones(4, 5, dtype=torch.bool))
    assert torch.isfinite(w).all()
    close(w, torch.zeros(4, 5), atol=1e-3)


# --- KL -----------------------------------------------------------------------------------------


def test_kl_estimators_on_hand_numbers():
    logp, ref = T_([-1.0, -2.0]), T_([-1.5, -1.0])  # logp - ref = [0.5, -1.0]
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.5])
    # log r = ref - logp = [-0.5, 1.0]; k3 = (r - 1) - log r
    close(kl_penalty(logp, ref, "k3"), [math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1.0])


def test_kl_estimators_zero_when_equal_and_k3_nonnegative():
    logp = torch.randn(3, 7)
    for est in ("k1", "k2", "k3"):
        close(kl_penalty(logp, logp, est), torch.zeros(3, 7))
    assert (kl_penalty(logp, torch.randn(3, 7), "k3") >= 0).all()


def test_kl_unknown_estimator_names_value():
    with pytest.raises(ValueError, match="'k4'"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")  # type: ignore[arg-type]


def test_per_token_rewards_score_at_last_response_token():
    scores = T_([3.0, -1.0])
    kl = T_([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    mask = T_([[False, True, True, False], [True, True, True, True]])
    rewards = per_token_rewards(scores, kl, beta=0.5, mask=mask)
    close(rewards, [[0.0, -0.1, -0.15 + 3.0, 0.0], [-0.25, -0.3, -0.35, -0.4 - 1.0]])


def test_per_token_rewards_empty_response_raises():
    with pytest.raises(ValueError, match=r"\[1\]"):
        per_token_rewards(T_([1.0, 1.0]), torch.zeros(2, 3), 0.1, T_([[1, 0, 0], [0, 0, 0]]).bool())


# --- GAE ----------------------------------------------------------------------------------------


def test_gae_hand_computed():
    # gamma=0.9, lam=0.8 -> gamma*lam = 0.72
    # row 0: r = [1, 0, 2], V = [0.5, 1.0, 1.5], all tokens
    #   delta2 = 2 + 0 - 1.5 = 0.5;  delta1 = 0 + 0.9*1.5 - 1.0 = 0.35;  delta0 = 1 + 0.9*1.0 - 0.5 = 1.4
    #   A2 = 0.5;  A1 = 0.35 + 0.72*0.5 = 0.71;  A0 = 1.4 + 0.72*0.71 = 1.9112
    #   returns = A + V = [2.4112, 1.71, 2.0]
    # row 1: r = [1, 2, 5], V = [0.5, 1.5, 100], last token masked (padding: V=100 and r=5 unused)
    #   delta1 = 2 + 0 - 1.5 = 0.5;  delta0 = 1 + 0.9*1.5 - 0.5 = 1.85;  A1 = 0.5;  A0 = 1.85 + 0.36 = 2.21
    rewards = T_([[1.0, 0.0, 2.0], [1.0, 2.0, 5.0]])
    values = T_([[0.5, 1.0, 1.5], [0.5, 1.5, 100.0]])
    mask = T_([[True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[1.9112, 0.71, 0.5], [2.21, 0.5, 0.0]], atol=1e-5)
    close(ret, [[2.4112, 1.71, 2.0], [2.71, 2.0, 0.0]], atol=1e-5)


def naive_gae(rewards, values, mask, gamma, lam):
    """Double loop over the response tokens of each row: A_t = sum_l (gamma lam)^l delta_{t+l}."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        r = [rewards[b, i].item() for i in idx]
        v = [values[b, i].item() for i in idx] + [0.0]
        deltas = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(idx))]
        for k, i in enumerate(idx):
            adv[b, i] = sum((gamma * lam) ** j * deltas[k + j] for j in range(len(idx) - k))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.5, 0.0), (1.0, 1.0)])
def test_gae_matches_naive_loop_with_prompt_and_padding(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 9
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    starts, ends = [0, 2, 3, 1, 0], [9, 6, 4, 9, 1]  # prompt prefix masked, right padding masked
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, (s, e) in enumerate(zip(starts, ends)):
        mask[b, s:e] = True
    adv, ret = gae(rewards, values, mask, gamma, lam)
    close(adv, naive_gae(rewards, values, mask, gamma, lam), atol=1e-5)
    close(ret, torch.where(mask, adv + values, 0.0))
    assert (adv[~mask] == 0).all()


# --- PPO losses ---------------------------------------------------------------------------------


def test_ppo_policy_loss_hand_computed():
    # rho = [1.5, 0.5, 1.1, 1.0, 0.5], A = [1, 1, -1, 2, -1], eps = 0.2; max(-rho A, -clip(rho) A):
    #   t0: max(-1.5, -1.2) = -1.2  (clipped term active)
    #   t1: max(-0.5, -0.8) = -0.5  (unclipped)
    #   t2: max( 1.1,  1.1) =  1.1  (inside the range)
    #   t3: max(-2.0, -2.0) = -2.0
    #   t4: max( 0.5,  0.8) =  0.8  (clipped term active)
    #   loss = (-1.2 - 0.5 + 1.1 - 2.0 + 0.8) / 5 = -0.36;  clipfrac = 2/5
    # A sixth, masked token has rho = e^5 and must not count anywhere.
    rho = T_([[1.5, 0.5, 1.1, 1.0, 0.5, math.exp(5.0)]])
    old = torch.full((1, 6), -2.0)
    logprobs = (old + rho.log()).requires_grad_()
    adv = T_([[1.0, 1.0, -1.0, 2.0, -1.0, 7.0]])
    mask = T_([[True] * 5 + [False]])
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    close(loss.detach(), -0.36, atol=1e-5)
    close(stats["clipfrac"], 0.4)
    close(stats["ratio_max"], 1.5, atol=1e-5)
    logs = [math.log(x) for x in (1.5, 0.5, 1.1, 1.0, 0.5)]
    close(stats["approx_kl"], sum(0.5 * x * x for x in logs) / 5, atol=1e-5)
    # gradient flows only through unclipped tokens: d/dlogp (-rho A)/5 = -rho A / 5
    loss.backward()
    close(logprobs.grad, [[0.0, -0.5 / 5, 1.1 / 5, -2.0 / 5, 0.0, 0.0]], atol=1e-5)


def test_value_loss_hand_computed():
    # v_old = 1, eps = 0.2; v = [1.5, 0.9, 1.3], R = [2, 0, 1]:
    #   t0: v_clip = 1.2: max((1.5-2)^2, (1.2-2)^2) = max(0.25, 0.64) = 0.64  (clipped active)
    #   t1: v_clip = 0.9: max(0.81, 0.81) = 0.81
    #   t2: v_clip = 1.2: max(0.09, 0.04) = 0.09  (unclipped)
    #   loss = 0.5 * (0.64 + 0.81 + 0.09) / 3;  vf_clipfrac = 1/3. Masked 4th token ignored.
    values = T_([[1.5, 0.9, 1.3, 50.0]])
    old = T_([[1.0, 1.0, 1.0, 1.0]])
    returns = T_([[2.0, 0.0, 1.0, -50.0]])
    mask = T_([[True, True, True, False]])
    loss, stats = value_loss(values, old, returns, mask, clip_eps=0.2)
    close(loss, 0.5 * 1.54 / 3, atol=1e-6)
    close(stats["vf_clipfrac"], 1 / 3)


def test_clip_eps_must_be_positive():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_policy_loss(z, z, z, z.bool(), clip_eps=0.0)


# --- Bradley-Terry ------------------------------------------------------------------------------


def test_bradley_terry_hand_computed_with_margin_and_centering():
    chosen, rejected = T_([2.0, 0.0]), T_([1.0, 1.0])
    # no margin: delta = [1, -1]; -log sigma(d) = log(1 + e^-d)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    close(bradley_terry_loss(chosen, rejected), expected)
    # margin [0.5, 0]: delta = [0.5, -1]
    expected_m = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2
    close(bradley_terry_loss(chosen, rejected, margin=T_([0.5, 0.0])), expected_m)
    # centering 0.1 * mean((r_c + r_r)^2) = 0.1 * (9 + 1) / 2 = 0.5
    close(bradley_terry_loss(chosen, rejected, center_coef=0.1), expected + 0.5)


def test_bradley_terry_stable_for_huge_margins():
    loss = bradley_terry_loss(T_([-1e4]), T_([1e4]))
    close(loss, 2e4, atol=1e-2)
    close(bradley_terry_loss(T_([1e4]), T_([-1e4])), 0.0)


# --- log-probs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_from_logits_matches_log_softmax_gather(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    expected = F.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    got = logprobs_from_logits(logits, labels)
    assert got.shape == (3, 5) and got.dtype == torch.float32  # computed and returned in fp32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# --- KL controllers -----------------------------------------------------------------------------


def test_fixed_kl_controller_is_constant():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, n_steps=1000)
    assert ctl.value == 0.05
    with pytest.raises(ValueError, match="beta"):
        FixedKLController(-1.0)


def test_adaptive_kl_controller_moves_towards_target_and_round_trips():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    ctl.update(12.0, n_steps=256)  # error = clip(12/6 - 1) = +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    up = ctl.value
    ctl.update(torch.tensor(3.0), n_steps=256)  # error = clip(-0.5) = -0.2
    assert ctl.value == pytest.approx(up * (1 - 0.2 * 256 / 10_000))
    assert ctl.value < up
    ctl.update(6.6, n_steps=100)  # error = +0.1, inside the clip
    assert ctl.value == pytest.approx(up * (1 - 0.2 * 256 / 10_000) * (1 + 0.1 * 100 / 10_000))

    resumed = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=1)
    with pytest.raises(ValueError, match="finite"):
        ctl.update(float("nan"), n_steps=1)
