"""benchmarks/interleaved.py: the arms' order (warm-up, then ABBA pairs), the measure and the pair ratios
(hand-computed), misaligned pairs refused, and the switch that puts a module in an arm."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import interleaved as il  # noqa: E402

P, S = il.PLAIN, il.SHARED


def step(total: float, generation: float) -> dict[str, float]:
    return {"training_step": total, il.GENERATION: generation, "rollout: reference forward": 1.0}


def test_the_order_is_a_warm_up_of_each_arm_then_abba_pairs() -> None:
    assert il.arm_order(3) == [P, S, S, P, P, S, S, P]
    order = il.arm_order(4)[2:]
    assert all({order[i], order[i + 1]} == {P, S} for i in range(0, len(order), 2))  # every pair one of each


def test_pair_ratios_and_medians_by_hand() -> None:
    arms = il.arm_order(2)  # plain, shared | shared, plain, plain, shared
    per_step = [
        step(100.0, 1.0),  # warm-up: not counted
        step(100.0, 1.0),
        step(9.0, 4.0),  # shared: 5 s of forwards + update
        step(12.0, 4.0),  # plain: 8 s → pair 8 / 5 = 1.6
        step(14.0, 4.0),  # plain: 10 s
        step(8.0, 4.0),  # shared: 4 s → pair 10 / 4 = 2.5
    ]
    out = il.summarise(arms, per_step)
    assert out["seconds"] == {P: [8.0, 10.0], S: [5.0, 4.0]}
    assert out["pair_ratios"] == pytest.approx([1.6, 2.5])
    assert out["median_pair_ratio"] == pytest.approx(2.05)
    assert out["ratio_of_medians"] == pytest.approx(9.0 / 4.5)


def test_a_pair_of_one_arm_twice_is_refused() -> None:
    arms = [P, S, P, P]
    with pytest.raises(ValueError, match="iterations 2 and 3 are not one of each arm"):
        il.summarise(arms, [step(10.0, 1.0)] * 4)


def test_switch_sets_the_forwards_the_minibatches_and_the_prefill() -> None:
    module = SimpleNamespace(share_prefix=None, minibatch_by_group=None, generation=SimpleNamespace())
    il.switch(module, S)
    assert (module.share_prefix, module.minibatch_by_group, module.generation.share_prefix) == (True,) * 3
    il.switch(module, P)
    assert (module.share_prefix, module.minibatch_by_group, module.generation.share_prefix) == (False,) * 3
