"""``studies/ref_split.py``: r_ref recovered from u, the split at r_ref, the gain decomposition, hack shares,
the matched-KL comparison, and the table of two synthetic job folders — against hand-computed values."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ref_split", ROOT / "studies" / "ref_split.py")
rs = importlib.util.module_from_spec(_spec)
sys.modules["ref_split"] = rs  # dataclasses look their module up
_spec.loader.exec_module(rs)

LOGSIG_1 = -0.31326168751822286  # log σ(1) = −log(1 + e^−1)
LOGSIG_M3 = -3.048587351573742  # log σ(−3) = −log(1 + e^3)


def logsigmoid(m: float) -> float:
    return -float(np.logaddexp(0.0, -m))


def test_margin_from_u_inverts_logsigmoid_by_hand() -> None:
    m = rs.margin_from_u(np.array([LOGSIG_1, LOGSIG_M3, 0.0]))
    assert m[:2] == pytest.approx([1.0, -3.0], abs=1e-12)
    assert m[2] == math.inf  # saturated: no margin to recover


@given(st.floats(-30, 30))
def test_margin_from_u_round_trip(m: float) -> None:
    assert rs.margin_from_u(np.array([logsigmoid(m)]))[0] == pytest.approx(m, abs=1e-9)


def test_rref_per_prompt_skips_saturated_rows_and_checks_agreement() -> None:
    # prompt 0: r_ref = 2 − 1 = 1 and −2 − (−3) = 1; prompt 1: u = 0 is skipped, 0.5 − 1 = −0.5
    pids = np.array([0, 0, 1, 1])
    r = np.array([2.0, -2.0, 40.0, 0.5])
    u = np.array([LOGSIG_1, LOGSIG_M3, 0.0, LOGSIG_1])
    assert rs.rref_per_prompt(pids, r, u) == pytest.approx({0: 1.0, 1: -0.5}, abs=1e-12)
    with pytest.raises(ValueError, match=r"prompt 0: r_ref recovered from its samples spans 1\.00e-03"):
        rs.rref_per_prompt(pids, r + np.array([0.0, 1e-3, 0.0, 0.0]), u)
    with pytest.raises(ValueError, match="prompt 1: no sample with u < 0"):
        rs.rref_per_prompt(pids, r, np.array([LOGSIG_1, LOGSIG_M3, 0.0, 0.0]))


def test_merge_rrefs_agrees_within_tol_and_names_both_jobs() -> None:
    merged = rs.merge_rrefs({"job/3": {0: 1.0, 1: 2.0}, "job/4": {0: 1.0 + 5e-5, 2: 3.0}})
    assert merged == {0: 1.0, 1: 2.0, 2: 3.0}  # the first job's value is kept
    with pytest.raises(ValueError, match=r"r_ref of prompt 0: 1\.000000 from job/3 but 1\.001000 from job/4"):
        rs.merge_rrefs({"job/3": {0: 1.0}, "job/4": {0: 1.001}})


def test_decompose_by_hand() -> None:
    # above: 2 + 0.5 = 2.5 → 2.5/4; below: −1 − 3 = −4 → −4/4; total −1.5/4
    up, down, total = rs.decompose(np.array([2.0, -1.0, 0.5, -3.0]), np.array([True, False, True, False]))
    assert (up, down, total) == pytest.approx((0.625, -1.0, -0.375))


@given(st.lists(st.tuples(st.floats(-10, 10), st.booleans()), min_size=1, max_size=40))
def test_decompose_parts_sum_to_the_mean(pairs: list[tuple[float, bool]]) -> None:
    diff, above = np.array([d for d, _ in pairs]), np.array([a for _, a in pairs])
    up, down, total = rs.decompose(diff, above)
    assert up + down == pytest.approx(total, abs=1e-9) and total == pytest.approx(diff.mean(), abs=1e-12)
    if not above.any():
        assert up == 0
    if above.all():
        assert down == 0


def test_hack_share_by_hand() -> None:
    gold, sft = np.array([1.0, 2.0, 3.0, 0.0]), np.array([2.0, 2.0, 1.0, 1.0])
    # masked samples 0, 1, 2: 1 < 2 yes, 2 < 2 no (a tie is not a hack), 3 < 1 no → 1/3
    assert rs.hack_share(gold, sft, np.array([True, True, True, False])) == pytest.approx(1 / 3)
    assert math.isnan(rs.hack_share(gold, sft, np.zeros(4, dtype=bool)))


RREF = {0: 1.0, 1: 0.0}
# prompt 0 (easy), r_ref 1; prompt 1 (hard), r_ref 0. (r, r_sft, gold, gold_sft, kl)
ROWS = [
    (0, "easy", 2.0, 0.5, 1.0, 2.0, 1.0),  # π above, SFT below; gold below SFT → a hack above r_ref
    (0, "easy", 0.0, 3.0, 0.0, 1.0, 3.0),  # π below, SFT above; worse than SFT
    (1, "hard", 1.0, -1.0, 3.0, 1.0, 2.0),  # π above, SFT below; better
    (1, "hard", -1.0, -2.0, 2.0, 2.0, 2.0),  # both below; a tie
]


def rows(u_of_ref: dict[int, float] | None = None) -> list[dict]:
    out = []
    for k, (pid, diff, r, r_sft, g, g_sft, kl) in enumerate(ROWS):
        row = {"step": 9, "prompt_id": pid, "sample": k % 2, "difficulty": diff, "risky": False, "kl": kl}
        row |= {"gold_helpful": g, "gold_helpful_sft": g_sft, "proxy_helpful": r, "proxy_helpful_sft": r_sft}
        if u_of_ref is not None:
            row["transformed_helpful"] = logsigmoid(r - u_of_ref[pid])
        out.append(row)
    return out


# split_stats(ROWS): above = rows 0, 2; SFT above = row 1. gold − gold_sft = [−1, −1, 2, 0]
EXPECTED_ALL = {
    "kl": 2.0,
    "share_above": 0.5,
    "share_above_sft": 0.25,
    "gold_above": 2.0,  # (1 + 3) / 2
    "gold_below": 1.0,  # (0 + 2) / 2
    "gold_sft_above": 1.0,
    "gold_sft_below": 5 / 3,  # (2 + 1 + 2) / 3
    "hack_above": 0.5,  # row 0 yes, row 2 no
    "hack_below": 0.5,  # row 1 yes, row 3 tie
    "gain": 0.0,
    "gain_above": 0.25,  # (−1 + 2) / 4
    "gain_below": -0.25,  # (−1 + 0) / 4
    "gain_per_above": 0.5,
    "gain_per_below": -0.5,
}


def test_split_stats_by_hand() -> None:
    got = rs.split_stats(rows(), RREF)
    assert got == pytest.approx(EXPECTED_ALL)
    easy = rs.split_stats([r for r in rows() if rs.in_group(r, "easy")], RREF)
    assert easy["share_above"] == 0.5 and easy["hack_above"] == 1.0
    assert (easy["gain_above"], easy["gain_below"], easy["gain"]) == pytest.approx((-0.5, -0.5, -1.0))
    assert rs.split_stats([], RREF) == {}


def cell(method: str, beta: float, by_seed: dict[int, dict[str, float]]) -> rs.Cell:
    metrics = dict.fromkeys(m for s in by_seed.values() for m in s)
    stats = {m: rs.mean_se([s[m] for s in by_seed.values()]) for m in metrics}
    return rs.Cell("ppo", method, beta, "all", stats, by_seed)


def test_paired_diff_compare_and_judge() -> None:
    a = cell("logsigmoid", 0.1, {0: {"hack_above": 0.30}, 1: {"hack_above": 0.32}, 2: {"hack_above": 0.28}})
    b = cell("raw", 0.1, {0: {"hack_above": 0.31}, 1: {"hack_above": 0.35}, 2: {"hack_above": 0.30}})
    # differences −0.01, −0.03, −0.02: mean −0.02, std 0.01, s.e. 0.01/√3 = 0.00577 → beyond 2 s.e.
    d = rs.paired_diff(a, b, "hack_above")
    assert d == pytest.approx((-0.02, 0.01 / math.sqrt(3)))
    assert rs.compare(d) == "lower"
    assert rs.compare((0.01, 0.005)) == "equal" and rs.compare((0.011, 0.005)) == "higher"
    assert rs.compare((0.01, math.nan)) == "unclear"
    assert rs.judge({"hack_above": "equal", "gain_above": "lower", "gain_below": "higher"}) == "consistent"
    assert rs.judge({"hack_above": "higher", "gain_above": "lower", "gain_below": "lower"}) == (
        "hacks not fewer, gain not shifted"
    )
    assert rs.judge({"hack_above": "lower", "gain_above": "lower", "gain_below": "higher"}) == (
        "fewer hacks, gain shifted"
    )
    assert rs.judge({"hack_above": "unclear", "gain_above": "lower", "gain_below": "higher"}) == "unclear"


def test_matched_kl_interpolates_raw_per_seed_and_drops_unbracketed_seeds() -> None:
    raws = [
        cell("raw", 0.5, {0: {"kl_all": 1.0, "hack_above": 0.2}, 1: {"kl_all": 1.0, "hack_above": 0.1}}),
        cell("raw", 0.1, {0: {"kl_all": 3.0, "hack_above": 0.4}, 1: {"kl_all": 3.0, "hack_above": 0.5}}),
    ]
    seeds = {0: {"kl_all": 1.5, "hack_above": 0.3}, 1: {"kl_all": 4.0, "hack_above": 0.9}}
    ls = cell("logsigmoid", 0.5, seeds)
    at = rs.matched_kl(ls, raws)
    assert list(at.by_seed) == [0]  # seed 1's KL 4 is outside the raw sweep's [1, 3]
    assert at.by_seed[0] == pytest.approx({"kl_all": 1.5, "hack_above": 0.25})  # 0.2 + (0.5 / 2) · 0.2
    assert rs.paired_diff(ls, at, "hack_above") == pytest.approx((0.05, math.nan), nan_ok=True)


def write_job(job: Path, transform: str, seed: int, data: list[dict], beta: float = 0.1) -> None:
    (job / ".hydra").mkdir(parents=True)
    cfg = {
        "seed": seed,
        "reward": {"helpful": {"path": None, "reference": {"statistic": "quantile", "q": 0.85}}},
        "transform": {"_target_": f"lit_rlhf.rewards.transforms.{transform}"},
        "task": {"name": "ppo", "module": {"kl_coef": beta}},
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job / "tensorboard").mkdir()
    (job / "tensorboard" / "gold_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))


def test_two_job_folders_table_rows(tmp_path: Path) -> None:
    """A raw job's rows are split at the r_ref recovered from its seed's log-sigmoid job; no TensorBoard."""
    root = tmp_path / "multirun"
    write_job(root / "0", "Identity", 0, rows())
    write_job(root / "1", "LogSigmoid", 0, rows(RREF))  # same rows, so the same numbers
    (root / "2" / ".hydra").mkdir(parents=True)  # a failed job: config only
    (root / "2" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    with pytest.warns(rs.SweepWarning, match=r"skipping .*2: no gold_eval\.jsonl"):
        cells = rs.analyse(root, tmp_path / "out")
    got = {(c.method, c.group): c for c in cells}
    assert list(got) == [(m, g) for g in rs.GROUPS for m in ("raw", "logsigmoid")]
    for method in ("raw", "logsigmoid"):
        assert {k: v for k, (v, _) in got[(method, "all")].stats.items()} == pytest.approx(
            EXPECTED_ALL | {"kl_all": 2.0}
        )
    assert got[("raw", "hard")].stats["hack_above"][0] == 0.0  # row 2: better than SFT
    md = (tmp_path / "out" / "ref_split.md").read_text()
    assert "| ppo | all | 0.1 | raw | 1 | 2.000 | 0.500 | 0.250 | 2.000 | 1.000 | 1.000 | 1.667 |" in md
    assert "| ppo | all | 0.1 | raw | 1 | 0.500 | 0.500 | 0.000 | 0.250 | -0.250 | 0.500 | -0.500 |" in md
    assert "| ppo | easy | 0.1 | raw | 1 | 1.000 | 1.000 | -1.000 | -0.500 | -0.500 | -1.000 | -1.000 |" in md
    # one seed: no s.e., so the generated verdict cannot judge
    assert "| ppo | logsigmoid | all | 0.1 | β 0.1 | 1 |" in md
    assert "equal β (3 (β, group) cells): unclear: 3" in md


def test_bad_inputs_fail_loudly(tmp_path: Path) -> None:
    root = tmp_path / "a"
    write_job(root / "0", "LogSigmoid", 0, rows(RREF))
    write_job(root / "1", "LogSigmoid", 0, rows({0: 1.0, 1: 0.01}), beta=0.5)  # disagrees on prompt 1
    with pytest.raises(ValueError, match=r"r_ref of prompt 1: 0\.000000 from .*0 but 0\.010000 from .*1"):
        rs.analyse(root, tmp_path / "out")
    root = tmp_path / "b"
    write_job(root / "0", "LogSigmoid", 0, rows(RREF))
    write_job(root / "1", "Identity", 1, rows())  # seed 1: no log-sigmoid job to recover r_ref from
    match = r"1: no r_ref for prompt\(s\) \[0, 1\]: no log-sigmoid job with seed 1 "
    with pytest.raises(ValueError, match=match):
        rs.analyse(root, tmp_path / "out")
    root = tmp_path / "c"
    data = rows()
    del data[2]["proxy_helpful_sft"]
    write_job(root / "0", "Identity", 0, data)
    with pytest.raises(ValueError, match=r"gold_eval\.jsonl:3: missing field 'proxy_helpful_sft'"):
        rs.analyse(root, tmp_path / "out")
    root = tmp_path / "d"
    write_job(root / "0", "LogSigmoid", 0, rows())  # a log-sigmoid job without u
    with pytest.raises(ValueError, match=r"gold_eval\.jsonl:1: missing field 'transformed_helpful'"):
        rs.analyse(root, tmp_path / "out")
