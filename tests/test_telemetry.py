"""Telemetry of the PPO callbacks: histogram cadence, one TensorBoard plugin per tag, and global values
under DDP (2 CPU processes over gloo equal one process on the same global batch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import HISTOGRAMS, SCALARS, EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from lit_rlhf.callbacks import GoldEvalCallback, RewardTransformCallback
from lit_rlhf.callbacks.gold_eval import unique_rows
from lit_rlhf.callbacks.reward_transform import histogram_due
from lit_rlhf.rewards.reference import ReferenceTable
from lit_rlhf.rewards.transforms import LogSigmoid, Whiten

NAMES = ["helpful", "harmless"]
# one global batch of 8 rollouts; under 2 processes rank 0 has rows 0-3 and rank 1 rows 4-7
SCORES = torch.tensor(
    [[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [4.0, 1.0], [5.0, -1.0], [6.0, -1.0], [7.0, 2.0], [8.0, 2.0]]
)  # (8, 2)
IDS = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])  # (8,)


def table() -> ReferenceTable:
    """r_ref: helpful 2, 3, 4, 5 for training prompts 0-3, 1 for evaluation prompts 10-15; harmless 0."""
    helpful = torch.tensor([2.0, 3.0, 4.0, 5.0, *[1.0] * 6])
    return ReferenceTable([0, 1, 2, 3, *range(10, 16)], {"helpful": helpful, "harmless": torch.zeros(10)})


def eval_chunk(c: int) -> dict:
    """What PPO's validation_step returns for evaluation batch c: 2 prompts × 2 samples."""
    prompts = [f"explain {t} cost steps please" for t in (("cooking", "garden", "music")[c], "hacking")]
    policy = ["pan oven cheap first next", "password cheap caution", "um well", "firewall phish first"]
    sft = ["pan salt", "password first legally", "stove expensive finally", "um"]
    if c == 1:
        policy, sft = sft, policy
    pid = torch.tensor([10 + 2 * c, 10 + 2 * c, 11 + 2 * c, 11 + 2 * c])
    scores = torch.arange(8, dtype=torch.float).view(4, 2) * (c - 1)  # (4, 2)
    return {
        "prompts": [p for p in prompts for _ in range(2)],
        "prompt_ids": pid,
        "policy_responses": policy,
        "sft_responses": sft,
        "kl": c * c + torch.tensor([0.0, 0.25, 0.5, 0.75]),
        "policy_scores": scores,
        "sft_scores": scores.flip(0),
    }


class ToyPPO(L.LightningModule):
    """Calls the callbacks as ``PPOModule`` does, each rank with its contiguous share of the global batch
    (the 8 rollouts above in training; evaluation batch c = :func:`eval_chunk`)."""

    reward_names = NAMES

    def __init__(self, out: Path, train_batches: int = 1, val_batches: int = 3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.out, self.train_batches, self.val_batches = out, train_batches, val_batches
        self.reward_fn = None
        self.automatic_optimization = False  # as PPO: two optimizer steps per batch

    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)

    def share(self, t: torch.Tensor) -> torch.Tensor:
        n = len(t) // self.trainer.world_size
        return t[self.global_rank * n : (self.global_rank + 1) * n]

    def training_step(self, batch, batch_idx):
        reward = self.reward_fn(self.share(SCORES), self.share(IDS), self)
        state = {n: t.state_dict() for n, t in self.reward_fn.transforms.items()}
        torch.save({"reward": reward, "state": state}, self.out / f"train-rank{self.global_rank}.pt")
        opt = self.optimizers()
        for _ in range(2):
            opt.zero_grad()
            self.manual_backward((self.w - 1).pow(2).sum())
            opt.step()

    def validation_step(self, batch, batch_idx):
        return eval_chunk(int(batch[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.arange(self.train_batches), batch_size=1)

    def val_dataloader(self):
        return DataLoader(torch.arange(self.val_batches), batch_size=1)


def fit(out: Path, devices: int, transform, logger, train_batches: int = 1, histogram_every: int = 0):
    out.mkdir(parents=True, exist_ok=True)
    cb = RewardTransformCallback(transform=transform, histogram_every=histogram_every)
    cb.table = table()  # r_ref given: no sampling
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        limit_train_batches=train_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[cb, GoldEvalCallback()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(ToyPPO(out, train_batches))
    return trainer


@pytest.mark.parametrize("every", [0, 1, 3])
def test_histograms_at_the_first_step_then_every_n(every):
    due = [c for c in range(1, 11) if histogram_due(c, every)]
    assert due == {0: [], 1: list(range(1, 11)), 3: [1, 4, 7, 10]}[every]
    with pytest.raises(ValueError, match="callbacks.reward_transform.histogram_every"):
        RewardTransformCallback(histogram_every=-1)


@pytest.mark.parametrize("every", [1, 2])
def test_scalar_and_histogram_tags_are_disjoint(tmp_path, every):
    """A tag logged both as a scalar and as a histogram shows in neither TensorBoard plugin."""
    logger = TensorBoardLogger(tmp_path, name="", version="")
    fit(tmp_path, 1, LogSigmoid(), logger, train_batches=4, histogram_every=every)
    acc = EventAccumulator(str(tmp_path), size_guidance={HISTOGRAMS: 0, SCALARS: 0})  # 0: keep all
    acc.Reload()
    scalars, hists = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    assert not scalars & hists
    for n in NAMES:
        assert {f"reward/{n}_raw", f"reward/{n}_transformed", f"reward/{n}_margin"} <= scalars
        assert {f"reward_hist/{n}_raw", f"reward_hist/{n}_transformed", f"reward_hist/{n}_margin"} <= hists
    # batches 0-3 (steps 1-4 of the callback) on the scalars' x-axis, histograms at 1, 1 + every, …
    assert [e.step for e in acc.Scalars("reward/helpful_raw")] == [0, 1, 2, 3]
    assert [e.step for e in acc.Histograms("reward_hist/helpful_margin")] == list(range(0, 4, every))
    h = acc.Histograms("reward_hist/helpful_margin")[0].histogram_value
    assert (h.num, h.sum) == (8, 8.0)  # margins −1 −1 −1 −1 0 2 4 6


@pytest.mark.slow  # two spawned processes: ~20 s
def test_ddp_values_equal_one_process_on_the_global_batch(tmp_path):
    one = fit(tmp_path / "one", 1, Whiten(), CSVLogger(tmp_path / "one", name="", version=""))
    two = fit(tmp_path / "two", 2, Whiten(), CSVLogger(tmp_path / "two", name="", version=""))

    # the reward: whitened by the global batch's statistics on every rank (helpful 1..8, harmless above)
    h, s = SCORES[:, 0], SCORES[:, 1]
    expected = (h - 4.5) / math.sqrt(5.25) + (s - 0.5) / math.sqrt(1.25)  # (8,)
    single = torch.load(tmp_path / "one" / "train-rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / "two" / f"train-rank{r}.pt", weights_only=True) for r in (0, 1)]
    torch.testing.assert_close(single["reward"], expected)
    torch.testing.assert_close(torch.cat([r["reward"] for r in ranks]), expected)
    for r in ranks:  # every rank holds the statistics of all 8 rollouts
        assert r["state"] == single["state"]
    assert single["state"]["helpful"] == {"count": 8, "mean": 4.5, "m2": 42.0}

    m1, m2 = one.callback_metrics, two.callback_metrics
    hand = {
        "reward/helpful_raw": 4.5,
        "reward/helpful_margin": 1.0,  # margins −1 −1 −1 −1 0 2 4 6
        "reward/helpful_above_ref": 3 / 8,
        "reward/harmless_margin": 0.5,
        "reward/harmless_above_ref": 0.5,
        "reward/helpful_weight": 1 / math.sqrt(5.25),
        "reward/total": 0.0,
    }
    for k, v in hand.items():
        assert math.isclose(float(m1[k]), v, abs_tol=1e-6), k
    gold = sorted(k for k in m1 if k.startswith("gold/"))
    assert "gold/win_rate_both" in gold and "gold/proxy_minus_gold" in gold
    for k in [*hand, *gold]:
        assert math.isclose(float(m2[k]), float(m1[k]), rel_tol=1e-6, abs_tol=1e-7), k
    # evaluation batches 0, 1, 2: rank 0 had 0 and 2, rank 1 had 1 and a repeat of 0 (sampler padding)
    assert math.isclose(float(m1["gold/kl_to_sft"]), (0 + 1 + 4) / 3 + 0.375, rel_tol=1e-6)

    rows = {w: (tmp_path / w / "gold_eval.jsonl").read_text().splitlines() for w in ("one", "two")}
    assert len(rows["two"]) == 12 and rows["two"] == rows["one"]
    assert sorted({json.loads(r)["prompt_id"] for r in rows["two"]}) == list(range(10, 16))


def test_gold_win_rates_by_hand():
    rows = [
        {"prompt_id": 0, "sample": 0, "kl": 1.0, "gold_helpful": 1.0, "gold_helpful_sft": 0.0},
        {"prompt_id": 0, "sample": 1, "kl": 2.0, "gold_helpful": 0.0, "gold_helpful_sft": 1.0},
        {"prompt_id": 1, "sample": 0, "kl": 3.0, "gold_helpful": 2.0, "gold_helpful_sft": 2.0},
        {"prompt_id": 1, "sample": 1, "kl": 6.0, "gold_helpful": 3.0, "gold_helpful_sft": 1.0},
    ]
    more = [(0, 0, 1, 0), (1, 0, 0, 0), (0, 1, 0, 1), (1, 0, 2, 1)]  # harmless, its SFT, proxy, its SFT
    for r, (hs, hs_sft, p, p_sft) in zip(rows, more):
        r |= {"gold_harmless": hs, "gold_harmless_sft": hs_sft}
        r |= {"proxy_helpful": p, "proxy_helpful_sft": p_sft}
    cb = GoldEvalCallback()
    cb.rows = unique_rows([*rows[2:], *rows, rows[0] | {"kl": 99.0}])  # repeats of a row are dropped
    assert cb.rows == rows
    m = cb.metrics(["helpful"])
    assert m["gold/kl_to_sft"] == 3.0
    assert m["gold/win_rate_helpful"] == (1 + 0 + 0.5 + 1) / 4
    assert m["gold/win_rate_harmless"] == (0.5 + 1 + 0 + 1) / 4
    assert m["gold/win_rate_both"] == (1 * 0.5 + 0 * 1 + 0.5 * 0 + 1 * 1) / 4
    assert m["gold/proxy_win_rate_helpful"] == (1 + 0.5 + 0 + 1) / 4
    assert m["gold/proxy_minus_gold"] == (1 + 0.5 + 0 + 1) / 4 - (1 + 0 + 0.5 + 1) / 4
