"""π_old of the first minibatch from the update's own forward (``old_logprobs_from_update``,
lit_rlhf/training/first_forward.py): the rollout skips those rows, the update does not run their forward
twice, the π_old written into the rollout is the one a full rollout forward gives, and the step moves the
weights where the step without it does."""

from __future__ import annotations

import pytest
import torch
from test_shared_prefix_training import fit_one_step, tiny_module

from lit_rlhf.tasks.grpo import GRPOModule
from lit_rlhf.tasks.policy import PolicyModule
from lit_rlhf.tasks.ppo import PPOModule
from lit_rlhf.training.first_forward import FirstForward
from lit_rlhf.training.sharding import DataParallel, minibatch_rows, shard_of

B = 12  # batch(): 3 prompts × samples_per_prompt 4


def step(cls: type, on: bool, minibatches: int, by_group: bool) -> dict:
    """One step of ``cls``: the policy forwards it ran (rows, with grad?), π_old after the first update's
    forward, the weights before and after, the logged metrics."""
    module = tiny_module(
        cls,
        lr=0.05,
        max_new_tokens=5,
        ppo_epochs=2,
        num_minibatches=minibatches,
        samples_per_prompt=4,
        minibatch_by_group=by_group,
        old_logprobs_from_update=on,
    )
    out: dict = {"forwards": [], "before": {k: v.clone() for k, v in module.actor.state_dict().items()}}

    def spy(m, ids, *a):
        if m is module.actor:
            out["forwards"].append((len(ids), torch.is_grad_enabled()))
        return cls._token_logprobs(module, m, ids, *a)

    def first(ro):
        FirstForward.first_update_forward(module, ro)
        out["old"], out["owed"] = ro.logprobs.clone(), ro.owed

    module._token_logprobs, module.first_update_forward = spy, first
    fit_one_step(module)
    out["after"] = module.actor.state_dict()
    out["metrics"] = {k: float(v) for k, v in module.trainer.callback_metrics.items()}
    return out


@pytest.mark.slow  # eight one-step Trainer.fit runs: ~20 s on a shared machine
@pytest.mark.parametrize(
    ("cls", "minibatches", "by_group"), [(GRPOModule, 2, False), (GRPOModule, 1, True), (PPOModule, 3, True)]
)
def test_the_first_minibatch_takes_its_old_logprobs_from_its_update_forward(
    cls, minibatches, by_group
) -> None:
    off, on = (step(cls, flag, minibatches, by_group) for flag in (False, True))
    updates = 2 * minibatches  # epochs × minibatches
    first = len(on["owed"])
    assert off["owed"] is None and 0 < first == -(-B // minibatches)
    # off: the rollout's forward over every row, then one forward per update
    assert off["forwards"] == [(B, False)] + [(B // minibatches, True)] * updates
    # on: the rollout skips the first minibatch's rows (no forward at all with one minibatch); the first
    # update's forward runs once, right after the rollout
    rollout = [(B - first, False)] if minibatches > 1 else []
    assert on["forwards"] == rollout + [(B // minibatches, True)] * updates
    # π_old of every row, the owed ones from the update's forward, is what the full rollout forward gave
    assert not torch.equal(on["old"][on["owed"]], torch.zeros_like(on["old"][on["owed"]]))
    torch.testing.assert_close(on["old"], off["old"], atol=2e-5, rtol=1e-5)
    moved = max(float((off["after"][k] - off["before"][k]).abs().max()) for k in off["before"])
    assert moved > 1e-3
    for k in off["after"]:
        torch.testing.assert_close(on["after"][k], off["after"][k], atol=2e-5, rtol=1e-4)
    a = cls.algorithm
    for key in (f"{a}/pg_loss", f"{a}/kl", f"{a}/reward"):
        assert on["metrics"][key] == pytest.approx(off["metrics"][key], abs=1e-5), key


class Rank(DataParallel, FirstForward):
    """A process of ``world`` holding an equal share of ``total`` rows, minibatches as a policy module cuts
    them; ``_token_logprobs`` only records the rows it is asked for."""

    seed, iteration, ppo_epochs, _row_seeds, _trainer = 0, 5, 2, None, None
    old_logprobs_from_update, minibatch_by_group, samples_per_prompt = True, False, 1

    def __init__(self, total: int, world: int, rank: int, minibatches: int) -> None:
        self.actor, self.num_minibatches = torch.nn.Linear(1, 1), minibatches
        self.my = shard_of([total // world] * world, rank)
        self.shard = lambda B: self.my
        self.asked: list[int] = []

    def _token_logprobs(self, actor, ids, mask, P):
        self.asked += ids[:, 0].tolist()
        return torch.full((len(ids), ids.shape[1] - P), -1.0)


@pytest.mark.parametrize(("world", "minibatches"), [(1, 2), (2, 2), (4, 4), (4, 3)])
def test_each_process_owes_exactly_its_rows_of_the_first_minibatch(world: int, minibatches: int) -> None:
    """Under DDP a process owes its rows of the global first minibatch, none (``None``) when it holds none of
    them: the rest is computed in the rollout, the owed rows are left at 0 for the update's forward."""
    total, P = 8, 2
    first = next(minibatch_rows(shard_of([total], 0), minibatches, 2, torch.Generator().manual_seed(0)))
    owed_everywhere = []
    for r in range(world):
        rank = Rank(total, world, r, minibatches)
        gen = torch.Generator().manual_seed(0)
        rank.minibatches = lambda mask, rank=rank, gen=gen: (
            (i, mask[i]) if len(i) else (i.new_zeros(1), torch.zeros_like(mask[:1]))
            for i in minibatch_rows(rank.my, rank.num_minibatches, 2, gen)
        )
        local = total // world
        owed = rank.owed_rows(local, torch.device("cpu"))
        mine = [g - rank.my.offset for g in first.tolist() if rank.my.offset <= g < rank.my.offset + local]
        assert (owed is None) == (not mine)
        if owed is not None:
            assert owed.tolist() == mine
            owed_everywhere += [rank.my.offset + i for i in mine]
        ids = torch.arange(local)[:, None].expand(local, P + 3)
        lp = rank.rollout_logprobs(ids, torch.ones_like(ids), P, owed)
        assert sorted(rank.asked) == sorted(set(range(local)) - set(mine))
        assert lp.shape == (local, 3)
        assert (lp[mine] == 0).all() and (lp[sorted(set(range(local)) - set(mine))] == -1).all()
    assert sorted(owed_everywhere) == sorted(first.tolist())


def test_the_setting_off_owes_nothing_and_the_config_defaults_it_on() -> None:
    rank = Rank(8, 1, 0, 2)
    rank.old_logprobs_from_update = False
    assert rank.owed_rows(8, torch.device("cpu")) is None
    from lit_rlhf.tasks.config import PolicyConfig  # noqa: PLC0415

    assert PolicyConfig().old_logprobs_from_update is True
    assert issubclass(PolicyModule, FirstForward)
