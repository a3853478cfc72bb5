"""Hand-computed checks and properties of the critic-free estimators and losses (``rlhf/estimators.py``)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_rlhf.rlhf import (
    LOSS_AGGS,
    discounted_returns,
    group_advantages,
    kl_loss,
    per_token_rewards,
    policy_loss,
    ppo_policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
)

T_ = torch.tensor
fast = settings(max_examples=40, deadline=None)


def close(a: torch.Tensor, b, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


# --- GRPO / Dr. GRPO ----------------------------------------------------------------------------


def test_group_advantages_hand_computed_unbiased_std():
    # G = 3, groups [1, 2, 3] and [5, 5, 5]:
    #   [1, 2, 3]: mean 2, deviations [-1, 0, 1], unbiased var (1 + 0 + 1) / 2 = 1 -> std 1
    #   [5, 5, 5]: constant -> exactly 0
    rewards = T_([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    eps = 1e-6
    close(group_advantages(rewards, 3, eps=eps), [-1 / (1 + eps), 0.0, 1 / (1 + eps), 0.0, 0.0, 0.0])
    # Dr. GRPO: centred only
    close(group_advantages(rewards, 3, scale=False), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def test_group_advantages_std_is_bessel_corrected_like_trl_and_verl():
    # G = 2, [0, 4]: mean 2, deviations [-2, 2]; unbiased std sqrt((4 + 4) / 1) = 2 sqrt(2)
    # -> A = [-1/sqrt(2), 1/sqrt(2)] (a biased std of 2 would give [-1, 1])
    adv = group_advantages(T_([0.0, 4.0, 1.0, 1.0]), 2, eps=0.0)
    close(adv, [-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0])
    assert torch.isfinite(adv).all()  # the constant second group with eps = 0 is 0, not 0/0


@given(value=st.floats(-1e3, 1e3, allow_nan=False), G=st.integers(2, 16), P=st.integers(1, 3))
@fast
def test_all_equal_groups_are_exactly_zero(value, G, P):
    # in float32 the mean of G equal values can be off by an ulp; that must not become an advantage
    rewards = torch.full((P * G,), value, dtype=torch.float32)
    for adv in (
        group_advantages(rewards, G),
        group_advantages(rewards, G, scale=False),
        rloo_advantages(rewards, G),
    ):
        assert (adv == 0).all()


def test_group_size_one_names_the_config_key():
    for fn in (lambda r: group_advantages(r, 1), lambda r: rloo_advantages(r, 1)):
        with pytest.raises(ValueError, match=r"task\.module\.samples_per_prompt >= 2 \(got 1\)"):
            fn(torch.zeros(4))


def test_batch_not_a_multiple_of_group_size():
    with pytest.raises(
        ValueError, match=r"5 rewards are not a multiple of task\.module\.samples_per_prompt=2"
    ):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r"samples_per_prompt=3"):
        rloo_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        group_advantages(torch.zeros(2, 2), 2)


groups_strategy = st.integers(2, 6).flatmap(
    lambda G: st.tuples(
        st.just(G),
        st.lists(st.floats(-100, 100), min_size=G, max_size=4 * G).map(lambda xs: xs[: len(xs) // G * G]),
    )
)


@given(gr=groups_strategy, scale=st.booleans())
@fast
def test_group_advantages_zero_mean_per_group(gr, scale):
    G, rewards = gr
    adv = group_advantages(T_(rewards, dtype=torch.float64), G, scale=scale).view(-1, G)
    close(adv.mean(dim=1), torch.zeros(adv.shape[0]), atol=1e-9)


@given(gr=groups_strategy)
@fast
def test_group_advantages_unit_std_per_group(gr):
    G, rewards = gr
    eps = 1e-6
    r = T_(rewards, dtype=torch.float64).view(-1, G)
    adv = group_advantages(r.view(-1), G, eps=eps).view(-1, G)
    s = r.std(dim=1)  # unbiased, as in the estimator
    for a, s_g, r_g in zip(adv, s, r):
        if r_g.max() == r_g.min():
            assert (a == 0).all()
            continue
        # exactly std / (std + eps), i.e. 1 up to eps for any non-degenerate group
        assert a.std().item() == pytest.approx(s_g.item() / (s_g.item() + eps), rel=1e-9)
        if s_g > 1e-3:
            assert a.std().item() == pytest.approx(1.0, abs=1e-3)


# --- RLOO ---------------------------------------------------------------------------------------


def test_rloo_hand_computed():
    # k = 3, [1, 2, 3]: baselines (2+3)/2 = 2.5, (1+3)/2 = 2, (1+2)/2 = 1.5 -> A = [-1.5, 0, 1.5]
    close(rloo_advantages(T_([1.0, 2.0, 3.0]), 3), [-1.5, 0.0, 1.5])
    # k = 2: each sample against the other one: [0 - 4, 4 - 0], [1 - 1, 1 - 1]
    close(rloo_advantages(T_([0.0, 4.0, 1.0, 1.0]), 2), [-4.0, 4.0, 0.0, 0.0])


@given(gr=groups_strategy)
@fast
def test_rloo_sums_to_zero_and_is_rescaled_dr_grpo(gr):
    G, rewards = gr
    r = T_(rewards, dtype=torch.float64)
    adv = rloo_advantages(r, G)
    close(adv.view(-1, G).sum(dim=1), torch.zeros(len(rewards) // G), atol=1e-9)
    # u_i - (S - u_i)/(k - 1) = k/(k - 1) (u_i - mean)
    close(adv, G / (G - 1) * group_advantages(r, G, scale=False), atol=1e-9)


# --- REINFORCE++ --------------------------------------------------------------------------------


def test_discounted_returns_hand_computed_skips_masked_positions():
    # row 0, gamma 0.5, r = [-0.1, -0.2, 0.7]: G2 = 0.7, G1 = -0.2 + 0.35 = 0.15, G0 = -0.1 + 0.075 = -0.025
    # row 1: prompt token and padding masked (their 9s unused): G2 = 2, G1 = 1 + 0.5 * 2 = 2
    rewards = T_([[-0.1, -0.2, 0.7, 0.0], [9.0, 1.0, 2.0, 9.0]])
    mask = T_([[True, True, True, False], [False, True, True, False]])
    close(discounted_returns(rewards, mask, gamma=0.5), [[-0.025, 0.15, 0.7, 0.0], [0.0, 2.0, 2.0, 0.0]])
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(rewards, mask, gamma=1.5)


def test_reinforce_pp_hand_computed_from_per_token_rewards():
    # scores [1, 2], kl [[0.2, 0.4, 0.6], [1, 1, pad]], beta 0.5:
    #   token rewards [[-0.1, -0.2, -0.3 + 1], [-0.5, -0.5 + 2, 0]] = [[-0.1, -0.2, 0.7], [-0.5, 1.5, 0]]
    #   returns (gamma 1) = score - beta * sum_{s>=t} kl_s: [[0.4, 0.5, 0.7], [1.0, 1.5, 0]]
    #   batch whitening over the 5 valid tokens: mean 4.1 / 5 = 0.82,
    #   deviations [-0.42, -0.32, -0.12, 0.18, 0.68], squares sum 0.788, unbiased var 0.788 / 4 = 0.197
    mask = T_([[True, True, True], [True, True, False]])
    kl = T_([[0.2, 0.4, 0.6], [1.0, 1.0, float("nan")]])
    rewards = per_token_rewards(T_([1.0, 2.0]), kl, beta=0.5, mask=mask)
    adv = reinforce_pp_advantages(rewards, mask)
    std = math.sqrt(0.197 + 1e-8)
    close(adv, [[-0.42 / std, -0.32 / std, -0.12 / std], [0.18 / std, 0.68 / std, 0.0]], atol=1e-5)


# --- policy loss --------------------------------------------------------------------------------


def _policy_batch():
    """rho = [[1.5, 0.5, 1.0], [1.1, 1.0, pad]], A = [1, -1] per sequence, eps = 0.2."""
    old = T_([[-2.0, -1.0, -3.0], [-0.5, -1.5, float("nan")]])
    rho = T_([[1.5, 0.5, 1.0], [1.1, 1.0, 1.0]])
    logprobs = torch.where(torch.isnan(old), float("-inf"), old + rho.log()).requires_grad_()
    mask = T_([[True, True, True], [True, True, False]])
    return logprobs, old, T_([1.0, -1.0]), mask


# per-token l = max(-rho A, -clip(rho, 0.8, 1.2) A):
#   row 0 (A = 1):  max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5, -1.0   -> sum -2.7
#   row 1 (A = -1): max(1.1, 1.1) = 1.1, 1.0                                          -> sum  2.1
# token_mean: (-2.7 + 2.1) / 5 = -0.12
# seq_mean_token_mean: (-2.7 / 3 + 2.1 / 2) / 2 = (-0.9 + 1.05) / 2 = 0.075
# seq_mean_token_sum_norm, max_len 4: (-2.7 + 2.1) / (2 * 4) = -0.075
# d l / d logp = -rho A where the unclipped term is active, else 0:
#   [[0, -0.5, -1.0], [1.1, 1.0, 0]], times the token weight 1/5; 1/6 and 1/4; 1/8.
POLICY_CASES = [
    ("token_mean", None, -0.12, [[0.0, -0.5 / 5, -1.0 / 5], [1.1 / 5, 1.0 / 5, 0.0]]),
    ("seq_mean_token_mean", None, 0.075, [[0.0, -0.5 / 6, -1.0 / 6], [1.1 / 4, 1.0 / 4, 0.0]]),
    ("seq_mean_token_sum_norm", 4, -0.075, [[0.0, -0.5 / 8, -1.0 / 8], [1.1 / 8, 1.0 / 8, 0.0]]),
]


@pytest.mark.parametrize("loss_agg,max_len,expected,grad", POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_policy_loss_hand_computed_with_gradient(loss_agg, max_len, expected, grad):
    logprobs, old, adv, mask = _policy_batch()
    loss, stats = policy_loss(logprobs, old, adv, mask, clip_eps=0.2, loss_agg=loss_agg, max_len=max_len)
    close(loss.detach(), expected, atol=1e-6)
    close(stats["clipfrac"], 0.2)  # 1 of 5 valid tokens clipped, whatever the aggregation
    logs = [math.log(x) for x in (1.5, 0.5, 1.0, 1.1, 1.0)]
    close(stats["approx_kl"], sum(0.5 * x * x for x in logs) / 5, atol=1e-6)
    loss.backward()
    # positive advantage -> descent raises log pi, negative -> lowers it; padding (-inf / NaN) gets 0
    close(logprobs.grad, grad, atol=1e-6)


def test_policy_loss_token_mean_is_ppo_policy_loss_and_token_advantages_match():
    g = torch.Generator().manual_seed(0)
    logprobs, old = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    adv = torch.randn(3, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.3
    mask[:, 0] = True
    ours, _ = policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    theirs, _ = ppo_policy_loss(logprobs, old, adv[:, None].expand(3, 5), mask, clip_eps=0.2)
    close(ours, theirs.item())
    for agg in LOSS_AGGS:
        seq, _ = policy_loss(logprobs, old, adv, mask, 0.2, agg, max_len=5)
        tok, _ = policy_loss(logprobs, old, adv[:, None].expand(3, 5).clone(), mask, 0.2, agg, max_len=5)
        close(seq, tok.item())


def test_policy_loss_bad_arguments():
    logprobs, old, adv, mask = _policy_batch()
    with pytest.raises(
        ValueError, match=r"task\.module\.loss_agg must be one of .*seq_mean_token_sum_norm, got 'seq'"
    ):
        policy_loss(logprobs, old, adv, mask, 0.2, loss_agg="seq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs max_len >= 1.*task\.module\.max_new_tokens"):
        policy_loss(logprobs, old, adv, mask, 0.2, loss_agg="seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match=r"3 tokens, more than max_len=2"):
        policy_loss(logprobs, old, adv, mask, 0.2, loss_agg="seq_mean_token_sum_norm", max_len=2)
    with pytest.raises(ValueError, match=r"advantages \(3,\)"):
        policy_loss(logprobs, old, torch.zeros(3), mask, 0.2)
    with pytest.raises(ValueError, match="clip_eps"):
        policy_loss(logprobs, old, adv, mask, 0.0)


# --- KL loss ------------------------------------------------------------------------------------


def test_kl_loss_k3_hand_computed_and_gradient_pulls_towards_reference():
    # log r = ref - lp = [-0.5, 1.0]
    # k3 = e^{log r} - log r - 1 = [e^-0.5 - 0.5, e - 2] = [0.106531, 0.718282]
    # token_mean = 0.412406; d k3 / d lp = 1 - e^{log r} = [0.393469, -1.718282], / 2 tokens
    logprobs = T_([[-1.0, -2.0, float("-inf")]], requires_grad=True)
    ref = T_([[-1.5, -1.0, float("nan")]])
    mask = T_([[True, True, False]])
    loss = kl_loss(logprobs, ref, mask)
    close(loss.detach(), (math.exp(-0.5) - 0.5 + math.e - 2) / 2)
    loss.backward()
    close(logprobs.grad, [[(1 - math.exp(-0.5)) / 2, (1 - math.e) / 2, 0.0]])
    # above the reference (lp > ref) the gradient is positive: descent lowers lp; below, it raises it
    assert logprobs.grad[0, 0] > 0 > logprobs.grad[0, 1]


def test_kl_loss_aggregations_and_estimators():
    # k1 = lp - ref: row 0 [1, 3], row 1 [2]
    lp = T_([[1.0, 3.0], [2.0, 0.0]])
    ref = torch.zeros(2, 2)
    mask = T_([[True, True], [True, False]])
    close(kl_loss(lp, ref, mask, "k1"), 6.0 / 3)
    close(kl_loss(lp, ref, mask, "k1", "seq_mean_token_mean"), (2.0 + 2.0) / 2)
    close(kl_loss(lp, ref, mask, "k1", "seq_mean_token_sum_norm", max_len=4), 6.0 / (2 * 4))
    close(kl_loss(lp, ref, mask, "k2"), (0.5 + 4.5 + 2.0) / 3)  # 1/2 (lp - ref)^2
    assert kl_loss(lp, lp, mask, "k3").item() == 0.0


# --- padding invariance -------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**16),
    B=st.integers(1, 4),
    R=st.integers(1, 6),
    pad=st.integers(1, 4),
    agg=st.sampled_from(LOSS_AGGS),
    token_adv=st.booleans(),
)
@fast
def test_losses_invariant_to_extra_masked_padding(seed, B, R, pad, agg, token_adv):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, R + 1, (B,), generator=g)
    mask = torch.arange(R)[None, :] < lengths[:, None]  # (B, R)
    lp, old, ref = (torch.randn(B, R, generator=g, dtype=torch.float64) for _ in range(3))
    adv = torch.randn(B, R if token_adv else 1, generator=g, dtype=torch.float64)
    adv = adv if token_adv else adv[:, 0]  # (B, R) as REINFORCE++ or (B,) as GRPO / RLOO
    max_len = R + pad  # a fixed budget, as task.module.max_new_tokens

    def losses(lp, old, ref, adv, mask):
        lp = lp.clone().requires_grad_()
        pg, _ = policy_loss(lp, old, adv, mask, 0.2, agg, max_len)
        kl = kl_loss(lp, ref, mask, "k3", agg, max_len)
        (pg + 0.1 * kl).backward()
        return pg.detach(), kl.detach(), lp.grad

    garbage = torch.full((B, pad), float("nan"), dtype=torch.float64)
    padded = [torch.cat([t, garbage], dim=1) for t in (lp, old, ref)]
    adv_p = torch.cat([adv, garbage], dim=1) if token_adv else adv
    mask_p = torch.cat([mask, torch.zeros(B, pad, dtype=torch.bool)], dim=1)
    pg, kl, grad = losses(lp, old, ref, adv, mask)
    pg_p, kl_p, grad_p = losses(*padded, adv_p, mask_p)
    torch.testing.assert_close(pg_p, pg, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(kl_p, kl, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad_p[:, :R], grad, atol=1e-12, rtol=1e-12)
    assert (grad_p[:, R:] == 0).all() and (grad[~mask] == 0).all()
