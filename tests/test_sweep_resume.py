"""A ``-m`` sweep's folder is named after its command, so a re-run with the same command finds it. That the
re-run skips the jobs that finished and resumes the others from their ``last.ckpt``, ending after a
``kill -9`` where an uninterrupted sweep ends, is the failure table's ``sweep_kill`` case
(tests/failure_table_training.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def train(root: Path, *args: str) -> list[str]:
    """``python train.py -m <args>`` writing under ``root``."""
    return [sys.executable, str(ROOT / "train.py"), "-m", f"paths.root_dir={root}", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # train.py in a subprocess
def test_sweep_folder_is_named_after_the_sweep_overrides(tmp_path):
    """Every job of `-m` lands in one folder named after the command (not the date): a re-run finds it."""
    out = subprocess.run(
        train(tmp_path, "seed=0,1", "resume=sometimes", f"paths.cache_dir={tmp_path / 'c'}"),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "resume must be one of ('auto', 'force'), got 'sometimes'" in out.stderr
    # resume, paths.root_dir and paths.cache_dir do not name folders: the same run, wherever files go
    jobs = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "multirun").glob("*/*/*") if p.is_dir()]
    assert sorted(jobs) == ["multirun/ppo/seed=0,1/0", "multirun/ppo/seed=0,1/1"]
