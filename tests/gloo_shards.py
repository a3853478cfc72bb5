"""A global batch of 6 ragged rows, its shards over 2 processes, and the worker that computes global
statistics and losses on a shard in a real gloo group (for tests/test_sharded_batches.py).

A module of its own so that the spawned processes import only torch and ``lit_rlhf.rlhf``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lit_rlhf.rlhf import masked_whiten, ppo_policy_loss, value_loss
from lit_rlhf.rlhf.estimators import LOSS_AGGS, kl_loss, policy_loss, reinforce_pp_advantages, shard_norms


def shards() -> dict[str, torch.Tensor]:
    """A global batch of 6 rows with ragged responses; rank 0 holds rows 0-1 (few tokens), rank 1 rows 2-5."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1],
                         [1, 1, 1, 0, 0]], dtype=torch.bool)  # fmt: skip
    return {
        "mask": mask,
        "x": torch.randn(6, 5, generator=g) * 3 + 1,
        "logprobs": torch.randn(6, 5, generator=g) * 0.1 - 2,
        "old": torch.randn(6, 5, generator=g) * 0.1 - 2,
        "ref": torch.randn(6, 5, generator=g) * 0.1 - 2,
        "adv": torch.randn(6, 5, generator=g),
        "values": torch.randn(6, 5, generator=g),
        "returns": torch.randn(6, 5, generator=g),
    }


ROWS = {0: slice(0, 2), 1: slice(2, 6)}


def stand_in(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a rank none of whose rows fell in a minibatch takes part with (``DataParallel.minibatches``): its
    row 0 under a zero mask."""
    return {k: torch.zeros_like(v[:1]) if k == "mask" else v[:1] for k, v in d.items()}


def losses(d: dict[str, torch.Tensor], norms, agg: str) -> dict[str, torch.Tensor]:
    """Every loss of a (shard of a) minibatch and its gradient w.r.t. the log-probs and values."""
    lp = d["logprobs"].clone().requires_grad_()
    v = d["values"].clone().requires_grad_()
    n = None if norms is None else norms.tokens
    pg, _ = policy_loss(lp, d["old"], d["adv"], d["mask"], 0.2, agg, max_len=5, norms=norms)
    kl = kl_loss(lp, d["ref"], d["mask"], "k3", agg, max_len=5, norms=norms)
    ppo, stats = ppo_policy_loss(lp, d["old"], d["adv"], d["mask"], 0.2, token_norm=n)
    vf, _ = value_loss(v, d["values"] - 0.3, d["returns"], d["mask"], 0.2, token_norm=n)
    total = pg + kl + ppo + vf
    total.backward()
    return {
        "pg": pg,
        "kl": kl,
        "ppo": ppo,
        "vf": vf,
        "approx_kl": stats["approx_kl"],
        "dlp": lp.grad,
        "dv": v.grad,
    }


def worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def all_sum(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    d = {k: v[ROWS[rank]] for k, v in shards().items()}
    res = {
        "whiten": masked_whiten(d["x"], d["mask"], all_sum=all_sum),
        "reinforce_pp": reinforce_pp_advantages(d["x"], d["mask"], 1.0, all_sum=all_sum),
    }
    for agg in LOSS_AGGS:
        for k, v in losses(d, shard_norms(d["mask"], all_sum, 2), agg).items():
            # what DDP does: the mean over ranks (gradients: its all-reduce / world size)
            res[f"{agg}/{k}"] = all_sum(v.detach()) / 2 if v.dim() == 0 else v.detach()
    # a minibatch of rows 2-5 only: rank 0 holds none of them and takes part with a stand-in row
    part = stand_in(d) if rank == 0 else d
    for agg in LOSS_AGGS:
        for k, v in losses(part, shard_norms(part["mask"], all_sum, 2), agg).items():
            res[f"empty/{agg}/{k}"] = all_sum(v.detach()) / 2 if v.dim() == 0 else v.detach()
    torch.save(res, f"{out}.{rank}")
    dist.destroy_process_group()
