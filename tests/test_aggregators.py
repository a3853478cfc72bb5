"""The conservative ensemble aggregates of Coste et al. (2024) in ``lit_rlhf.rewards.aggregators``: hand
values and properties (mean − k·std, mean − k·var, mean; min is tested with the other aggregators)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_rlhf.rewards.aggregators import Mean, MeanMinusStd, MeanMinusVar, Min

fast = settings(max_examples=40, deadline=None)
SEEDS = ["0", "1", "2"]
SCORES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [-1.0, 5.0, 2.0]])  # (B=3, M=3)


def test_hand_values():
    # row 0: mean 2, population variance 2/3; row 1: no disagreement; row 2: mean 2, variance 6
    torch.testing.assert_close(Mean()(SCORES, SEEDS), torch.tensor([2.0, 4.0, 2.0]))
    torch.testing.assert_close(
        MeanMinusStd(k=1.0)(SCORES, SEEDS), torch.tensor([2 - math.sqrt(2 / 3), 4.0, 2 - math.sqrt(6)])
    )
    torch.testing.assert_close(
        MeanMinusStd(k=2.0)(SCORES, SEEDS),
        torch.tensor([2 - 2 * math.sqrt(2 / 3), 4.0, 2 - 2 * math.sqrt(6)]),
    )
    torch.testing.assert_close(MeanMinusVar(k=0.5)(SCORES, SEEDS), torch.tensor([2 - 1 / 3, 4.0, 2 - 3.0]))
    torch.testing.assert_close(Min()(SCORES, SEEDS), torch.tensor([1.0, 4.0, -1.0]))


scores = st.lists(st.lists(st.floats(-100, 100), min_size=3, max_size=3), min_size=1, max_size=6)


@fast
@given(rows=scores, k=st.floats(0, 5))
def test_conservative_at_most_the_mean_and_equal_when_members_agree(rows, k):
    x = torch.tensor(rows, dtype=torch.float64)
    mean = Mean()(x, SEEDS)
    assert (MeanMinusStd(k)(x, SEEDS) <= mean + 1e-9).all()
    assert (MeanMinusVar(k)(x, SEEDS) <= mean + 1e-9).all()
    torch.testing.assert_close(MeanMinusStd(0.0)(x, SEEDS), mean)
    agree = x[:, :1].expand(-1, 3)  # every member gives the same score
    torch.testing.assert_close(MeanMinusStd(k)(agree, SEEDS), agree[:, 0])


@fast
@given(a=st.floats(-100, 100), b=st.floats(-100, 100))
def test_two_members_mean_minus_one_std_is_their_min(a, b):
    """With M = 2 the population std is |a − b| / 2, so mean − 1·std = min(a, b)."""
    x = torch.tensor([[a, b]], dtype=torch.float64)
    torch.testing.assert_close(MeanMinusStd(1.0)(x, ["0", "1"]), Min()(x, ["0", "1"]))


@fast
@given(rows=scores, shift=st.floats(-50, 50), k=st.floats(0, 3))
def test_shift_equivariant(rows, shift, k):
    """Adding c to every member adds c to the aggregate (a missing-EOS penalty passes through)."""
    x = torch.tensor(rows, dtype=torch.float64)
    for agg in (Mean(), MeanMinusStd(k), MeanMinusVar(k), Min()):
        torch.testing.assert_close(agg(x + shift, SEEDS), agg(x, SEEDS) + shift, atol=1e-9, rtol=1e-9)


def test_validation_names_the_key():
    for cls in (MeanMinusStd, MeanMinusVar):
        with pytest.raises(ValueError, match="aggregator.k must be a finite number >= 0"):
            cls(k=-1.0)
        with pytest.raises(ValueError, match="aggregator.k"):
            cls(k=float("inf"))
    with pytest.raises(ValueError, match="K=3"):
        MeanMinusStd()(SCORES, ["0", "1"])


@pytest.mark.parametrize("name", ["sum", "min", "weighted_sum"])
def test_aggregator_option_reaches_the_reward_callback(tmp_path, name):
    """``aggregator=<name>`` on the command line is the aggregator PPO's reward callback applies (its use
    in a PPO run: tests/test_ppo.py, ``aggregator=min``)."""
    from hydra.utils import instantiate

    from conftest import hydra_cfg

    with hydra_cfg(tmp_path, [f"aggregator={name}"]) as cfg:
        cb = instantiate(cfg.task.callbacks.reward_transform)
    s = torch.tensor([[1.0, -2.0], [0.5, 3.0]])  # (B, K) for helpful, harmless
    expected = {"sum": [-1.0, 3.5], "min": [-2.0, 0.5], "weighted_sum": [1.0 - 1.0, 0.5 + 1.5]}[name]
    torch.testing.assert_close(cb.aggregator(s, ["helpful", "harmless"]), torch.tensor(expected))
