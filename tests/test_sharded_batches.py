"""A batch sharded over data-parallel processes computes what one process holding all of it computes.

The pieces (`lit_rlhf.rollout.decoding`, `lit_rlhf.training.sharding`, the `all_sum` / `ShardNorms` arguments
of `lit_rlhf.rlhf`), each checked against the single-process computation: per-row sampling seeds, exact
Gumbel-max sampling, the global minibatch permutation, and — in a real 2-process gloo group — global
whitening and losses whose DDP gradient average is the gradient of the whole minibatch.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from gloo_shards import ROWS, losses, shards, worker
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_hf import make_model_folder
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_rlhf.rlhf import masked_whiten
from lit_rlhf.rlhf.estimators import LOSS_AGGS, reinforce_pp_advantages
from lit_rlhf.rollout.decoding import GumbelMax, gumbel_decoding, row_seeds
from lit_rlhf.rollout.rollout import (
    eos_token_ids,
    generate,
    pinned_generation,
    sampling_config,
    token_logprobs,
)
from lit_rlhf.training.sharding import DataParallel, Shard, minibatch_rows, shard_of


# ------------------------------------------------------------------ per-row seeds and Gumbel-max
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=12, unique=True), st.data())
def test_a_rows_seed_does_not_depend_on_the_other_rows(rows: list[int], data) -> None:
    some = data.draw(st.lists(st.sampled_from(rows), min_size=1, unique=True))
    seeds = dict(zip(rows, row_seeds((7, 3, 0), rows).tolist()))
    assert row_seeds((7, 3, 0), some).tolist() == [seeds[r] for r in some]
    assert all(s >= 0 for s in seeds.values())
    assert len(set(seeds.values())) == len(rows)  # distinct rows, distinct streams
    other = row_seeds((7, 4, 0), rows).tolist()  # the next iteration: other streams
    assert not set(other) & set(seeds.values())


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [(1.0, [0.1, 0.2, 0.3, 0.4]), (0.5, [1 / 30, 4 / 30, 9 / 30, 16 / 30])],  # ∝ p^(1/T) for z = log p
)
def test_gumbel_max_draws_from_softmax_over_temperature(temperature: float, expected: list[float]) -> None:
    N = 20_000
    z = torch.tensor([0.1, 0.2, 0.3, 0.4]).log().expand(N, 4)  # (N, V): logits log p
    picks = GumbelMax(temperature, row_seeds((0,), range(N)))(None, z).argmax(-1)  # (N,)
    freq = torch.bincount(picks, minlength=4).double() / N
    # binomial std is <= sqrt(0.25 / N) = 0.0035: 4.3 std; the seeds are fixed, so this never flakes
    torch.testing.assert_close(freq, torch.tensor(expected, dtype=torch.float64), atol=0.015, rtol=0)


def test_gumbel_max_row_streams_advance_one_step_per_call() -> None:
    seeds = row_seeds((1,), [0, 1])
    a, b = GumbelMax(1.0, seeds), GumbelMax(1.0, seeds[1:])
    first, second = a.noise(5, torch.device("cpu")), a.noise(5, torch.device("cpu"))
    torch.testing.assert_close(b.noise(5, torch.device("cpu"))[0], first[1], rtol=0, atol=0)
    torch.testing.assert_close(b.noise(5, torch.device("cpu"))[0], second[1], rtol=0, atol=0)
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="2 row seeds for 3 rows"):
        a(None, torch.zeros(3, 5))


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory):
    """A tiny ChatML Llama (pad = eos) whose generation_config.json ships processors that must not act."""
    shipped = {"do_sample": True, "repetition_penalty": 3.0, "no_repeat_ngram_size": 1, "top_k": 5}
    folder = make_model_folder("llama", tmp_path_factory.mktemp("llama") / "m", generation_config=shipped)
    tok = AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), tok


def left_padded(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tok(t).input_ids for t in texts]
    P = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


PROMPTS = ["How do I boil an egg?", "Paris", "Tell me a joke about cats, please, a long one.", "soup"]


def test_a_rows_response_depends_on_its_seed_not_on_its_batch(llama) -> None:
    """The response to a prompt is the same in a batch of 4, alone with other padding, or reordered; only
    its seed changes it. This is what makes DDP ranks sample what one process would."""
    model, tok = llama
    config = sampling_config(tok, eos_token_ids(tok, [model]), max_new_tokens=8, temperature=0.8)
    seeds = row_seeds((0, 5, 0), range(4))

    def responses(order: list[int], seeds_: torch.Tensor) -> list[list[int]]:
        ids, mask = left_padded(tok, [PROMPTS[i] for i in order])
        seq, rmask, _ = generate(model, ids, mask, config, tok.pad_token_id, seeds=seeds_)
        return [row[m.bool()].tolist() for row, m in zip(seq[:, ids.shape[1] :], rmask)]

    full = responses([0, 1, 2, 3], seeds)
    assert responses([3, 1], seeds[[3, 1]]) == [full[3], full[1]]  # another batch, another padding
    assert responses([2], seeds[[2]]) == [full[2]]
    assert responses([0, 1, 2, 3], row_seeds((0, 6, 0), range(4))) != full  # the seed matters
    with pytest.raises(ValueError, match="seeds for 4 prompts"):
        responses([0, 1, 2, 3], seeds[:2])


def test_our_decoding_is_softmax_over_temperature_and_nothing_else(llama) -> None:
    """What rollouts run (greedy decoding of GumbelMax's scores, pinned config): the processed scores are
    exactly logits / T + the rows' Gumbel noise (the checkpoint's repetition penalty, no-repeat n-grams and
    top-k do not act), the token is their argmax, and PPO's log-probs are log softmax(logits / T) of it.
    The same guarantee tests/test_real_models.py checks for transformers' multinomial path."""
    model, tok = llama
    T = 0.7
    config = sampling_config(tok, eos_token_ids(tok, [model]), max_new_tokens=6, temperature=T)
    ids, mask = left_padded(tok, PROMPTS)
    seeds = row_seeds((3,), range(4))
    greedy, processors = gumbel_decoding(config, seeds)
    greedy.return_dict_in_generate, greedy.output_scores, greedy.output_logits = True, True, True
    with pinned_generation(model):
        out = model.generate(
            input_ids=ids, attention_mask=mask, generation_config=greedy, logits_processor=processors
        )
    replay = GumbelMax(T, seeds)
    P = ids.shape[1]
    for t, (scores, logits) in enumerate(zip(out.scores, out.logits)):
        noise = replay.noise(logits.shape[-1], logits.device).float()  # (B, V)
        torch.testing.assert_close(scores, logits / T + noise, msg=f"step {t}: another processor acted")
        live = out.sequences[:, P + t] != tok.pad_token_id  # rows that had not ended yet
        assert torch.equal(scores.argmax(-1)[live], out.sequences[live, P + t])
    seq = out.sequences
    with torch.no_grad():
        ours = token_logprobs(model, seq, torch.cat([mask, torch.ones_like(seq[:, P:])], 1), P, T)  # (B, R)
    sampled = torch.stack(
        [
            torch.log_softmax(lg / T, -1).gather(-1, seq[:, P + t, None])[:, 0]
            for t, lg in enumerate(out.logits)
        ],
        1,
    )
    torch.testing.assert_close(ours[:, :1], sampled[:, :1], rtol=1e-4, atol=1e-4)  # before any EOS
    assert model.generation_config.repetition_penalty == 3.0  # the checkpoint's config is only lent back


# ------------------------------------------------------------------ minibatches of the global batch
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=4), st.integers(1, 4), st.integers(0, 99))
def test_shards_of_each_minibatch_are_the_one_process_minibatch(sizes: list[int], k: int, seed: int) -> None:
    one = Shard(0, sum(sizes), sum(sizes))
    expected = list(minibatch_rows(one, k, 2, torch.Generator().manual_seed(seed)))
    parts = []
    for rank in range(len(sizes)):
        shard = shard_of(sizes, rank)
        parts.append(
            [shard.offset + i for i in minibatch_rows(shard, k, 2, torch.Generator().manual_seed(seed))]
        )
    assert all(len(p) == len(expected) for p in parts)  # every process takes part in every minibatch
    for m, mb in enumerate(expected):
        got = torch.cat([p[m] for p in parts])
        assert sorted(got.tolist()) == sorted(mb.tolist())
    assert sorted(torch.cat(expected[: len(expected) // 2]).tolist()) == list(range(sum(sizes)))  # one epoch


class FakeRank(DataParallel):
    """The data-parallel part of a PolicyModule on rank 1 of 2 (rank 0 holds 5 rows), without a Trainer."""

    seed, iteration, ppo_epochs, num_minibatches, _row_seeds = 0, 3, 2, 3, None
    device = torch.device("cpu")

    def __init__(self, sizes: list[int], rank: int) -> None:
        gather = lambda t: torch.tensor(sizes)  # noqa: E731  (the all-gather of the row counts)
        strategy = SimpleNamespace(all_gather=gather)
        self.trainer = self._trainer = SimpleNamespace(
            world_size=len(sizes), global_rank=rank, strategy=strategy
        )


def test_a_rank_without_rows_in_a_minibatch_still_takes_part_with_zero_weight() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # rank 1's single row
    got = list(FakeRank([5, 1], rank=1).minibatches(mask))
    assert len(got) == 2 * 3  # every minibatch of both epochs: the gradient all-reduce needs every rank
    real = [m for idx, m in got if m.any()]
    assert len(real) == 2 and all(torch.equal(m, mask) for m in real)  # its row, once per epoch
    assert all(idx.tolist() == [0] for idx, _ in got)  # a zero-mask stand-in row elsewhere
    mine = [i for i, (_, m) in enumerate(got) if m.any()]
    # where rank 1's global row 5 falls in the one-process minibatches of the same iteration
    alone = list(FakeRank([6], rank=0).minibatches(torch.ones(6, 3)))
    assert [i for i, (idx, _) in enumerate(alone) if 5 in idx.tolist()] == mine


def test_shard_of_ranks() -> None:
    assert shard_of([3, 5, 2], 1) == Shard(3, 5, 10, 3)
    assert list(shard_of([3, 5, 2], 2).rows) == [8, 9]


# ------------------------------------------------------------------ a real 2-process gloo group
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(worker, args=(str(tmp / "store"), str(tmp / "out")), nprocs=2, join=True)
    return {r: torch.load(tmp / f"out.{r}", weights_only=True) for r in (0, 1)}


@pytest.mark.slow  # two spawned gloo processes
def test_whitening_over_two_processes_is_the_global_whitening(two_ranks) -> None:
    d = shards()
    for key, one in (
        ("whiten", masked_whiten(d["x"], d["mask"])),
        ("reinforce_pp", reinforce_pp_advantages(d["x"], d["mask"], 1.0)),
    ):
        got = torch.cat([two_ranks[0][key], two_ranks[1][key]])
        torch.testing.assert_close(got, one, rtol=1e-5, atol=1e-6)
    # control: whitening each shard on its own is another result (rank 0's two rows have 3 tokens)
    alone = torch.cat([masked_whiten(d["x"][s], d["mask"][s]) for s in ROWS.values()])
    assert (alone - masked_whiten(d["x"], d["mask"])).abs().max() > 0.1


@pytest.mark.slow  # two spawned gloo processes
@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_ddp_average_of_shard_losses_is_the_global_minibatch_loss(two_ranks, agg: str) -> None:
    """Mean over ranks of each loss (and, row by row, of the gradient that DDP averages) equals the loss of
    the 6-row minibatch in one process, for every aggregation, although the ranks hold 3 and 18 tokens."""
    one = losses(shards(), None, agg)
    for k in ("pg", "kl", "ppo", "vf", "approx_kl"):
        for rank in (0, 1):
            torch.testing.assert_close(two_ranks[rank][f"{agg}/{k}"], one[k], rtol=1e-5, atol=1e-7, msg=k)
    for k in ("dlp", "dv"):  # each rank's gradient on its rows, divided by 2 (DDP's average): the global one
        got = torch.cat([two_ranks[0][f"{agg}/{k}"], two_ranks[1][f"{agg}/{k}"]]) / 2
        torch.testing.assert_close(got, one[k], rtol=1e-5, atol=1e-7, msg=k)
    # control: what the ranks computed before, the mean of per-rank losses, is not the global loss
    per_rank = [losses({k: v[s] for k, v in shards().items()}, None, agg) for s in ROWS.values()]
    assert not math.isclose(
        float(per_rank[0]["ppo"].detach() + per_rank[1]["ppo"].detach()) / 2,
        float(one["ppo"].detach()),
        rel_tol=1e-3,
    )


@pytest.mark.slow  # two spawned gloo processes
@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_a_rank_holding_only_a_stand_in_row_leaves_the_global_minibatch_loss_unchanged(
    two_ranks, agg: str
) -> None:
    """A minibatch whose rows all sit on rank 1: rank 0 takes part with a zero-mask stand-in row, which
    must not count as a response in the global row count (seq_mean_token_mean's and Dr. GRPO's
    normaliser B) — the losses and gradients are those of the 4-row minibatch in one process."""
    one = losses({k: v[ROWS[1]] for k, v in shards().items()}, None, agg)
    for k in ("pg", "kl", "ppo", "vf", "approx_kl"):
        for rank in (0, 1):
            got = two_ranks[rank][f"empty/{agg}/{k}"]
            torch.testing.assert_close(got, one[k], rtol=1e-5, atol=1e-7, msg=f"{k} on rank {rank}")
    for k in ("dlp", "dv"):
        torch.testing.assert_close(two_ranks[1][f"empty/{agg}/{k}"] / 2, one[k], rtol=1e-5, atol=1e-7, msg=k)
        assert not two_ranks[0][f"empty/{agg}/{k}"].any()  # the stand-in row gets no gradient


@pytest.mark.parametrize("world", [1, 2])
def test_group_minibatches_hold_whole_groups(world: int) -> None:
    """With group=G each minibatch is whole groups of G consecutive global rows (8 rows, G=4, two
    minibatches: one group each), the union over processes is one process's minibatch, and every row is
    used once per epoch; a group that does not divide the total falls back to the row permutation."""
    one = Shard(0, 8, 8)
    expected = list(minibatch_rows(one, 2, 3, torch.Generator().manual_seed(5), group=4))
    assert len(expected) == 6
    for mb in expected:
        assert sorted(mb.tolist()) in ([0, 1, 2, 3], [4, 5, 6, 7])
    for epoch in range(3):
        assert sorted(torch.cat(expected[2 * epoch : 2 * epoch + 2]).tolist()) == list(range(8))
    shards = [shard_of([8 // world] * world, r) for r in range(world)]
    per_rank = [
        [s.offset + i for i in minibatch_rows(s, 2, 3, torch.Generator().manual_seed(5), group=4)]
        for s in shards
    ]
    for k, mb in enumerate(expected):
        assert sorted(torch.cat([rank[k] for rank in per_rank]).tolist()) == sorted(mb.tolist())
    rows = list(minibatch_rows(Shard(0, 6, 6), 2, 1, torch.Generator().manual_seed(5), group=4))
    assert sorted(torch.cat(rows).tolist()) == list(range(6))  # 4 does not divide 6: rows, as before


def test_a_policy_module_cuts_its_minibatches_from_whole_groups_when_asked() -> None:
    """``task.module.minibatch_by_group`` reaches :meth:`DataParallel.minibatches` (one process)."""

    class OneRank(DataParallel):
        seed, iteration, ppo_epochs, num_minibatches, _row_seeds, _trainer = 0, 3, 2, 2, None, None
        samples_per_prompt, device = 4, torch.device("cpu")

    mask = torch.ones(8, 3)
    module = OneRank()
    module.minibatch_by_group = True
    for idx, _ in module.minibatches(mask):
        assert sorted(idx.tolist()) in ([0, 1, 2, 3], [4, 5, 6, 7])
    module.minibatch_by_group = False  # random rows: some minibatch mixes the two groups
    mixed = [sorted(idx.tolist()) not in ([0, 1, 2, 3], [4, 5, 6, 7]) for idx, _ in module.minibatches(mask)]
    assert any(mixed)
