"""RewardTransformCallback with several references per prompt (PAR) on a hand-built batch: the reward,
and the telemetry — margin to the mean reference, share of (rollout, reference) pairs above, du/dr."""

from __future__ import annotations

import math

import pytest
import torch

from lit_rlhf.callbacks import RewardTransformCallback
from lit_rlhf.rewards.aggregators import Sum
from lit_rlhf.rewards.reference import ReferenceTable
from lit_rlhf.rewards.transforms import LogSigmoid, Sigmoid


class FakeModule:
    """Just enough of a LightningModule: records what is logged."""

    reward_names = ["helpful", "harmless"]
    logger = None
    _trainer = None

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_dict(self, metrics, batch_size=None) -> None:
        self.logged |= {k: float(v) for k, v in metrics.items()}


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def dsig(x: float) -> float:
    return sig(x) * (1 - sig(x))


def test_several_references_reward_and_telemetry():
    cb = RewardTransformCallback(transform=Sigmoid(samples=2), aggregator=Sum(), histogram_every=0)
    module = FakeModule()
    cb.transforms = {n: Sigmoid(samples=2) for n in module.reward_names}
    # helpful: 2 sampled references per prompt; harmless: one (a refusal's reward)
    cb.table = ReferenceTable(
        [7, 9],
        {"helpful": torch.tensor([[0.0, 2.0], [1.0, 1.0]]), "harmless": torch.tensor([[1.0], [-1.0]])},
    )
    scores = torch.tensor([[1.0, 0.0], [3.0, 1.0]])  # rows: prompt 7, prompt 9
    reward = cb(scores, torch.tensor([7, 9]), module)

    u_help = [(sig(1) + sig(-1)) / 2, sig(2)]  # row 0 sits between its references, row 1 above both
    u_harm = [sig(-1), sig(2)]
    torch.testing.assert_close(reward, torch.tensor([u_help[0] + u_harm[0], u_help[1] + u_harm[1]]))
    log = module.logged
    assert log["reward/helpful_transformed"] == pytest.approx(sum(u_help) / 2, rel=1e-6)
    assert log["reward/helpful_margin"] == pytest.approx(((1 - 1) + (3 - 1)) / 2)  # to the mean reference
    assert log["reward/helpful_above_ref"] == pytest.approx((1 / 2 + 1) / 2)  # pairs (rollout, reference)
    assert log["reward/helpful_weight"] == pytest.approx((dsig(1) + dsig(2)) / 2, rel=1e-6)
    assert log["reward/harmless_above_ref"] == pytest.approx(0.5)
    assert log["reward/harmless_weight"] == pytest.approx((dsig(-1) + dsig(2)) / 2, rel=1e-6)
    assert log["reward/total"] == pytest.approx(float(reward.mean()), rel=1e-6)


def test_one_reference_transform_cannot_ask_for_several():
    class Asking(LogSigmoid):
        samples = 4

    with pytest.raises(ValueError, match="asks for several references but takes one r_ref"):
        RewardTransformCallback(transform=Asking())
