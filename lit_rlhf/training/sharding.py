"""Data-parallel shards of a policy-optimisation batch: which rows of the GLOBAL batch a process holds, and
which of them take part in each minibatch.

Under DDP, ``PromptDataModule`` gives rank r the r-th slice of each global batch (rank order = global row
order, as :func:`lit_rlhf.callbacks.distributed.gather_rows` gathers). So that W processes compute the
updates one process holding the whole batch would, every batch-wide choice is made over the global batch:
the minibatch permutation here (from a generator every process seeds alike), the whitening and the loss
normalisers in :mod:`lit_rlhf.rlhf` (with an all-reduce).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from lit_rlhf.rlhf.advantages import AllSum
from lit_rlhf.rlhf.estimators import ShardNorms, shard_norms
from lit_rlhf.rollout.decoding import row_seeds

ROLLOUT, MINIBATCHES = 0, 1  # keys of an iteration's random draws (with the run seed and the iteration)


class Shard(NamedTuple):
    """This process's rows of the global batch: rows ``offset … offset + size − 1`` of ``total``.

    Attributes:
        offset: global index of this process's first row (the rows of the lower ranks before it).
        size: rows on this process.
        total: rows of the global batch (summed over processes).
        world_size: processes.
    """

    offset: int
    size: int
    total: int
    world_size: int = 1

    @property
    def rows(self) -> range:
        """Global indices of this process's rows."""
        return range(self.offset, self.offset + self.size)


def shard_of(sizes: list[int], rank: int) -> Shard:
    """The :class:`Shard` of ``rank`` when rank k holds ``sizes[k]`` consecutive rows of the global batch."""
    return Shard(sum(sizes[:rank]), sizes[rank], sum(sizes), len(sizes))


def minibatch_rows(
    shard: Shard, num_minibatches: int, epochs: int, generator: torch.Generator, group: int = 1
) -> Iterator[Tensor]:
    """``epochs`` passes of ``num_minibatches`` minibatches over the GLOBAL batch; this shard's part of each.

    Every pass is a permutation of the ``shard.total`` global rows drawn from ``generator`` (seeded alike on
    every process), cut into minibatches of ``ceil(total / num_minibatches)`` rows; each process keeps the
    rows it holds. With ``group`` > 1 (and dividing the total) the permutation moves whole groups of
    ``group`` consecutive rows (a prompt's G samples), so a minibatch holds whole groups where its size
    allows and a shared-prefix forward computes fewer prompts (verl counts its minibatches in prompts).
    The union over processes of the k-th yield is the k-th minibatch one process holding the whole batch
    takes, and every process yields the same number of times (one per minibatch).

    Yields:
        Local indices ``(b,)`` (into this shard's rows, in the permutation's order); ``b`` may be 0 on a
        process none of whose rows fell in the minibatch.
    """
    if num_minibatches < 1:
        raise ValueError(f"task.module.num_minibatches must be >= 1, got {num_minibatches}")
    size = -(-shard.total // num_minibatches)
    grouped = group > 1 and shard.total % group == 0
    for _ in range(epochs):
        if grouped:
            groups = torch.randperm(shard.total // group, generator=generator)  # (total / group,)
            order = (groups[:, None] * group + torch.arange(group)).flatten()
        else:
            order = torch.randperm(shard.total, generator=generator)
        for mb in order.split(size):
            mine = mb[(mb >= shard.offset) & (mb < shard.offset + shard.size)]  # (b,)
            yield mine - shard.offset


class DataParallel:
    """What :class:`~lit_rlhf.tasks.policy.PolicyModule` needs to treat its batch as a global batch's shard.

    A mixin of a LightningModule with ``seed``, ``iteration``, ``ppo_epochs``, ``num_minibatches``,
    ``samples_per_prompt``, ``minibatch_by_group`` (optional) and ``_row_seeds``; outside a Trainer, or with
    one process, the batch is the global batch.
    """

    @contextmanager
    def seeded_rows(self, seeds: Tensor) -> Iterator[None]:
        """:meth:`generate` (and :meth:`generate_reference`) calls in the block sample row i of their batch
        from ``seeds[i]`` (:func:`~lit_rlhf.rollout.decoding.row_seeds`), whatever else the batch holds."""
        saved, self._row_seeds = self._row_seeds, seeds
        try:
            yield
        finally:
            self._row_seeds = saved

    def world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def shard(self, B: int) -> Shard:
        """This process's B rows within the global batch (one all-gather of the row counts under DDP)."""
        if self.world_size() == 1:
            return Shard(0, B, B)
        sizes = self.trainer.strategy.all_gather(torch.tensor(B, device=self.device)).view(-1)  # (W,)
        return shard_of([int(n) for n in sizes], self.trainer.global_rank)

    def all_sum(self) -> AllSum | None:
        """Sum over the processes (an all-reduce) for global batch statistics; ``None`` in one process (the
        batch is global: the statistics keep their single-process arithmetic)."""
        if self.world_size() == 1:
            return None
        strategy = self.trainer.strategy
        return lambda t: strategy.reduce(t.detach().clone(), reduce_op="sum")  # reduce is in place

    def shard_norms(self, m: Tensor) -> ShardNorms | None:
        """Global row and token counts of the minibatch ``m`` (b, R) over the world size; ``None`` in one
        process (the loss functions then use the minibatch's own counts)."""
        all_sum = self.all_sum()
        return None if all_sum is None else shard_norms(m, all_sum, self.world_size())

    def minibatches(self, mask: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """``ppo_epochs`` shuffled passes of ``num_minibatches`` minibatches over the GLOBAL batch.

        Args:
            mask: (B, R) this process's response mask (float).

        Yields:
            ``(idx (b,), m (b, R))``: this process's rows of the minibatch and their mask. A process none
            of whose rows fell in the minibatch gets its row 0 with a zero mask: it still takes part in the
            gradient all-reduce, with zero weight.
        """
        B = mask.shape[0]
        key = row_seeds((self.seed, self.iteration, MINIBATCHES), [0])
        gen = torch.Generator().manual_seed(int(key[0]))  # the same permutation on every process
        group = self.samples_per_prompt if getattr(self, "minibatch_by_group", False) else 1
        for idx in minibatch_rows(self.shard(B), self.num_minibatches, self.ppo_epochs, gen, group):
            idx = idx.to(mask.device)
            if len(idx):
                yield idx, mask[idx]
            else:
                yield idx.new_zeros(1), torch.zeros_like(mask[:1])
