"""Which records a process sees: the seeded train/val split and PPO's cycled, rank-sharded batches."""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

DM = "task.datamodule"  # where the arguments are set


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/val split of ``range(n)`` by a seeded permutation.

    Args:
        n: Number of records.
        val_fraction: Share held out; 0 gives an empty validation set, otherwise at least one record.
        seed: Seed of the permutation (``random.Random(seed)``).

    Returns:
        ``(train_indices, val_indices)``, disjoint, each sorted (file order is kept within a split).
    """
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    n_val = 0 if val_fraction == 0 else min(n - 1, max(1, round(n * val_fraction)))
    if val_fraction > 0 and n_val < 1:
        raise ValueError(f"cannot hold out {DM}.val_fraction={val_fraction} of only {n} record(s)")
    return sorted(perm[n_val:]), sorted(perm[:n_val])


class CycledBatchSampler(Sampler[list[int]]):
    """Exactly ``num_batches`` full batches, from successive seeded permutations of ``range(n)``.

    Each permutation is cut into ``n // (batch_size · world_size)`` full global batches (the remainder is
    dropped, so no batch repeats a record); permutations follow one another until ``num_batches`` have
    been yielded. Under data parallelism rank r takes the r-th slice of ``batch_size`` records of each
    global batch: ranks see disjoint prompts, and W processes × ``batch_size`` see the same prompts per
    step as one process × ``W·batch_size``. Batch k depends only on (seed, k), so a resumed run continues
    exactly where it stopped: set ``start`` to the number of batches already consumed.

    Args:
        n: number of records.
        batch_size: records per batch of THIS process.
        num_batches: batches to yield (one per PPO iteration).
        seed: seed of the permutations.
        start: batches already consumed (resume).
        rank: this process's global rank.
        world_size: number of processes.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        num_batches: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n < batch_size * world_size:
            raise ValueError(
                f"{DM}.batch_size ({batch_size}) × {world_size} process(es) exceeds the {n} training records"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} process(es)")
        self.n, self.batch_size, self.num_batches, self.seed = n, batch_size, num_batches, seed
        self.start, self.rank, self.world_size = start, rank, world_size

    def __len__(self) -> int:
        return self.num_batches  # Lightning counts a resumed epoch's batches from where it stopped

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        per_perm = self.n // global_batch
        perm_index, perm = -1, []
        for k in range(self.start, self.num_batches):
            if k // per_perm != perm_index:
                perm_index = k // per_perm
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + perm_index)
                perm = torch.randperm(self.n, generator=gen).tolist()
            first = (k % per_perm) * global_batch + self.rank * self.batch_size
            yield perm[first : first + self.batch_size]
