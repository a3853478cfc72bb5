"""RewardTransformCallback on a hand-built batch: the reward it returns and the telemetry it logs."""

from __future__ import annotations

import math

import torch

from lit_rlhf.callbacks import RewardTransformCallback
from lit_rlhf.rewards.aggregators import Sum
from lit_rlhf.rewards.reference import ReferenceTable
from lit_rlhf.rewards.transforms import LogSigmoid


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


def test_reward_and_margin_telemetry_on_a_hand_built_batch():
    cb = RewardTransformCallback(transform=LogSigmoid(), aggregator=Sum(), histogram_every=0)
    module = FakeModule()
    cb.transforms = {n: LogSigmoid() for n in module.reward_names}
    # r_ref per prompt id: prompt 7 → (1, 0), prompt 9 → (3, −1)
    cb.table = ReferenceTable(
        [7, 9], {"helpful": torch.tensor([1.0, 3.0]), "harmless": torch.tensor([0.0, -1.0])}
    )
    scores = torch.tensor([[3.0, -1.0], [2.0, 1.0]])  # rows: prompt 7, prompt 9
    reward = cb(scores, torch.tensor([7, 9]), module)

    # margins: helpful (2, −1), harmless (−1, 2)
    expected = torch.tensor([math.log(sig(2)) + math.log(sig(-1)), math.log(sig(-1)) + math.log(sig(2))])
    torch.testing.assert_close(reward, expected)
    log = module.logged
    assert math.isclose(log["reward/helpful_raw"], 2.5)
    assert math.isclose(log["reward/helpful_margin"], 0.5)
    assert math.isclose(log["reward/harmless_margin"], 0.5)
    assert math.isclose(log["reward/helpful_above_ref"], 0.5)
    assert math.isclose(log["reward/helpful_weight"], (sig(-2) + sig(1)) / 2, rel_tol=1e-6)
    assert math.isclose(
        log["reward/helpful_transformed"], (math.log(sig(2)) + math.log(sig(-1))) / 2, rel_tol=1e-6
    )
    assert math.isclose(log["reward/total"], float(expected.mean()), rel_tol=1e-6)
    assert cb.calls == 1
