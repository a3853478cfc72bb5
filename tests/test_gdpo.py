"""GDPO's normalise-then-sum (``aggregator=normalize_then_sum``, ``lit_rlhf.rewards.gdpo``) against hand
values, its own degenerate case beside the paper's AND, and end to end under every policy algorithm."""

from __future__ import annotations

import glob
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_rlhf.rewards.gdpo import NormalizeThenSum, group_normalise, normalize_then_sum
from lit_rlhf.rlhf import group_advantages

NAMES = ["helpful", "harmless"]
EPS = 1e-9


def test_two_groups_by_hand_gdpo_separates_what_grpo_on_the_sum_ties() -> None:
    # group 1: (helpful, harmless) = (1,1), (1,0), (0,1), (0,1); group 2: four (1,1), no spread at all
    r = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 1], [1, 1], [1, 1], [1, 1], [1, 1]], dtype=torch.float64)
    grpo = group_advantages(r.sum(1), group_size=4, eps=EPS)
    assert grpo[1] == grpo[2]  # GRPO on the sum: (1,0) and (0,1) both total 1, the same advantage

    # by hand: helpful [1,1,0,0] → ±√3/2 (mean 1/2, sample std 1/√3); harmless [1,0,1,1] → mean 3/4, sample
    # std 1/2 → [1/2, −3/2, 1/2, 1/2]; group 2 → 0
    h = math.sqrt(3) / 2
    s = torch.tensor([h + 0.5, h - 1.5, -h + 0.5, -h + 0.5, 0, 0, 0, 0], dtype=torch.float64)
    assert torch.allclose(group_normalise(r, 4, EPS).sum(1), s)
    std = math.sqrt((6 - 2 * math.sqrt(3)) / 7)  # Σ s² = 6 − 2√3 over 8 − 1; mean 0
    gdpo = normalize_then_sum(r, torch.ones(2, dtype=torch.float64), group_size=4, eps=EPS)
    assert torch.allclose(gdpo, s / std)
    assert gdpo[2] > gdpo[1]  # GDPO: failing the property the group rarely fails (harmless) costs more


def test_gdpo_degenerate_case_one_reward_is_c_minus_the_other_and_what_the_and_gives() -> None:
    r1 = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    r = torch.stack([r1, 3.0 - r1], -1)  # r2 = C − r1
    gdpo = NormalizeThenSum(eps=EPS)(r, NAMES, group_size=4)
    assert torch.equal(gdpo, torch.zeros(4, dtype=torch.float64))  # no signal: the terms cancel
    # the AND: log σ(r1 − 1.5) + log σ(r2 − 1.5) is highest where both are good → the balanced responses
    u = torch.nn.functional.logsigmoid(r - 1.5).sum(1)
    adv = group_advantages(u, group_size=4, eps=EPS)
    assert adv[1] == adv[2] and adv[1] > 0 > adv[0] and adv[0] == adv[3]


def test_cancelling_terms_give_zeros_not_whitened_rounding_noise() -> None:
    """G = 2 and two rewards that move in opposite directions in every group: each group's terms are
    (+1/√2, −1/√2) and (−1/√2, +1/√2), so every total is 0 up to eps and rounding — no signal, not unit
    noise."""
    r = torch.tensor([[0.3, 0.9], [0.1, 1.7], [2.0, 0.2], [2.5, 0.1]])
    assert float(group_normalise(r, 2).sum(1).abs().max()) < 1e-4  # (eps over two different stds)
    assert torch.equal(NormalizeThenSum()(r, NAMES, group_size=2), torch.zeros(4))


def test_all_equal_groups_give_zeros_not_nan() -> None:
    r = torch.full((6, 2), 2.9)
    assert torch.equal(group_normalise(r, 3), torch.zeros(6, 2))
    assert torch.equal(NormalizeThenSum()(r, NAMES, group_size=3), torch.zeros(6))
    one = NormalizeThenSum()(torch.tensor([[1.0, 2.0]]), NAMES)  # a batch of one
    assert torch.equal(one, torch.zeros(1))


def test_without_groups_each_reward_is_normalised_over_the_batch() -> None:
    r = torch.tensor([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    # helpful [0,2,4] → [−1,0,1]; harmless [10,30,20] → [−1,1,0] (both sample std 2 / 10); sum [−2,1,1]
    total = torch.tensor([-2.0, 1.0, 1.0])
    assert torch.allclose(NormalizeThenSum(eps=EPS)(r, NAMES), total / total.std(), atol=1e-6)


def test_weights_and_per_reward_terms() -> None:
    r = torch.tensor([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    agg = NormalizeThenSum(weights={"helpful": 2.0, "harmless": 0.5}, eps=EPS)
    terms = agg.per_reward(r, NAMES)
    assert torch.allclose(terms, torch.tensor([[-2.0, -0.5], [0.0, 0.5], [2.0, 0.0]]), atol=1e-6)
    total = terms.sum(1)
    assert torch.allclose(agg(r, NAMES), (total - total.mean()) / total.std(), atol=1e-6)
    with pytest.raises(ValueError, match=r"missing \['harmless'\]"):
        NormalizeThenSum(weights={"helpful": 1.0})(r, NAMES)
    with pytest.raises(ValueError, match="not a whole number of groups"):
        NormalizeThenSum()(r, NAMES, group_size=2)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=8, max_size=8),
    st.lists(st.floats(-5, 5), min_size=8, max_size=8),
    st.floats(-3, 3),
    st.floats(0.1, 10),
)
def test_invariant_to_a_per_group_affine_change_of_one_reward(a, b, shift, scale) -> None:
    r = torch.tensor([a, b], dtype=torch.float64).T  # (8, 2): two groups of 4
    moved = r.clone()
    moved[:4, 0] = moved[:4, 0] * scale + shift  # group 1's helpfulness in other units
    base = normalize_then_sum(r, torch.ones(2, dtype=torch.float64), 4, eps=1e-12)
    assert torch.isfinite(base).all()
    spread = (r[:4, 0].max() - r[:4, 0].min()) > 1e-3
    if spread:  # (a flat column stays flat, both give 0)
        assert torch.allclose(base, normalize_then_sum(moved, torch.ones(2, dtype=torch.float64), 4, 1e-12))
    if float(group_normalise(r, 4, 1e-12).sum(1).std()) > 1e-3:  # a sum with spread: whitened
        assert abs(float(base.mean())) < 1e-9 and abs(float(base.std()) - 1) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("task", ["grpo", "rloo", "ppo", "reinforce_pp"])
def test_normalize_then_sum_trains_under_every_algorithm(
    tmp_path: Path, stage_cache: Path, task: str
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_ppo import RewardSpy, ppo

    groups = ["task.datamodule.batch_size=4", "task.module.samples_per_prompt=2"]
    over = [f"task={task}", "+transform=logsigmoid", "aggregator=normalize_then_sum"]
    spy = RewardSpy()
    trainer, cbs, run_dir = ppo(
        tmp_path, stage_cache, over + (groups if task != "reinforce_pp" else []), spy=spy
    )
    assert cbs["RewardTransformCallback"].gives_advantages
    assert trainer.lightning_module.reward_is_advantage  # GRPO takes it as its advantage
    for reward in spy.rewards:  # whitened over the batch: mean 0, std 1 (or no signal at all: 0)
        assert abs(float(reward.mean())) < 1e-4
        assert abs(float(reward.std()) - 1) < 1e-3 or torch.equal(reward, torch.zeros_like(reward))
    acc = EventAccumulator(glob.glob(str(run_dir / "tensorboard" / "events.*"))[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in NAMES:
        assert f"reward/{name}_advantage_abs" in tags and f"reward/{name}_advantage_agree" in tags
