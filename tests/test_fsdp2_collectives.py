"""The collective call paths of a sharded policy run, checked in a real 2-process gloo group with FSDP2
(every weight split over the ranks): sampling with ragged rows per rank, reward scores through the sharded
backbone and head, and the r_ref cache key — the same on every rank, the one-process key, and another key
for other weights. End to end: ``test_scale_fsdp2_cpu.py``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.multiprocessing as mp
from gloo_fsdp import compute, models, worker


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    tmp = tmp_path_factory.mktemp("fsdp2")
    try:
        mp.spawn(worker, args=(str(tmp / "store"), str(tmp / "out")), nprocs=2, join=True)
    except mp.ProcessExitedException as err:
        # once in three full-suite runs a rank aborted ("terminate called without an active exception",
        # SIGABRT; alone the file passes); a rank that saved its results before dying died in gloo's
        # teardown, which these tests do not check; one that had not fails here
        if not all((tmp / f"out.{r}").is_file() for r in (0, 1)):
            raise
        warnings.warn(f"a rank died after writing its results: {err}", stacklevel=1)
    return {r: torch.load(tmp / f"out.{r}", weights_only=True) for r in (0, 1)}


@pytest.mark.slow  # two spawned gloo processes
def test_cache_keys_are_equal_on_every_rank_and_follow_the_weights(two_ranks) -> None:
    alone = compute(*models(), slice(0, 4))
    for rank in (0, 1):
        assert two_ranks[rank]["same"]["lm"] == alone["lm"]  # the whole weights' key, not a shard's
        assert two_ranks[rank]["same"]["rm"] == alone["rm"]
        assert two_ranks[rank]["other"]["lm"] != alone["lm"]  # other weights, another key
    assert two_ranks[0]["other"]["lm"] == two_ranks[1]["other"]["lm"]


@pytest.mark.slow  # two spawned gloo processes
def test_sharded_sampling_and_scoring_match_one_process(two_ranks) -> None:
    alone = compute(*models(), slice(0, 4))
    responses = two_ranks[0]["same"]["responses"] + two_ranks[1]["same"]["responses"]
    assert responses == alone["responses"]
    scores = torch.cat([two_ranks[0]["same"]["scores"], two_ranks[1]["same"]["scores"]])
    torch.testing.assert_close(scores, alone["scores"], rtol=1e-5, atol=1e-6)
