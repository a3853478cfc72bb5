"""Reward functions beside reward models: the TRL-style call, None = not applicable (left out of the term,
the aggregate and the statistics, not a zero), ``u = log max(p, ε)`` for a probability, errors that name
the function and the row, and the shipped ``word_limit`` rule (hand-computed values)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lit_rlhf.callbacks import RewardTransformCallback
from lit_rlhf.data.jsonl import PromptRecord
from lit_rlhf.rewards.aggregators import Min, Sum, WeightedSum, aggregate
from lit_rlhf.rewards.functions import word_limit
from lit_rlhf.rewards.reference import ReferenceTable
from lit_rlhf.rewards.reward_function import (
    LogProbability,
    RewardFunction,
    RewardFunctionError,
    function_scores,
    log_probability,
)
from lit_rlhf.rewards.transforms import LogSigmoid

NAN = float("nan")


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def call(fn: RewardFunction, completions: list[str], **columns) -> torch.Tensor:
    n = len(completions)
    return fn(["q"] * n, completions, [[1, 2]] * n, columns)


# ------------------------------------------------------------------ the shipped rule
def test_word_limit_is_one_within_the_limit_and_n_over_words_beyond():
    chat = [{"role": "assistant", "content": "a b c d"}]
    out = word_limit(["q"] * 4, ["a b", "a b c", "a b c d e f", chat], max_words=3)
    assert out == [1.0, 1.0, 0.5, 0.75]
    # a per-row limit from the dataset's column; None = the rule does not apply to that row
    columns = {"max_words": [1, None, 5], "answer": ["x", "y", "z"]}  # a dataset column overrides the limit
    assert functools.partial(word_limit, max_words=9)(["q"] * 3, ["a b c", "a b c", "a"], **columns) == [
        1 / 3, None, 1.0]  # fmt: skip


@given(st.integers(1, 50), st.integers(1, 50), st.integers(1, 50))
def test_word_limit_term_falls_with_every_word_past_the_limit(limit: int, n: int, extra: int):
    """The rule's term u = log max(p, ε) never rises with length and falls past the limit."""
    u = LogProbability(1e-4)
    p = torch.tensor(word_limit(["q"] * 2, [" ".join("w" * n), " ".join("w" * (n + extra))], max_words=limit))
    short, long = u(p).tolist()
    assert long <= short
    if n + extra > limit:
        assert long < short or short < 0


# ------------------------------------------------------------------ probability kind
def test_log_probability_floors_at_eps_and_its_weight_is_one_over_p():
    p = torch.tensor([1.0, 0.5, 1e-6, 0.0])
    floor = math.log(1e-4)
    torch.testing.assert_close(log_probability(p, 1e-4), torch.tensor([0.0, math.log(0.5), floor, floor]))
    torch.testing.assert_close(LogProbability(1e-4).weight(p), torch.tensor([1.0, 2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"reward.<name>.eps must be in \(0, 1\)"):
        LogProbability(0.0)


# ------------------------------------------------------------------ the call and its errors
def test_a_function_is_called_trl_style_and_none_becomes_nan():
    seen = {}

    def fn(prompts, completions, completion_ids, **columns):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, columns=columns)
        return [0.5, None]

    rf = RewardFunction("rule", fn, kind="probability")
    out = rf(["p1", "p2"], ["a", "b"], [[1], [2, 3]], {"x": [1, 2]})
    assert out[0] == 0.5 and math.isnan(out[1])
    assert seen == {"prompts": ["p1", "p2"], "completions": ["a", "b"], "ids": [[1], [2, 3]],
                    "columns": {"x": [1, 2]}}  # fmt: skip


def boom(prompts, completions, **_):
    if any("bad" in c for c in completions):
        raise KeyError("no answer")
    return [1.0] * len(completions)


@pytest.mark.parametrize(
    ("fn", "kind", "message"),
    [
        (boom, "score", r"reward function 'rule' \(.*:boom\) raised KeyError: 'no answer' on row 1 of the "
                        r"batch \(prompt id 11, completion 'bad'\)"),
        (lambda **kw: [1.0, NAN], "score", r"returned nan on row 1 .*; return None for 'not applicable'"),
        (lambda **kw: [1.0], "score", r"returned 1 values for a batch of 2 rollouts"),
        (lambda **kw: None, "score", r"returned NoneType for a batch of 2 rollouts"),
        (lambda **kw: [1.0, "x"], "score", r"returned str on row 1"),
        (lambda **kw: [1.0, 1.5], "probability",
         r"returned 1.5 on row 1 .* reward.rule.kind=probability needs values in \[0, 1\]"),
    ],
)  # fmt: skip
def test_a_broken_function_stops_with_one_line_naming_it_and_the_row(fn, kind, message):
    rf = RewardFunction("rule", fn, kind=kind)
    with pytest.raises(RewardFunctionError, match=message) as info:
        rf(["p", "p"], ["good", "bad"], [[1], [2]], {}, rows=[10, 11])
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)  # a user error: exit 2


def test_functions_are_named_by_import_path_or_target():
    rf = RewardFunction("w", "lit_rlhf.rewards.functions:word_limit", kind="probability")
    assert call(rf, ["a b c"]).tolist() == [1.0]
    target = {"_target_": "lit_rlhf.rewards.functions.word_limit", "_partial_": True, "max_words": 2}
    spec = {"function": target, "kind": "probability", "eps": 1e-3}
    rf = RewardFunction.from_config("w", spec)
    assert call(rf, ["a b c d"]).tolist() == [0.5] and rf.transform.eps == 1e-3
    assert "max_words" in rf.fingerprint() and "2" in rf.fingerprint()
    with pytest.raises(ValueError, match=r"reward.w.function=nope.mod:fn: cannot import it"):
        RewardFunction("w", "nope.mod:fn")
    with pytest.raises(ValueError, match=r"reward.w.kind must be one of \('logit', 'probability', 'score'\)"):
        RewardFunction("w", word_limit, kind="prob")
    with pytest.raises(ValueError, match=r"reward.w has unknown keys \['max_words'\]"):
        RewardFunction.from_config("w", {"function": "x:y", "max_words": 3})


def test_function_scores_decode_responses_and_pass_records():
    class Tok:
        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(f"w{t}" for t in row) for row in ids]

    got = {}

    def fn(prompts, completions, completion_ids, **columns):
        got.update(prompts=prompts, completions=completions, ids=completion_ids, columns=columns)
        return [float(len(c)) for c in completion_ids]

    records = {
        5: PromptRecord(5, "hi", {"answer": 1}),
        6: PromptRecord(6, [{"role": "user", "content": "y"}]),
    }
    ids = torch.tensor([[0, 9, 3, 4, 0], [9, 9, 7, 0, 0]])  # P = 2, then the responses
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    out = function_scores({"n": RewardFunction("n", fn)}, Tok(), records, ids, mask, torch.tensor([5, 6]), 2)
    assert out.tolist() == [[2.0], [1.0]]
    assert got["ids"] == [[3, 4], [7]] and got["columns"] == {"answer": [1, None]}
    assert got["completions"] == ["w3 w4", [{"role": "assistant", "content": "w7"}]]  # conversational as TRL


# ------------------------------------------------------------------ None is left out, not a zero
def test_aggregate_leaves_out_what_does_not_apply():
    u = torch.tensor([[-1.0, -2.0], [-3.0, NAN], [NAN, NAN]])
    names = ["rm", "rule"]
    assert aggregate(Sum(), u, names).tolist() == [-3.0, -3.0, 0.0]
    assert aggregate(Min(), u, names).tolist() == [-2.0, -3.0, 0.0]
    assert aggregate(WeightedSum({"rm": 2.0, "rule": 10.0}), u, names).tolist() == [-22.0, -6.0, 0.0]
    with pytest.raises(ValueError, match=r"missing \['rule'\]"):
        aggregate(WeightedSum({"rm": 1.0}), u, names)  # a missing weight is still an error


class FakeModule:
    reward_names = ["helpful", "rule"]
    reward_functions = {"rule": RewardFunction("rule", word_limit, kind="probability", eps=1e-4)}
    logger = None
    _trainer = None

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_dict(self, metrics, batch_size=None) -> None:
        self.logged |= {k: float(v) for k, v in metrics.items()}


def test_a_none_reward_is_excluded_from_its_term_and_statistics():
    cb = RewardTransformCallback(transform=LogSigmoid(), aggregator=Sum(), histogram_every=0)
    module = FakeModule()
    cb.setup(None, module, "fit")  # type: ignore[arg-type]
    assert isinstance(cb.transforms["rule"], LogProbability)
    assert isinstance(cb.transforms["helpful"], LogSigmoid)
    cb.table = ReferenceTable([7], {"helpful": torch.tensor([1.0]), "rule": torch.tensor([0.9])})
    scores = torch.tensor([[3.0, 0.5], [1.0, NAN], [1.0, 1.0]])  # row 1: the rule does not apply
    reward = cb(scores, torch.tensor([7, 7, 7]), module)
    expected = [math.log(sig(2)) + math.log(0.5), math.log(sig(0)), math.log(sig(0)) + 0.0]
    torch.testing.assert_close(reward, torch.tensor(expected))  # row 1: no rule term at all
    log = module.logged
    assert math.isclose(log["reward/rule_raw"], 0.75)  # mean of 0.5 and 1.0: the None is not a 0
    assert math.isclose(log["reward/rule_transformed"], math.log(0.5) / 2, rel_tol=1e-6)
    assert math.isclose(log["reward/rule_applicable"], 2 / 3, rel_tol=1e-6)
    assert math.isclose(log["reward/rule_above_ref"], 0.5)  # 1.0 > 0.9; 0.5 is not
    assert (
        math.isclose(log["reward/helpful_raw"], 5 / 3, rel_tol=1e-6)
        and "reward/helpful_applicable" not in log
    )
    # fewer words, higher term: the rule's term moves the way the rule says
    p = torch.tensor(word_limit(["q"] * 3, ["a b c d e f g h", "a b c d", "a b"], max_words=2))
    u, _ = cb.transformed(torch.stack([torch.zeros(3), p], -1), torch.tensor([7, 7, 7]))
    assert u[0, 1] < u[1, 1] < u[2, 1] == 0.0


def test_partial_functions_fingerprint_their_arguments():
    a = RewardFunction("w", functools.partial(word_limit, max_words=3), kind="probability")
    b = RewardFunction("w", functools.partial(word_limit, max_words=4), kind="probability")
    assert a.fingerprint() != b.fingerprint()
    again = RewardFunction("w", functools.partial(word_limit, max_words=3), kind="probability")
    assert a.fingerprint() == again.fingerprint()


def test_the_shipped_presets_build_a_reward_model_and_a_probability_rule(tmp_path):
    from conftest import hydra_cfg  # noqa: PLC0415
    from lit_rlhf.rewards.reward_function import is_function_spec  # noqa: PLC0415

    overrides = [
        "reward=helpful_word_limit",
        "+transform=logsigmoid",
        "reward.word_limit.function.max_words=2",
    ]
    with hydra_cfg(tmp_path, overrides) as cfg:
        assert list(cfg.reward) == ["helpful", "word_limit"] and not is_function_spec(cfg.reward.helpful)
        rf = RewardFunction.from_config("word_limit", cfg.reward.word_limit)
        assert rf.kind == "probability" and call(rf, ["a b c d"]).tolist() == [0.5]
