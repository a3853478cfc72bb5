"""studies/sweep_runs.py: a sweep archived to one gzipped JSON-lines file reads back as the same analysis."""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import pytest
from test_analysis import GAINS, sweep, write_job

sweep_runs = sys.modules["sweep_runs"]  # what analyze_sweep (loaded by test_analysis) imports


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "study" / "single"
    for num, (transform, beta, seed) in enumerate(
        [("identity", 0.05, 0), ("identity", 0.05, 1), ("logsigmoid", 0.1, 0), ("logsigmoid", 0.1, 1)]
    ):
        write_job(root / str(num), transform, beta, seed)
    return root


def test_per_prompt_rows_average_each_prompts_samples_and_drop_texts() -> None:
    rows = [
        {"prompt_id": 3, "sample": 0, "prompt": "p", "gold_helpful": 2.0, "kl": 1.0, "difficulty": "hard"},
        {"prompt_id": 3, "sample": 1, "prompt": "p", "gold_helpful": 5.0, "kl": 2.0, "difficulty": "hard"},
        {"prompt_id": 1, "sample": 0, "prompt": "q", "gold_helpful": -1.0, "kl": 0.5, "risky": True},
    ]
    got = sweep_runs.per_prompt_rows(rows)
    assert got == [
        {"prompt_id": 1, "samples": 1, "gold_helpful": -1.0, "kl": 0.5, "risky": True},
        {"prompt_id": 3, "samples": 2, "gold_helpful": 3.5, "kl": 1.5, "difficulty": "hard"},
    ]


def test_an_archived_sweep_gives_the_same_table_and_matched_kl_values(folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "runs.jsonl.gz"
    assert sweep_runs.archive_runs([folder], archive) == 4
    from_folder, from_archive = sweep.load_runs(folder), sweep.load_runs(archive)
    assert [(r.method, r.beta, r.seed) for r in from_archive] == [
        (r.method, r.beta, r.seed) for r in from_folder
    ]
    assert [r.config["transform"] for r in from_archive] == [r.config["transform"] for r in from_folder]
    # per-prompt means instead of per-sample rows: one row per prompt of GAINS, same not-improved shares
    assert [len(r.prompts) for r in from_archive] == [len(GAINS[r.seed]) for r in from_folder]
    rows_f, rows_a = sweep.summarise(from_folder), sweep.summarise(from_archive)
    for a, b in zip(rows_f, rows_a, strict=True):
        assert (a.method, a.beta, a.n) == (b.method, b.beta, b.n)
        for tag, (mean, se) in a.stats.items():
            assert b.stats[tag][0] == pytest.approx(mean, abs=1e-6, nan_ok=True), tag
            assert b.stats[tag][1] == pytest.approx(se, abs=1e-6, nan_ok=True), tag
    assert rows_a[0].stats["not_improved/hard"] == pytest.approx((0.75, 0.25))  # seeds 1/2 and 2/2
    along_f, along_a = sweep.per_seed_at_kl(from_folder, 1.5), sweep.per_seed_at_kl(from_archive, 1.5)
    assert along_f.keys() == along_a.keys() == {"raw", "logsigmoid"}
    for method, by_seed in along_f.items():  # scalars are archived to 7 decimals
        assert along_a[method] == pytest.approx(by_seed, abs=1e-6)
    # an archive re-archived (a later session adding sweeps to it) keeps its rows as they are
    again = tmp_path / "again.jsonl.gz"
    assert sweep_runs.archive_runs([archive], again) == 4
    assert [r.prompts for r in sweep.load_runs(again)] == [r.prompts for r in from_archive]


def test_a_malformed_archive_line_is_skipped_naming_the_file_line_and_field(
    folder: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "runs.jsonl.gz"
    sweep_runs.archive_runs([folder], archive)
    with gzip.open(archive, "rt") as f:
        lines = f.read().splitlines()
    broken = json.loads(lines[1])
    del broken["scalars"]
    lines[1] = json.dumps(broken)
    lines.insert(2, "{not json")
    with gzip.open(archive, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.warns(sweep.SweepWarning) as caught:
        runs = sweep.load_runs(archive)
    messages = [str(w.message) for w in caught]
    assert any(f"{archive}:2: skipped" in m and "'scalars'" in m for m in messages), messages
    assert any(f"{archive}:3: skipped" in m for m in messages), messages
    assert len(runs) == 3 and not any(math.isnan(r.beta) for r in runs)


def test_the_archive_cli_refuses_an_empty_result(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        sweep_runs.main(["archive", str(tmp_path / "empty"), "--out", str(tmp_path / "a.jsonl.gz")])
    assert e.value.code == 1
    assert "archived 0 jobs" in capsys.readouterr().out


def _run(method: str, beta: float, seed: int, both: float, kl: float):
    scalars = {"gold/win_rate_both": [(0, 0.0), (10, both)], "gold/kl_to_sft": [(10, kl)]}
    return sweep_runs.Run(Path(f"{method}-{beta}-{seed}"), method, beta, seed, scalars)


def test_paired_final_gains_by_hand():
    runs = [
        _run("raw+sum", 0.2, 0, 0.30, 0.4),
        _run("raw+sum", 0.2, 1, 0.28, 0.6),
        _run("ls+sum", 0.2, 0, 0.27, 1.0),  # −0.03
        _run("ls+sum", 0.2, 1, 0.27, 0.8),  # −0.01
        _run("ls+sum", 0.2, 2, 0.99, 0.8),  # seed 2 has no baseline: left out
        _run("ls+sum", 0.5, 0, 0.20, 0.3),  # β 0.5 has no baseline: no row
    ]
    (row,) = sweep_runs.paired_final_gains(runs, "raw+sum", ["gold/win_rate_both"])
    assert (row["method"], row["beta"], row["n"]) == ("ls+sum", 0.2, 2)
    assert row["kl"] == pytest.approx(0.9) and row["kl_baseline"] == pytest.approx(0.5)
    mean, se = row["gold/win_rate_both"]
    assert mean == pytest.approx(-0.02) and se == pytest.approx(0.01)  # std(−0.03, −0.01) = 0.01414 / √2


def test_gains_cli_refuses_an_unknown_baseline(folder, capsys):
    with pytest.raises(SystemExit, match="no run shares a β and a seed with method 'nope'"):
        sweep_runs.main(["gains", str(folder), "--baseline", "nope"])
