"""``scripts/report.py`` on hand-written TensorBoard events: what it reads, the PNG it writes, its errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "report.py"
_spec = importlib.util.spec_from_file_location("report", SCRIPT)
report = importlib.util.module_from_spec(_spec)
sys.modules["report"] = report  # dataclasses look their module up
_spec.loader.exec_module(report)

MARGINS = {  # reward model → (margins at step 0, margins at step 5)
    "helpful": ([-1.0, -1.0, 1.0, 3.0], [0.5, 1.5, 2.5, 2.5]),
    "harmless": ([-2.0, -0.5, -0.5, 1.0], [-1.0, 0.5, 0.5, 1.0]),
}


def write_run(run: Path, names: tuple[str, ...] = ("helpful", "harmless"), gold: bool = True) -> None:
    """A PPO run's events as the callbacks write them: 6 iterations, evaluations at steps 2 and 5."""
    w = SummaryWriter(run / "tensorboard")
    for step in range(6):
        w.add_scalar("ppo/beta", 0.05, step)
        w.add_scalar("ppo/kl", 0.1 * step, step)
        for k, n in enumerate(names):
            w.add_scalar(f"reward/{n}_raw", step + k, step)
            w.add_scalar(f"reward/{n}_transformed", -1.0 / (step + 1), step)
            w.add_scalar(f"reward/{n}_above_ref", 0.25 if step == 0 else 0.75, step)
        if gold and step in (2, 5):
            w.add_scalar("gold/win_rate_helpful", 0.5 + 0.02 * step, step)
            w.add_scalar("gold/win_rate_harmless", 0.5 - 0.01 * step, step)
            w.add_scalar("gold/kl_to_sft", 0.2 * step, step)
    for n in names:
        for step, values in zip((0, 5), MARGINS[n]):
            w.add_histogram(f"reward_hist/{n}_margin", torch.tensor(values), step)
    w.close()


def test_load_run_reads_scalars_and_histograms(tmp_path):
    write_run(tmp_path)
    data = report.load_run(tmp_path)
    assert data.reward_names == ["helpful", "harmless"]  # the order the run logged them
    assert data.algorithm == "ppo"
    assert data.scalars["gold/win_rate_helpful"] == [(2, pytest.approx(0.54)), (5, pytest.approx(0.6))]
    assert [s for s, _ in data.scalars["reward/harmless_raw"]] == list(range(6))
    assert data.scalars["reward/harmless_raw"][3][1] == pytest.approx(4.0)  # step 3 + k = 1
    first, last = data.histograms["reward_hist/helpful_margin"]
    assert (first.step, first.num, last.step, last.num) == (0, 4, 5, 4)
    assert first.mean == pytest.approx(0.5) and last.mean == pytest.approx(1.75)
    # redrawn on common bins, every value lands on the right side of 0: −1, −1 | 1, 3
    np.testing.assert_allclose(first.rebin(np.array([-2.0, 0.0, 4.0])), [2.0, 2.0], atol=1e-9)
    np.testing.assert_allclose(last.rebin(np.array([0.0, 1.0, 2.0, 3.0])), [1.0, 1.0, 2.0], atol=1e-9)


@pytest.mark.slow
def test_report_writes_a_png_of_the_panel_size(tmp_path):
    write_run(tmp_path)
    assert report.main([str(tmp_path)]) == 0
    with Image.open(tmp_path / "report.png") as img:
        assert img.format == "PNG"
        # 1 row of gold + KL, 1 row per reward model; 12 × 3.5 inches per row at 100 dpi
        assert img.size == (1200, 3 * 350)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colors) > 50, "the panel is (nearly) blank"


@pytest.mark.slow
def test_report_without_gold_and_with_one_reward_model(tmp_path):
    write_run(tmp_path, names=("helpful",), gold=False)
    out = tmp_path / "figs" / "one.png"
    assert report.main([str(tmp_path / "tensorboard"), "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (1200, 2 * 350)


@pytest.mark.slow  # scripts/report.py in a subprocess
@pytest.mark.parametrize("case", ["empty", "missing", "sft"])
def test_report_errors_name_the_folder_without_a_traceback(tmp_path, case):
    run = tmp_path / "run"
    if case == "empty":
        run.mkdir()
    elif case == "sft":  # a run with events, but not of a policy task
        w = SummaryWriter(run / "tensorboard")
        w.add_scalar("train/loss", 1.0, 0)
        w.close()
    cmd = [sys.executable, str(SCRIPT), str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    expected = {"empty": "no TensorBoard event files", "missing": "no such folder", "sft": "task=ppo"}[case]
    assert proc.stderr.startswith(f"report.py: error: {run}: ") and expected in proc.stderr
    assert not (run / "report.png").exists()
