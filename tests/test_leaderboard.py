"""``studies/leaderboard.py`` and the leaderboard sweeps: method names, best β, matched KL, ranking and the
written table against hand-computed values; every method config composes; job counts match the headers."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from conftest import hydra_cfg

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = ROOT / "studies" / "conf" / "experiment"
_spec = importlib.util.spec_from_file_location("leaderboard", ROOT / "studies" / "leaderboard.py")
lb = importlib.util.module_from_spec(_spec)
sys.modules["leaderboard"] = lb  # dataclasses look their module up
_spec.loader.exec_module(lb)
Run, Row = lb.Run, lb.Row
SweepWarning = sys.modules["analyze_sweep"].SweepWarning

EXPERIMENTS = sorted(p.stem for p in EXPERIMENTS_DIR.glob("leaderboard*.yaml"))
# method config → (transform class, aggregator class or None for one reward, ensemble aggregate, label)
METHODS = {
    "raw": ("Identity", None, None, "raw"),
    "logsigmoid": ("LogSigmoid", None, None, "logsigmoid"),
    "sigmoid": ("Sigmoid", None, None, "sigmoid"),
    "center": ("Center", None, None, "center"),
    "whiten": ("Whiten", None, None, "whiten"),
    "clip": ("Clip", None, None, "clip"),
    "ensemble_mean_minus_std": ("Identity", None, "mean_minus_std", "ens_mean-1std"),
    "ensemble_min": ("Identity", None, "min", "ens_min"),
    "raw_sum": ("Identity", "Sum", None, "raw+sum"),
    "weighted_sum": ("Identity", "WeightedSum", None, "raw+weighted_sum"),
    "min": ("Identity", "Min", None, "raw+min"),
    "logsigmoid_sum": ("LogSigmoid", "Sum", None, "logsigmoid+sum"),
}


def sweep_jobs(params: dict) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``hydra.sweeper.params`` (its own Cartesian product)."""
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return BasicSweeper.split_arguments(overrides, None)[0]


# ------------------------------------------------------------------------------------------- the sweeps
def test_job_counts_match_the_headers_and_the_command_runs_every_sweep() -> None:
    assert EXPERIMENTS == [
        "leaderboard",
        "leaderboard_combination",
        "leaderboard_combination_critic_free",
        "leaderboard_critic_free",
    ]
    total = 0
    for name in EXPERIMENTS:
        text = (EXPERIMENTS_DIR / f"{name}.yaml").read_text()
        params = yaml.safe_load(text)["hydra"]["sweeper"]["params"]
        jobs = sweep_jobs(params)
        header = int(re.search(r"^# Jobs: .*?= (\d+)", text, re.M).group(1))
        assert len(jobs) == header, name
        assert re.search(rf"Estimate: {header} × 1\.2 min = {round(header * 1.2)} min", text), name
        assert list(params)[0] == "seed" and jobs[0][0] == "seed=0" and jobs[-1][0] == "seed=2"  # slowest
        total += len(jobs)
    sh = (ROOT / "studies" / "leaderboard.sh").read_text()
    assert sorted(re.search(r"^sweeps=\((.*)\)", sh, re.M).group(1).split()) == EXPERIMENTS
    assert total == 126 and f"# Jobs: {total}. Measured:" in sh


@pytest.mark.slow  # composes every method of the sweep
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_method_of_every_sweep_composes_into_its_transform_aggregator_and_ensemble(
    experiment: str, tmp_path: Path
) -> None:
    with hydra_cfg(tmp_path, [f"experiment={experiment}"]) as cfg:
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    methods = str(params["+experiment/leaderboard_method"]).split(",")
    two = "combination" in experiment
    assert set(methods) <= set(METHODS) and len(set(methods)) == len(methods)
    if two:
        assert methods == ["raw_sum", "weighted_sum", "min", "logsigmoid_sum"]
    for task in str(params["task"]).split(","):
        for method in methods:
            over = [f"experiment={experiment}", f"task={task}", f"+experiment/leaderboard_method={method}"]
            with hydra_cfg(tmp_path, over) as cfg:
                c = OmegaConf.to_container(cfg, resolve=False)
            transform, aggregator, ensemble, label = METHODS[method]
            assert c["task"]["name"] == task
            assert c["transform"]["_target_"] == f"lit_rlhf.rewards.transforms.{transform}", method
            assert sorted(c["reward"]) == (["harmless", "helpful"] if two else ["helpful"]), method
            if aggregator:
                assert c["aggregator"]["_target_"] == f"lit_rlhf.rewards.aggregators.{aggregator}", method
            assert (c["reward"]["helpful"].get("ensemble") or {}).get("aggregate") == ensemble, method
            assert lb.method_label(c) == label and lb.study_of(c) == ("combination" if two else "single")


def test_the_single_reward_sweeps_cover_every_method_and_leave_out_only_the_listed_pairs() -> None:
    pairs = set()
    for name in ("leaderboard", "leaderboard_critic_free"):
        params = yaml.safe_load((EXPERIMENTS_DIR / f"{name}.yaml").read_text())["hydra"]
        params = params["sweeper"]["params"]
        pairs |= {
            (t, m)
            for t in params["task"].split(",")
            for m in params["+experiment/leaderboard_method"].split(",")
        }
    singles = [m for m, (_, agg, _, _) in METHODS.items() if agg is None]
    assert {m for _, m in pairs} == set(singles)
    missing = {(t, m) for t in ("ppo", "grpo", "rloo") for m in singles} - pairs
    text = (EXPERIMENTS_DIR / "leaderboard_critic_free.yaml").read_text()
    for task, method in missing:  # each left-out pair is named in the header with its reason
        assert re.search(rf"#\s+.*{method} × {task.upper()}", text), (task, method)
    assert len(missing) == 6


# --------------------------------------------------------------------------------------------- naming
def test_method_label_names_the_ensemble_aggregate_and_keeps_method_of_otherwise() -> None:
    ens = lambda agg, k=1.0: {"helpful": {"ensemble": {"aggregate": agg, "k": k}}}  # noqa: E731
    assert lb.method_label({"reward": ens("min")}) == "ens_min"
    assert lb.method_label({"reward": ens("mean_minus_var", 0.5)}) == "ens_mean-0.5var"
    logsig = {"_target_": "lit_rlhf.rewards.transforms.LogSigmoid"}
    assert (
        lb.method_label({"reward": ens("mean_minus_std", 2), "transform": logsig})
        == "logsigmoid(ens_mean-2std)"
    )
    two = {**ens("min"), "harmless": {}}
    assert (
        lb.method_label({"reward": two, "aggregator": {"_target_": "x.Min"}}) == "raw+min(ens_min[helpful])"
    )
    assert lb.method_label({"reward": {"helpful": {}}, "transform": logsig}) == "logsigmoid"
    assert lb.study_of({"reward": two}) == "combination" and lb.study_of({"reward": ens("min")}) == "single"


def test_parse_at_kl() -> None:
    assert lb.parse_at_kl(None) == {}
    assert lb.parse_at_kl(["0.5"]) == {"single": 0.5, "combination": 0.5}
    assert lb.parse_at_kl(["0.5", "combination=0.2"]) == {"single": 0.5, "combination": 0.2}
    with pytest.raises(SystemExit, match="unknown study 'both'; expected one of"):
        lb.parse_at_kl(["both=1"])
    with pytest.raises(SystemExit, match="'x' is not a number"):
        lb.parse_at_kl(["single=x"])


# ----------------------------------------------------------------------------------------- pure parts
def row(beta: float, win: float, kl: float, method: str = "ppo:raw") -> Row:
    stats = {"gold/win_rate_helpful": (win, 0.01), "gold/kl_to_sft": (kl, 0.1)}
    return Row(method, beta, 3, stats, [])


def test_best_beta_takes_the_best_mean_then_the_lower_kl() -> None:
    rows = [row(0.05, 0.55, 3.0), row(0.2, 0.60, 2.0), row(0.5, 0.60, 1.0), row(1.0, math.nan, 0.5)]
    assert lb.best_beta(rows, "gold/win_rate_helpful").beta == 0.5  # 0.60 twice: KL 1 beats KL 2
    assert lb.best_beta(rows[:2], "gold/win_rate_helpful").beta == 0.2
    assert lb.best_beta(rows[3:], "gold/win_rate_helpful") is None


def test_roundest_number_of_an_interval() -> None:
    assert lb.roundest(0.17, 0.21) == 0.2  # middle 0.19 → 0.2 (1 digit) is inside
    assert lb.roundest(0.41, 0.45) == 0.43  # 0.4 is outside; 2 digits
    assert lb.roundest(1.3, 1.9) == 1.6  # middle 1.6: 2 is outside


def test_auto_at_kl_is_the_kl_most_methods_reach_in_all_seeds() -> None:
    # A covers [0.4, 1.0] in both seeds, B [0.62, 0.7], C (one seed) [1.5, 3]: A and B meet on [0.62, 0.7]
    hulls = {
        "A": {0: [(0.3, 1.2)], 1: [(0.4, 1.0)]},
        "B": {0: [(0.5, 0.7)], 1: [(0.62, 2.0)]},
        "C": {0: [(1.5, 3.0)]},
    }
    assert lb.auto_at_kl(hulls, {"A": 2, "B": 2, "C": 1}) == 0.7  # middle 0.66 → 0.7
    # B and C reach [1.5, 3] in 2 seeds: with 2 seeds each they win (2 full groups; middle 2.25 → 2); seen
    # with 3 seeds they are never full, and A's [0.2, 1] (middle 0.6) beats their 4 (method, seed) pairs
    hulls = {"A": {0: [(0.2, 1.0)], 1: [(0.2, 1.0)]}} | {m: {0: [(1.5, 3.0)], 1: [(1.5, 3.0)]} for m in "BC"}
    assert lb.auto_at_kl(hulls, {"A": 2, "B": 2, "C": 2}) == 2.0
    assert lb.auto_at_kl(hulls, {"A": 2, "B": 3, "C": 3}) == 0.6
    assert math.isnan(lb.auto_at_kl({}, {}))


def run(method: str, beta: float, seed: int, kls: list[float], wins: list[float]) -> Run:
    steps = [30 * (i + 1) for i in range(len(kls))]
    scalars = {"gold/kl_to_sft": list(zip(steps, kls)), "gold/win_rate_helpful": list(zip(steps, wins))}
    return Run(Path(f"{method}-{beta}-{seed}"), method, beta, seed, scalars, [], method.partition(":")[0])


def test_leaderboard_ranks_by_matched_kl_pairs_the_gain_by_seed_and_reports_the_best_beta() -> None:
    runs = [
        # ppo:raw at KL 1: seed 0 (0.5, .54)→(1.5, .58) .56; seed 1 (0.5, .50)→(2.5, .58) .52; β .5 stays < 1
        run("ppo:raw", 0.2, 0, [0.5, 1.5], [0.54, 0.58]),
        run("ppo:raw", 0.2, 1, [0.5, 2.5], [0.50, 0.58]),
        run("ppo:raw", 0.5, 0, [0.2, 0.6], [0.55, 0.60]),
        run("ppo:raw", 0.5, 1, [0.2, 0.6], [0.55, 0.62]),
        # ppo:logsigmoid: seed 0 (0, .50)→(2, .70): .60; seed 1 (0.5, .55)→(1.5, .59): .57
        run("ppo:logsigmoid", 0.2, 0, [0.0, 2.0], [0.50, 0.70]),
        run("ppo:logsigmoid", 0.2, 1, [0.5, 1.5], [0.55, 0.59]),
        run("grpo:raw", 0.2, 0, [0.2, 0.8], [0.52, 0.66]),  # never reaches KL 1
    ]
    entries, rows = lb.leaderboard(runs, "gold/win_rate_helpful", 1.0)
    assert [e.method for e in entries] == ["ppo:logsigmoid", "ppo:raw", "grpo:raw"]
    logsig, raw, grpo = entries
    assert logsig.at_kl == pytest.approx((0.585, 0.015)) and logsig.n_at_kl == 2
    assert raw.at_kl == pytest.approx((0.54, 0.02)) and raw.baseline == "ppo:raw"
    assert logsig.gain == pytest.approx((0.045, 0.005)) and logsig.n_gain == 2  # +.04, +.05
    assert raw.best.beta == 0.5 and raw.best.stats["gold/win_rate_helpful"] == pytest.approx((0.61, 0.01))
    assert math.isnan(grpo.at_kl[0]) and grpo.n_at_kl == 0 and grpo.best.beta == 0.2
    md = lb.table(entries, "single", 1.0)
    assert (
        "| 1 | ppo | logsigmoid | 0.585 ± 0.015 (n = 2) | +0.045 ± 0.005 (n = 2) | 0.2 | 0.645 ± 0.055" in md
    )
    assert "| 2 | ppo | raw | 0.540 ± 0.020 (n = 2) | baseline | 0.5 | 0.610 ± 0.010 (n = 2) | 0.600" in md
    assert "| 3 | grpo | raw | not reached | baseline | 0.2 | 0.660 (n = 1)" in md
    assert len(rows) == 4  # (method, β) rows of analyze_sweep.summarise


# ------------------------------------------------------------------------------------- job folders → md
def write_job(job: Path, cfg: dict, kls: list[float], wins: list[float], both: list[float]) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with SummaryWriter(str(job / "tensorboard")) as w:
        for i, (kl, win, b) in enumerate(zip(kls, wins, both)):
            w.add_scalar("gold/kl_to_sft", kl, 30 * (i + 1))
            w.add_scalar("gold/win_rate_helpful", win, 30 * (i + 1))
            w.add_scalar("gold/win_rate_both", b, 30 * (i + 1))
    rows = [{"prompt_id": 0, "difficulty": "hard", "gold_helpful": 1.0, "gold_helpful_sft": 1.0}]
    (job / "tensorboard" / "gold_eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_build_ranks_each_study_of_the_given_folders(tmp_path: Path) -> None:
    one = {"helpful": {"path": None}}
    ens = {"helpful": {"path": None, "ensemble": {"seeds": [0, 1, 2], "aggregate": "min", "k": 1.0}}}
    two = {"helpful": {"path": None}, "harmless": {"path": None}}
    ident, logsig = {"_target_": "x.Identity"}, {"_target_": "x.LogSigmoid"}
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in (0, 1):
        base = {"seed": seed, "task": {"name": "ppo", "module": {"kl_coef": 0.2}}, "transform": ident}
        # one reward: raw at KL 1 → .52/.54; the ensemble min → .56/.60 (gain +.04, +.06)
        write_job(
            a / f"{seed}",
            base | {"reward": one},
            [0.5, 1.5],
            [0.50 + 0.02 * seed, 0.54 + 0.02 * seed],
            [0.2] * 2,
        )
        write_job(
            a / f"{2 + seed}", base | {"reward": ens}, [0.5, 1.5], [0.52, 0.60 + 0.08 * seed], [0.2] * 2
        )
        # two rewards: better on both at KL 0.2 (midway) → raw+sum .25/.27, logsigmoid+sum .24/.24
        agg = {"aggregator": {"_target_": "x.Sum"}, "reward": two}
        write_job(b / f"{seed}", base | agg, [0.1, 0.3], [0.5, 0.5], [0.24 + 0.02 * seed, 0.26 + 0.02 * seed])
        write_job(b / f"{2 + seed}", base | agg | {"transform": logsig}, [0.1, 0.3], [0.5, 0.5], [0.23, 0.25])
    out = tmp_path / "out"
    with pytest.warns(SweepWarning, match="skipping .*: the same"):  # b twice: each job once
        boards = lb.build([a, b, b], out)
    assert [e.method for e in boards["single"]] == ["ppo:ens_min", "ppo:raw"]
    assert [e.method for e in boards["combination"]] == ["ppo:raw+sum", "ppo:logsigmoid+sum"]
    md = (out / "leaderboard.md").read_text()
    # hulls [0.5, 1.5] → X = 1 (single); [0.1, 0.3] → X = 0.2 (combination)
    assert "matched KL X = 1 (chosen" in md and "matched KL X = 0.2 (chosen" in md
    assert "| 1 | ppo | ens_min | 0.580 ± 0.020 (n = 2) | +0.050 ± 0.010 (n = 2) |" in md
    assert "| 2 | ppo | logsigmoid+sum | 0.240 ± 0.000 (n = 2) | -0.020 ± 0.010 (n = 2) |" in md
    assert md.index("## One reward") < md.index("## Two rewards")
    for name in ("leaderboard.png", "single_vs_kl.png", "combination_vs_kl.png"):
        assert (out / name).stat().st_size > 1000
    lb.build([a], out, {"single": 0.75}, wall_time=12.4)
    md = (out / "leaderboard.md").read_text()
    assert "Wall time of the whole command (sweeps and analyses): 12 min." in md and "## Two" not in md
    assert "matched KL X = 0.75 (given by --at-kl)" in md
