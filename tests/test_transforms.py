"""Properties of reward transforms (``lit_rlhf.rewards.transforms``) and aggregators
(``lit_rlhf.rewards.aggregators``)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_rlhf.rewards.aggregators import Min, SoftMin, Sum, WeightedSum
from lit_rlhf.rewards.transforms import Center, Clip, Identity, LogSigmoid, Sigmoid, Whiten, check_finite

# Local settings (not a global profile, which would leak into other test files).
fast = settings(max_examples=40, deadline=None)

rewards_1d = st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=16)


def all_transforms():
    return [
        Identity(),
        LogSigmoid(),
        Center(),
        Whiten(running=False),
        Clip(low=-1.0, high=2.0),
        Clip(low=-0.5, high=0.5, center=True),
        Clip(high=0.0),
        Sigmoid(),
    ]


IDS = ["identity", "logsigmoid", "center", "whiten", "clip", "clip_centered", "clip_high_only", "sigmoid"]


@pytest.mark.parametrize("transform", all_transforms(), ids=IDS)
@fast
@given(r=st.lists(st.floats(-100, 100), min_size=2, max_size=16), ref=st.floats(-100, 100))
def test_monotone_non_decreasing_in_r(transform, r, ref):
    r = torch.tensor(sorted(r), dtype=torch.float64)
    u = transform(r, torch.full_like(r, ref))
    assert (u[1:] >= u[:-1]).all()


@fast
@given(r=rewards_1d, ref=st.floats(-1e4, 1e4))
def test_logsigmoid_non_positive_and_finite(r, ref):
    r = torch.tensor(r)
    u = LogSigmoid()(r, torch.full_like(r, ref))
    assert torch.isfinite(u).all()
    assert (u <= 0).all()


@fast
@given(
    r=st.lists(st.floats(-20, 20), min_size=1, max_size=6),
    ref=st.lists(st.floats(-20, 20), min_size=6, max_size=6),
)
def test_sum_of_logsigmoids_is_log_of_product(r, ref):
    """Sum over properties of log sigma(r_i - r_ref,i) = log prod_i sigma(...) (the logical AND)."""
    k = len(r)
    r_t = torch.tensor([r], dtype=torch.float64)  # (1, K)
    ref_t = torch.tensor([ref[:k]], dtype=torch.float64)  # (1, K)
    u = LogSigmoid()(r_t, ref_t)
    total = Sum()(u, [f"rm{i}" for i in range(k)])
    prob = math.prod(1 / (1 + math.exp(-(a - b))) for a, b in zip(r, ref))
    assert total.item() == pytest.approx(math.log(prob), rel=1e-9, abs=1e-9)


def test_logsigmoid_gradient_larger_below_reference():
    r = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0], requires_grad=True)
    ref = torch.zeros(5)
    LogSigmoid()(r, ref).sum().backward()
    grad = r.grad
    assert grad[0] > grad[1] > grad[2] > grad[3] > grad[4] > 0
    assert grad[2].item() == pytest.approx(0.5)
    torch.testing.assert_close(grad, LogSigmoid().weight(r.detach(), ref))


@pytest.mark.parametrize("transform", all_transforms(), ids=IDS)
@fast
@given(r=st.lists(st.floats(-50, 50), min_size=1, max_size=16), ref=st.floats(-50, 50))
def test_weight_matches_autograd(transform, r, ref):
    r = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    r_ref = torch.full_like(r, ref).detach()
    transform(r, r_ref).sum().backward()
    torch.testing.assert_close(r.grad, transform.weight(r.detach(), r_ref))


def test_needs_reference_flags_and_missing_reference():
    assert LogSigmoid().needs_reference and Center().needs_reference
    assert Clip(low=0.0, high=1.0, center=True).needs_reference
    assert not Identity().needs_reference and not Whiten().needs_reference
    assert not Clip(low=0.0, high=1.0).needs_reference
    with pytest.raises(ValueError, match="r_ref"):
        LogSigmoid()(torch.zeros(3), None)
    with pytest.raises(ValueError, match="shape"):
        Center()(torch.zeros(3), torch.zeros(4))


def test_hand_values():
    r, ref = torch.tensor([0.0, 2.0, -3.0]), torch.tensor([0.0, 1.0, 1.0])
    torch.testing.assert_close(
        LogSigmoid()(r, ref),
        torch.tensor([math.log(0.5), -math.log1p(math.exp(-1)), -math.log1p(math.exp(4))]),
    )
    torch.testing.assert_close(Center()(r, ref), torch.tensor([0.0, 1.0, -4.0]))
    torch.testing.assert_close(Clip(-1.0, 1.0)(r, ref), torch.tensor([0.0, 1.0, -1.0]))
    torch.testing.assert_close(Clip(-1.0, 1.0).weight(r, ref), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(Clip(-2.0, 2.0, center=True)(r, ref), torch.tensor([0.0, 1.0, -2.0]))


@fast
@given(r=st.lists(st.floats(-100, 100), min_size=2, max_size=16), seed=st.integers(0, 1000))
def test_transforms_ignore_batch_order(r, seed):
    r = torch.tensor(r, dtype=torch.float64)
    ref = torch.linspace(-1, 1, len(r), dtype=torch.float64)
    perm = torch.randperm(len(r), generator=torch.Generator().manual_seed(seed))
    for transform in all_transforms():
        torch.testing.assert_close(transform(r, ref)[perm], transform(r[perm], ref[perm]))


def test_clip_validation_names_config_key():
    with pytest.raises(ValueError, match=r"transform\.low must be < transform\.high"):
        Clip(low=1.0, high=0.0)
    with pytest.raises(ValueError, match="both null"):
        Clip()


# --- Whiten -------------------------------------------------------------------------------------


@pytest.mark.parametrize("running", [False, True])
def test_whiten_constant_batch_is_finite(running):
    w = Whiten(running=running)
    r = torch.full((8,), 3.7)
    w.update(r)
    u = w(r)
    assert torch.isfinite(u).all()
    torch.testing.assert_close(u, torch.zeros(8))
    assert torch.isfinite(w.weight(r)).all()


def test_whiten_batch_stats():
    r = torch.tensor([1.0, 3.0])  # mean 2, population std 1
    torch.testing.assert_close(Whiten(running=False)(r), torch.tensor([-1.0, 1.0]))


@fast
@given(batches=st.lists(st.lists(st.floats(-100, 100), min_size=1, max_size=10), min_size=1, max_size=5))
def test_whiten_running_stats_equal_all_rewards_seen(batches):
    w = Whiten(running=True)
    for b in batches:
        w.update(torch.tensor(b, dtype=torch.float64))
    everything = torch.tensor([x for b in batches for x in b], dtype=torch.float64)
    assert w.count == everything.numel()
    assert w.mean == pytest.approx(everything.mean().item(), abs=1e-9)
    assert w.var == pytest.approx(everything.var(unbiased=False).item(), rel=1e-6, abs=1e-6)


def test_whiten_running_state_round_trip():
    w = Whiten(running=True, momentum=0.1)
    w.update(torch.tensor([1.0, 2.0, 3.0]))
    w.update(torch.tensor([10.0, 20.0]))
    resumed = Whiten(running=True, momentum=0.1)
    resumed.load_state_dict(w.state_dict())
    r = torch.tensor([0.0, 5.0, 30.0])
    torch.testing.assert_close(resumed(r), w(r))
    assert resumed.state_dict() == w.state_dict()
    # a fresh, un-restored transform whitens differently, so the round trip is what made them agree
    assert not torch.allclose(Whiten(running=True, momentum=0.1)(r), w(r))


def test_stateless_transforms_have_empty_state():
    for t in (Identity(), LogSigmoid(), Center(), Clip(high=1.0), Sigmoid(samples=4)):
        assert t.state_dict() == {}
        t.load_state_dict({})


def test_whiten_validation():
    with pytest.raises(ValueError, match="transform.momentum"):
        Whiten(momentum=1.5)


# --- Sigmoid (Preference As Reward, Fu et al., 2025) ----------------------------------------------


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sigmoid_hand_values_one_and_several_references():
    r = torch.tensor([0.0, 2.0, -3.0])
    torch.testing.assert_close(
        Sigmoid()(r, torch.tensor([0.0, 1.0, 1.0])), torch.tensor([0.5, sig(1), sig(-4)])
    )
    # M = 3 references per rollout: u = mean_m σ(r − r_ref,m), du/dr = mean_m σ_m (1 − σ_m)
    refs = torch.tensor([[0.0, 1.0, -1.0], [2.0, 2.0, 2.0], [-3.0, 0.0, -6.0]])  # (B=3, M=3)
    u = Sigmoid()(r, refs)
    torch.testing.assert_close(
        u, torch.tensor([(0.5 + sig(-1) + sig(1)) / 3, 0.5, (0.5 + sig(-3) + sig(3)) / 3])
    )
    w = Sigmoid().weight(r, refs)
    dw = lambda x: sig(x) * (1 - sig(x))  # noqa: E731
    torch.testing.assert_close(w, torch.tensor([(0.25 + 2 * dw(1)) / 3, 0.25, (0.25 + 2 * dw(3)) / 3]))


@fast
@given(
    r=st.lists(st.floats(-30, 30), min_size=1, max_size=8),
    refs=st.lists(st.floats(-30, 30), min_size=1, max_size=5),
)
def test_sigmoid_bounded_weight_matches_autograd_and_at_most_a_quarter(r, refs):
    r = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor(refs, dtype=torch.float64).expand(len(r), -1)  # (B, M): the same M for every row
    u = Sigmoid()(r, ref)
    assert ((u >= 0) & (u <= 1)).all()
    u.sum().backward()
    w = Sigmoid().weight(r.detach(), ref)
    torch.testing.assert_close(r.grad, w)
    assert (w <= 0.25 + 1e-12).all()
    # the mean of M one-reference sigmoids
    each = torch.stack([Sigmoid()(r.detach(), ref[:, m]) for m in range(ref.shape[1])], -1)
    torch.testing.assert_close(u.detach(), each.mean(-1))


def test_sigmoid_is_flat_far_below_unlike_logsigmoid():
    r, ref = torch.tensor([-10.0]), torch.tensor([0.0])
    assert Sigmoid().weight(r, ref).item() < 1e-4 < 0.99 < LogSigmoid().weight(r, ref).item()


def test_sigmoid_reference_requests_and_validation():
    assert Sigmoid(samples=8).samples == 8 and Sigmoid(samples=8).quantiles is None
    assert Sigmoid(quantiles=[0.25, 0.75]).quantiles == (0.25, 0.75)
    assert Sigmoid.multi_reference and not LogSigmoid.multi_reference
    with pytest.raises(ValueError, match="transform.samples and transform.quantiles are both set"):
        Sigmoid(samples=2, quantiles=[0.5])
    with pytest.raises(ValueError, match="transform.samples must be an integer >= 1"):
        Sigmoid(samples=0)
    with pytest.raises(ValueError, match=r"transform.quantiles must be a non-empty list in \[0, 1\]"):
        Sigmoid(quantiles=[0.5, 1.5])
    with pytest.raises(ValueError, match="or that shape plus M references"):
        Sigmoid()(torch.zeros(3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="must match reward shape"):  # one-reference transforms refuse (B, M)
        LogSigmoid()(torch.zeros(3), torch.zeros(3, 2))


# --- NaN checks ---------------------------------------------------------------------------------


def test_nan_reward_raises_with_count():
    r = torch.tensor([0.0, float("nan"), float("inf"), 1.0])
    with pytest.raises(ValueError, match="reward contains 2 NaN/inf values"):
        LogSigmoid()(r, torch.zeros(4))
    with pytest.raises(ValueError, match="reference reward contains 1 NaN/inf"):
        Center()(torch.zeros(2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="x contains 1"):
        check_finite("x", torch.tensor([float("-inf")]))
    check_finite("x", torch.zeros(3))


# --- aggregators --------------------------------------------------------------------------------

NAMES = ["helpful", "harmless"]
U = torch.tensor([[-0.1, -2.0], [-1.0, -1.0], [0.0, -5.0]])  # (B=3, K=2)


def test_sum_min_weighted_sum_hand_cases():
    torch.testing.assert_close(Sum()(U, NAMES), torch.tensor([-2.1, -2.0, -5.0]))
    torch.testing.assert_close(Min()(U, NAMES), torch.tensor([-2.0, -1.0, -5.0]))
    ws = WeightedSum({"harmless": 2.0, "helpful": 0.5})  # weights looked up by name, not by order
    torch.testing.assert_close(ws(U, NAMES), torch.tensor([-0.05 - 4.0, -0.5 - 2.0, -10.0]))


def test_softmin_between_min_minus_tau_log_k_and_min():
    agg = SoftMin(temperature=0.5)
    out = agg(U, NAMES)
    mins = Min()(U, NAMES)
    assert (out <= mins + 1e-6).all() and (out >= mins - 0.5 * math.log(2) - 1e-6).all()
    torch.testing.assert_close(out[1], torch.tensor(-1.0 - 0.5 * math.log(2)))
    torch.testing.assert_close(SoftMin(1e-3)(U, NAMES), mins, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="aggregator.temperature"):
        SoftMin(0.0)


def test_weighted_sum_wrong_names():
    with pytest.raises(ValueError, match=r"missing \['harmless'\], unknown \['honest'\]"):
        WeightedSum({"helpful": 1.0, "honest": 1.0})(U, NAMES)
    with pytest.raises(ValueError, match="empty"):
        WeightedSum({})


def test_aggregator_shape_checks():
    with pytest.raises(ValueError, match="K=2"):
        Sum()(U, ["helpful"])
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        Min()(torch.zeros(3), NAMES)
