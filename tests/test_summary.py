"""The closing summary of a run and the table of a sweep, against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from lit_rlhf.run import summary as S
from lit_rlhf.run import sweep as W


def test_win_rate_se_by_hand() -> None:
    assert S.win_rate_se(0.5, 400) == pytest.approx(0.025)  # √(0.25/400) = 0.5/20
    assert S.win_rate_se(0.6, 100) == pytest.approx(math.sqrt(0.0024))  # √(0.24/100) = 0.04899
    assert S.win_rate_se(1.0, 10) == 0.0
    for p, n in ((1.2, 10), (0.5, 0)):
        with pytest.raises(ValueError, match="0 <= p <= 1 and n >= 1"):
            S.win_rate_se(p, n)


@given(st.floats(0, 1), st.integers(1, 10_000))
def test_win_rate_se_is_at_most_the_coin_flip_bound(p: float, n: int) -> None:
    assert 0.0 <= S.win_rate_se(p, n) <= 0.5 / math.sqrt(n) + 1e-12


def test_mean_se_by_hand() -> None:
    # [1, 0, 1, 1]: mean 0.75, sample variance (3·0.25² + 0.75²)/3 = 0.25, s.e. = 0.5/√4 = 0.25
    assert S.mean_se([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.25)
    assert S.mean_se([0.5, 0.5, 0.5]) == 0.0  # all ties
    with pytest.raises(ValueError, match="at least 2"):
        S.mean_se([1.0])


def test_proportion_errors_only_for_fractions() -> None:
    metrics = {"gold/win_rate_both": 0.6, "val/rm_acc": 0.75, "ppo/kl": 3.2, "gold/win_rate_x": float("nan")}
    errors = S.proportion_errors(metrics, n=100)
    assert errors == {
        "gold/win_rate_both": pytest.approx(0.04899, abs=1e-5),  # √(0.6·0.4/100)
        "val/rm_acc": pytest.approx(0.04330, abs=1e-5),  # √(0.75·0.25/100)
    }


@pytest.mark.parametrize(
    ("value", "se", "text"),
    [
        (0.63412, 0.01523, "0.634 ± 0.015"),  # s.e. to 2 significant digits → 3 decimals
        (12.3456, 0.5, "12.35 ± 0.50"),
        (1234.4, 25.0, "1234 ± 25"),
        (3.14159, None, "3.142"),
        (0.5, 0.0, "0.5"),
        (None, 0.1, "n/a"),
        (float("nan"), None, "n/a"),
    ],
)
def test_format_estimate(value, se, text) -> None:
    assert S.format_estimate(value, se) == text


@pytest.mark.parametrize(("s", "text"), [(12.34, "12.3 s"), (245.0, "4 min 05 s"), (3725.0, "1 h 02 min")])
def test_format_duration(s: float, text: str) -> None:
    assert S.format_duration(s) == text


def test_timed_adds_up_even_when_the_body_raises(monkeypatch) -> None:
    clock = iter([10.0, 12.5, 20.0, 21.0])
    monkeypatch.setattr(S.time, "perf_counter", lambda: next(clock))
    times: dict[str, float] = {}
    with S.timed(times, "ppo"):
        pass
    with pytest.raises(RuntimeError), S.timed(times, "ppo"):
        raise RuntimeError
    assert times == {"ppo": 3.5}


def test_write_summary_files_and_block(tmp_path: Path) -> None:
    metrics = {"gold/win_rate_both": 0.6, "ppo/kl": 3.21, "gold/kl_to_sft": float("inf")}
    errors = {"gold/win_rate_both": 0.049, "unrelated": 1.0}
    times = {"sft": 98.0, "reward_model[helpful]": 121.0, "ppo": 72.4}
    summary = S.write_summary(tmp_path, "ppo", metrics, errors, times, tmp_path / "model", tmp_path / "tb")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["wall_time"] == pytest.approx(291.4)
    assert summary["metrics"]["gold/kl_to_sft"] is None  # JSON holds no inf
    assert summary["errors"] == {"gold/win_rate_both": 0.049}  # only errors of reported metrics
    assert summary["tensorboard"] == f"tensorboard --logdir {tmp_path / 'tb'}"
    assert (tmp_path / "summary.txt").read_text() == (
        "lit_rlhf ppo: done in 4 min 51 s\n"
        "  gold/win_rate_both  0.600 ± 0.049\n"
        "  ppo/kl              3.21\n"
        "  gold/kl_to_sft      n/a\n"
        "  time:   sft 1 min 38 s · reward_model[helpful] 2 min 01 s · ppo 1 min 12 s\n"
        f"  model:  {tmp_path / 'model'}\n"
        f"  logs:   {tmp_path / 'tb'}  (view: tensorboard --logdir {tmp_path / 'tb'})\n"
    )


def test_no_logger_means_no_tensorboard_line(tmp_path: Path) -> None:
    summary = S.write_summary(tmp_path, "sft", {"val/loss": 2.5}, None, {"sft": 5.0}, tmp_path / "m", None)
    assert summary["tensorboard"] is None and summary["errors"] == {}
    assert "tensorboard" not in S.format_summary(summary) and "logs:" not in S.format_summary(summary)


def job(
    sweep: Path, num: int, overrides: list[str], metrics: dict | None, errors: dict | None = None
) -> None:
    """A hand-written job folder: Hydra's .hydra/overrides.yaml, and a summary.json unless it failed."""
    (sweep / str(num) / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), sweep / str(num) / ".hydra" / "overrides.yaml")
    if metrics is not None:
        summary = {"task": "ppo", "metrics": metrics, "errors": errors or {}, "wall_time": 75.0}
        (sweep / str(num) / "summary.json").write_text(json.dumps(summary))


def test_multirun_table(tmp_path: Path) -> None:
    sweep = tmp_path / "2026-01-01_00-00-00"
    common = ["task.iterations=10"]
    job(sweep, 0, [*common, "+transform=identity", "seed=0"], {"gold/win_rate_both": 0.55, "ppo/kl": 2.0},
        {"gold/win_rate_both": 0.05})  # fmt: skip
    job(sweep, 1, [*common, "+transform=logsigmoid", "seed=0"], {"gold/win_rate_both": 0.7, "ppo/kl": 1.5})
    job(sweep, 10, [*common, "+transform=logsigmoid", "seed=1"], None)  # failed: no summary.json
    (sweep / "multirun.yaml").write_text("{}\n")  # the sweep's own files are not jobs
    text = W.multirun_table(sweep)
    assert (sweep / "summary.md").read_text() == text
    assert text == (
        "# Sweep 2026-01-01_00-00-00\n"
        "\n"
        "Every job: `task.iterations=10`\n"
        "\n"
        "| job | overrides | gold/win_rate_both | ppo/kl | time |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| 0 | `+transform=identity` `seed=0` | 0.550 ± 0.050 | 2 | 1 min 15 s |\n"
        "| 1 | `+transform=logsigmoid` `seed=0` | 0.7 | 1.5 | 1 min 15 s |\n"
        "| 10 | `+transform=logsigmoid` `seed=1` | no summary.json (failed or running) |  |  |\n"
    )


def test_sweep_callback_writes_the_table(tmp_path: Path) -> None:
    job(tmp_path, 0, ["seed=0"], {"val/rm_acc": 0.7})
    W.SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "| 0 | `seed=0` | 0.7 | 1 min 15 s |" in (tmp_path / "summary.md").read_text()
