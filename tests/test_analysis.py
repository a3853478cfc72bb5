"""``studies/analyze_sweep.py`` on a synthetic multirun folder, against hand-computed means and s.e."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("analyze_sweep", ROOT / "studies" / "analyze_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
sys.modules["analyze_sweep"] = sweep  # dataclasses look their module up
_spec.loader.exec_module(sweep)

TARGETS = {"identity": "Identity", "logsigmoid": "LogSigmoid"}
# (transform, β) → per seed (final gold/kl_to_sft, final gold/win_rate_helpful)
FINAL = {
    ("identity", 0.05): [(2.0, 0.60), (4.0, 0.70)],  # KL 3 ± 1, win 0.65 ± 0.05
    ("identity", 0.1): [(1.0, 0.50), (1.0, 0.60)],  # KL 1 ± 0, win 0.55 ± 0.05
    ("logsigmoid", 0.05): [(2.0, 0.68), (3.0, 0.72)],  # KL 2.5 ± 0.5, win 0.70 ± 0.02
    ("logsigmoid", 0.1): [(1.5, 0.58), (1.5, 0.62)],  # KL 1.5 ± 0, win 0.60 ± 0.02
}
# per seed: prompt_id → (difficulty, [gold_helpful − gold_helpful_sft per sample])
GAINS = {
    0: {0: ("easy", [1, -1]), 1: ("easy", [2, 0]), 2: ("hard", [-1, -1]), 3: ("hard", [0.5, 0.5])},
    1: {0: ("easy", [1, -1]), 1: ("easy", [2, 0]), 2: ("hard", [-1, -1]), 3: ("hard", [0.5, -1.5])},
}
# not improved (mean gain ≤ 0): seed 0 → all 2/4, easy 1/2, hard 1/2; seed 1 → all 3/4, easy 1/2, hard 2/2


def write_job(
    job: Path, transform: str, beta: float, seed: int, events: bool = True, algorithm: str | None = None
) -> None:
    (job / ".hydra").mkdir(parents=True)
    cfg = {
        "seed": seed,
        "reward": {"helpful": {"path": None}},
        "aggregator": {"_target_": "lit_rlhf.rewards.aggregators.Sum"},
        "transform": {"_target_": f"lit_rlhf.rewards.transforms.{TARGETS[transform]}"},
        "task": {"module": {"kl_coef": beta}} | ({"name": algorithm} if algorithm else {}),
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    overrides = [f"+transform={transform}", f"task.module.kl_coef={beta}", f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if not events:
        return
    kl, win = FINAL[(transform, beta)][seed]
    with SummaryWriter(str(job / "tensorboard")) as w:
        for step, scale in ((10, 0.5), (20, 1.0)):  # the analysis must take the last evaluation
            w.add_scalar("gold/kl_to_sft", kl * scale, step)
            w.add_scalar("gold/win_rate_helpful", win * scale, step)
            w.add_scalar("gold/proxy_win_rate_helpful", 0.9 * scale, step)
            w.add_scalar("gold/proxy_minus_gold", 0.9 * scale - win * scale, step)
            w.add_scalar("gold/win_rate_harmless", 0.4 + 0.1 * seed, step)
    with (job / "tensorboard" / "gold_eval.jsonl").open("w") as f:
        for pid, (difficulty, gains) in GAINS[seed].items():
            for g in gains:
                row = {"step": 20, "prompt_id": pid, "gold_helpful": 1.0 + g, "gold_helpful_sft": 1.0}
                f.write(json.dumps({**row, "difficulty": difficulty, "risky": False}) + "\n")


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "ppo" / "2024-01-01_00-00-00"
    num = 0
    for transform, beta in FINAL:
        for seed in (0, 1):
            write_job(root / str(num), transform, beta, seed)
            num += 1
    write_job(root / "8", "identity", 0.05, 2, events=False)  # a failed job: config but no events
    return root


def test_analysis_table_plots_and_failed_job(multirun: Path, tmp_path: Path) -> None:
    out = tmp_path / "analysis"
    with pytest.warns(sweep.SweepWarning, match=r"skipping .*[/\\]8: no TensorBoard"):
        rows = sweep.analyse(multirun, out, at_kl=2.0)

    got = {(r.method, r.beta): r for r in rows}
    assert list(got) == [("raw", 0.05), ("raw", 0.1), ("logsigmoid", 0.05), ("logsigmoid", 0.1)]
    assert all(r.n == 2 for r in rows)  # the failed job (seed 2) is not counted
    approx = lambda pair: pytest.approx(pair, abs=1e-6)  # noqa: E731
    expected = {
        ("raw", 0.05): ((3.0, 1.0), (0.65, 0.05)),
        ("raw", 0.1): ((1.0, 0.0), (0.55, 0.05)),
        ("logsigmoid", 0.05): ((2.5, 0.5), (0.70, 0.02)),
        ("logsigmoid", 0.1): ((1.5, 0.0), (0.60, 0.02)),
    }
    for key, (kl, win) in expected.items():
        assert got[key].stats["gold/kl_to_sft"] == approx(kl)
        assert got[key].stats["gold/win_rate_helpful"] == approx(win)
        assert got[key].stats["gold/win_rate_harmless"] == approx((0.45, 0.05))
        assert got[key].stats["gold/proxy_minus_gold"] == approx((0.9 - win[0], win[1]))
        # not-improved shares: seeds (2/4, 3/4), (1/2, 1/2), (1/2, 2/2)
        assert got[key].stats["not_improved/all"] == approx((0.625, 0.125))
        assert got[key].stats["not_improved/easy"] == approx((0.5, 0.0))
        assert got[key].stats["not_improved/hard"] == approx((0.75, 0.25))

    md = (out / "results.md").read_text()
    assert "| raw | 0.05 | 2 | 3.000 ± 1.000 | 0.650 ± 0.050 |" in md
    assert "± s.e." in md and "better on both" not in md  # no win_rate_both logged: no column
    # at KL 2: raw between (1, .55) and (3, .65) → .60; logsigmoid between (1.5, .60) and (2.5, .70) → .65
    assert sweep.interpolate_at_kl(rows, 2.0) == {"raw": approx(0.60), "logsigmoid": approx(0.65)}
    assert "at matched KL = 2 " in md and "- logsigmoid: 0.650  gain over raw: +0.050" in md

    for name in ("win_rate_vs_kl.png", "hacking.png", "underfitting.png"):
        assert (out / name).stat().st_size > 1000
    assert not (out / "both_vs_kl.png").exists()


def test_win_rate_where_training_passed_a_kl(multirun: Path) -> None:
    """Each job evaluates at (KL/2, win/2) then (KL, win); runs are read along those two points."""
    with pytest.warns(sweep.SweepWarning):
        runs = sweep.load_runs(multirun)
    # raw β .05: seed 0 (1, .30)→(2, .60): .45 at KL 1.5; seed 1 (2, .35)→(4, .70) never passes 1.5;
    # raw β .1 stays ≤ 1. logsigmoid: β .05 seed 0 .51, seed 1 .36 (starts at 1.5); β .1 .58, .62 (ends there)
    along = sweep.per_seed_at_kl(runs, 1.5)
    assert along == {
        "raw": {0: pytest.approx(0.45)},
        "logsigmoid": {0: pytest.approx((0.51 + 0.58) / 2), 1: pytest.approx((0.36 + 0.62) / 2)},
    }
    report = sweep.at_kl_report(sweep.summarise(runs), 1.5)
    assert "- raw: 0.450 (n = 1)" in report
    assert "- logsigmoid: 0.518 ± 0.027 (n = 2)  gain over raw: 0.095 (n = 1)" in report


def test_a_multi_algorithm_study_compares_each_transform_with_its_own_algorithms_raw_reward(
    tmp_path: Path,
) -> None:
    """Jobs of two algorithms: methods are prefixed, gains are over the same algorithm's raw reward, and the
    transform's activity is read first → last."""
    root = tmp_path / "study"
    num = 0
    for algorithm, shift in (("ppo", 0.0), ("grpo", 0.1)):  # grpo's final win rates are ppo's + 0.1 ...
        for transform, beta in FINAL:
            for seed in (0, 1):
                job = root / str(num)
                write_job(job, transform, beta, seed, algorithm=algorithm)
                num += 1
                with SummaryWriter(str(job / "tensorboard")) as w:
                    for step, above in ((1, 0.1 + seed), (20, 0.5 + seed)):  # share above r_ref: first, last
                        w.add_scalar("reward/helpful_above_ref", above, step)
                    if algorithm == "grpo" and transform == "logsigmoid":  # ... and its transform's +0.2 more
                        w.add_scalar("gold/win_rate_helpful", FINAL[(transform, beta)][seed][1] + 0.3, 30)
                        w.add_scalar("gold/kl_to_sft", FINAL[(transform, beta)][seed][0], 30)
                    elif algorithm == "grpo":
                        w.add_scalar("gold/win_rate_helpful", FINAL[(transform, beta)][seed][1] + shift, 30)
                        w.add_scalar("gold/kl_to_sft", FINAL[(transform, beta)][seed][0], 30)
    rows = sweep.summarise(sweep.load_runs(root))
    got = {(r.method, r.beta): r for r in rows}
    assert [m for m, _ in got][::2] == ["ppo:raw", "ppo:logsigmoid", "grpo:raw", "grpo:logsigmoid"]
    assert got[("grpo:raw", 0.1)].stats["gold/win_rate_helpful"] == pytest.approx((0.65, 0.05))
    above = got[("ppo:raw", 0.1)].stats
    assert above["first:reward/helpful_above_ref"] == pytest.approx((0.6, 0.5))  # seeds 0.1, 1.1
    assert above["reward/helpful_above_ref"] == pytest.approx((1.0, 0.5))  # seeds 0.5, 1.5
    assert sweep.baseline_of("grpo:logsigmoid", list(dict.fromkeys(m for m, _ in got))) == "grpo:raw"
    # at KL 2 (KLs as in test 1): ppo raw .60, logsigmoid .65 → +0.05; grpo raw .70, logsigmoid .95 → +0.25
    report = sweep.at_kl_report(rows, 2.0)
    assert "- ppo:logsigmoid: 0.650  gain over ppo:raw: +0.050" in report
    assert "- grpo:logsigmoid: 0.950  gain over grpo:raw: +0.250" in report
    md_rows = sweep.table(rows)
    assert "above r_ref (helpful) first" in md_rows and "| grpo:raw | 0.05 | 2 |" in md_rows


def test_method_names_of_combination_configs() -> None:
    two = {"helpful": {}, "harmless": {}}
    cfg = {"reward": two, "aggregator": {"_target_": "lit_rlhf.rewards.aggregators.WeightedSum"}}
    assert sweep.method_of(cfg) == "raw+weighted_sum"
    cfg["transform"] = {"_target_": "lit_rlhf.rewards.transforms.LogSigmoid"}
    cfg["aggregator"] = {"_target_": "lit_rlhf.rewards.aggregators.Sum"}
    assert sweep.method_of(cfg) == "logsigmoid+sum"
    assert sweep.method_of({"reward": {"helpful": {}}, "transform": {"_target_": "x.Whiten"}}) == "whiten"


def test_a_non_default_reference_names_its_own_method_and_keeps_the_raw_baseline() -> None:
    ref = lambda **r: {"reference": {"statistic": "quantile", "q": 0.85} | r}  # noqa: E731
    cfg = {"reward": {"helpful": ref(), "harmless": ref(q=0.5)}, "aggregator": {"_target_": "x.Sum"}}
    assert sweep.method_of(cfg) == "raw+sum"  # the raw reward ignores r_ref: one baseline for all
    cfg["transform"] = {"_target_": "lit_rlhf.rewards.transforms.LogSigmoid"}
    assert sweep.method_of(cfg) == "logsigmoid+sum@harmless=q0.5"
    cfg["reward"]["harmless"] = ref(statistic="refusal")
    assert sweep.method_of(cfg) == "logsigmoid+sum@harmless=refusal"
    cfg["reward"]["harmless"] = ref()
    assert sweep.method_of(cfg) == "logsigmoid+sum"
    methods = ["ppo:raw+sum", "ppo:logsigmoid+sum@harmless=q0.95"]
    assert sweep.baseline_of(methods[1], methods) == "ppo:raw+sum"
    order = sorted(["logsigmoid+sum@harmless=q0.5", "raw+sum", "logsigmoid+sum"], key=sweep.method_key)
    assert order[0] == "raw+sum"


# ------------------------------------------------------------------ regime study (studies/regime_plot.py)
_spec_r = importlib.util.spec_from_file_location("regime_plot", ROOT / "studies" / "regime_plot.py")
regime = importlib.util.module_from_spec(_spec_r)
sys.modules["regime_plot"] = regime
_spec_r.loader.exec_module(regime)

# variant → (margins of the first rollout batch, {(method, β): per seed [(KL, win) at steps 10 and 20]})
REGIME = {
    "default": (
        [-2.0, 2.0, -2.0, 2.0],  # std 2
        {
            ("identity", 0.05): [[(0.5, 0.50), (1.5, 0.54)]] * 2,
            ("identity", 0.02): [[(1.0, 0.52), (3.0, 0.50)]] * 2,
            ("logsigmoid", 0.05): [[(0.5, 0.50), (1.5, 0.56)], [(0.5, 0.50), (1.5, 0.54)]],
            ("logsigmoid", 0.02): [[(1.0, 0.54), (3.0, 0.60)], [(1.0, 0.52), (3.0, 0.58)]],
        },
    ),
    "fresh": (
        [-1.0, 1.0],  # std 1
        {
            ("identity", 0.05): [[(0.25, 0.50), (1.0, 0.52)]] * 2,
            ("identity", 0.02): [[(0.25, 0.50), (1.0, 0.52)]] * 2,
            ("logsigmoid", 0.05): [[(0.25, 0.50), (1.0, 0.50)]] * 2,
            ("logsigmoid", 0.02): [[(0.25, 0.50), (1.0, 0.50)]] * 2,
        },
    ),
}


def write_regime_job(job: Path, variant: str, transform: str, beta: float, seed: int) -> None:
    margins, finals = REGIME[variant]
    (job / ".hydra").mkdir(parents=True)
    cfg = {
        "seed": seed,
        "reward": {"helpful": {"path": None}},
        "transform": {"_target_": f"lit_rlhf.rewards.transforms.{TARGETS[transform]}"},
        "task": {"module": {"kl_coef": beta}},
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    overrides = [f"+transform={transform}", f"task.module.kl_coef={beta}", f"seed={seed}"]
    if variant != "default":  # the default variant's jobs may come from a plain single-reward study
        overrides.insert(0, f"+experiment/rm_variant={variant}")
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    with SummaryWriter(str(job / "tensorboard")) as w:
        w.add_histogram("reward_hist/helpful_margin", torch.tensor(margins), 1)
        w.add_histogram("reward_hist/helpful_margin", torch.tensor([-9.0, 9.0]), 11)  # later: must be ignored
        for step, (kl, win) in zip((10, 20), finals[(transform, beta)][seed]):
            w.add_scalar("gold/kl_to_sft", kl, step)
            w.add_scalar("gold/win_rate_helpful", win, step)


def test_regime_gain_at_matched_kl_vs_margin_range(tmp_path: Path) -> None:
    dirs = [tmp_path / "study", tmp_path / "regime"]
    num = 0
    for variant, (_, finals) in REGIME.items():
        for transform, beta in finals:
            for seed in (0, 1):
                write_regime_job(dirs[variant != "default"] / str(num), variant, transform, beta, seed)
                num += 1
    with pytest.warns(sweep.SweepWarning, match="no gold_eval.jsonl"):
        fresh, default = regime.analyse(dirs, out=tmp_path / "out")  # sorted by margin range
    assert (fresh.name, default.name) == ("fresh", "default")
    approx = lambda pair: pytest.approx(pair, abs=1e-6)  # noqa: E731
    assert fresh.margin_std == approx((1.0, 0.0)) and default.margin_std == approx((2.0, 0.0))
    # default: both methods pass KL 0.5–1.5 (β .05) and 1–3 (β .02): median span [0.75, 2.25] → KL 1.5
    assert default.kl == pytest.approx(1.5) and fresh.kl == pytest.approx(0.625)
    # at KL 1.5, raw: β .05 → .54, β .02 → .515, mean .5275 (both seeds)
    # logsigmoid: seed 0 (.56 + .555) / 2 = .5575; seed 1 (.54 + .535) / 2 = .5375 → gains .03, .01
    assert default.raw == approx((0.5275, 0.0))
    assert default.logsigmoid == approx((0.5475, 0.01))
    assert default.gain == approx((0.02, 0.01)) and default.n_seeds == 2
    assert fresh.raw == approx((0.51, 0.0)) and fresh.gain == approx((-0.01, 0.0))
    assert (tmp_path / "out" / "regime.png").stat().st_size > 1000
    md = (tmp_path / "out" / "regime.md").read_text()
    assert "| default | 2.00 ± 0.00 | 1.50 | 0.528 ± 0.000 | 0.548 ± 0.010 | 0.020 ± 0.010 | 2 |" in md

    with pytest.warns(sweep.SweepWarning, match="no seed where both methods pass KL 5"):
        (far,) = regime.analyse(dirs[1:], out=tmp_path / "out2", at_kl=5.0)
    assert math.isnan(far.gain[0]) and far.n_seeds == 0
