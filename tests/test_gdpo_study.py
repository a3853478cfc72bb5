"""``studies/gdpo.py``: the hidden-trade share and the head-to-head table on hand-made runs."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))
_spec = importlib.util.spec_from_file_location("gdpo_study", ROOT / "studies" / "gdpo.py")
gdpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gdpo)
Run = gdpo.Run


def run(
    method: str, seed: int, both: list[float], kls: list[float], prompts: list[dict], world: int = 0
) -> Run:
    steps = list(range(len(both)))
    scalars = {
        "gold/win_rate_both": list(zip(steps, both)),
        "gold/kl_to_sft": list(zip(steps, kls)),
        "gold/win_rate_helpful": [(steps[-1], 0.6)],
        "gold/win_rate_harmless": [(steps[-1], 0.5)],
        "gold/proxy_minus_gold": [(steps[-1], 0.1)],
    }
    cfg = {"data": {"world": {"seed": world}}}
    return Run(Path(f"{method}-{seed}"), f"grpo:{method}", 0.2, seed, scalars, prompts, "grpo", cfg)


def prompt(h: float, h_sft: float, s: float, s_sft: float, samples: int | None = None) -> dict:
    row = {"gold_helpful": h, "gold_helpful_sft": h_sft, "gold_harmless": s, "gold_harmless_sft": s_sft}
    return row if samples is None else {**row, "samples": samples}


def test_worse_share_counts_prompts_worse_on_either_property() -> None:
    rows = [prompt(2, 1, 0, 0, 9), prompt(2, 1, -1, 0, 9), prompt(0, 1, 1, 0, 9), prompt(1, 1, 0, 0, 9)]
    assert gdpo.worse_share(run("raw+gdpo", 0, [0.3], [0.1], rows)) == 0.5  # rows 2 and 3
    assert math.isnan(gdpo.worse_share(run("raw+gdpo", 0, [0.3], [0.1], [])))
    # a job folder's rows are samples: two of prompt 7 (worse on average), one of prompt 8 (not)
    samples = [{"prompt_id": 7, **prompt(0, 1, 0, 0)}, {"prompt_id": 7, **prompt(1.5, 1, 0, 0)}]
    samples.append({"prompt_id": 8, **prompt(2, 1, 0, 0)})
    assert gdpo.worse_share(run("raw+gdpo", 0, [0.3], [0.1], samples)) == 0.5


def test_table_means_over_seeds_and_matched_kl(monkeypatch) -> None:
    runs = [
        run("raw+gdpo", 0, [0.2, 0.3], [0.0, 0.4], [prompt(2, 1, -1, 0, 9)]),
        run("raw+gdpo", 1, [0.2, 0.5], [0.0, 0.2], [prompt(2, 1, 1, 0, 9)]),
        run("raw+sum", 0, [0.2, 0.3], [0.0, 0.4], [], world=1),  # another world: left out
        run("raw+min", 0, [0.2, 0.3], [0.0, 0.4], []),  # not one of the four methods: left out
    ]
    monkeypatch.setattr(gdpo, "load_runs", lambda source: runs)
    groups = gdpo.select(["x"], world=0)
    assert list(groups) == [("grpo", "raw+gdpo", 0.2)]
    assert gdpo.auto_at_kl(groups) == 0.2  # the smaller of the two runs' largest KL
    at_kl = gdpo.matched_kl(None, groups)
    assert at_kl["grpo"] == 0.2 and math.isnan(at_kl["rloo"])  # per algorithm; no RLOO run here
    assert gdpo.matched_kl("0.3", groups) == {"grpo": 0.3, "rloo": 0.3}
    assert gdpo.matched_kl("rloo=0.5", groups)["grpo"] == 0.2  # left out: its own default
    with pytest.raises(SystemExit, match="ALGORITHM one of"):
        gdpo.matched_kl("ppo=0.1", groups)
    text = gdpo.table(groups, at_kl, 0, ["x"])
    assert "grpo at KL 0.2, rloo at KL nan" in text
    # both: final (0.3 + 0.5)/2 = 0.4 ± 0.1; at KL 0.2: 0.25 and 0.5 → 0.375 ± 0.125; worse: 1 and 0
    assert "| grpo | GDPO on raw | 0.2 | 2 | 0.400 ± 0.100 |" in text
    assert text.rstrip().endswith("| 0.500 ± 0.500 | 0.375 ± 0.125 |")
