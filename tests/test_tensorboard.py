"""What a run shows in TensorBoard: the custom-scalars layout, and every tag docs/dashboard.md lists, read
from a real ``tensorboard`` server on localhost over its HTTP API (scalars, histograms, text, layout)."""

from __future__ import annotations

import glob
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

from conftest import ROOT, TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.callbacks import GoldEvalCallback, TensorBoardLayout
from lit_rlhf.callbacks.dashboard import build_layout, writer_layout
from lit_rlhf.run.pipeline import run
from lit_rlhf.world.generate import PROPERTIES

REWARD_NAMES = ("helpful", "harmless")  # conf/reward/helpful_harmless.yaml
TEXT_TAG = "samples/text_summary"  # GoldEvalCallback's table, as SummaryWriter.add_text names it


# ------------------------------------------------------------------ the layout (no server)
class PolicyStandIn(L.LightningModule):
    """What the layout reads from a policy module: ``reward_names``, ``algorithm`` and ``critic``."""

    def __init__(self, reward_names: list[str], algorithm: str, critic: bool) -> None:
        super().__init__()
        self.reward_names, self.algorithm = reward_names, algorithm
        self.critic = object() if critic else None


def written_layout(log_dir: Path) -> layout_pb2.Layout:
    """The custom-scalars layout stored in the event file of ``log_dir``."""
    acc = EventAccumulator(glob.glob(str(log_dir / "events.*"))[0])
    acc.Reload()
    content = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0]
    return layout_pb2.Layout.FromString(content)


def fit_start(tmp: Path, module: L.LightningModule, callbacks: list, logger) -> TensorBoardLayout:
    """Run the layout callback's fit-start hook on a real trainer with ``logger``; returns the callback."""
    cb = TensorBoardLayout()
    trainer = L.Trainer(logger=logger, callbacks=[*callbacks, cb], default_root_dir=tmp, accelerator="cpu")
    cb.on_fit_start(trainer, module)
    if logger:
        logger.finalize("success")
    return cb


def matched(regexes: list[str], tags: set[str]) -> set[str]:
    """Tags the custom-scalars plugin shows for a chart: those a regex ``re.match``-es."""
    return {t for t in tags if any(re.match(r, t) for r in regexes)}


def test_layout_of_a_two_reward_ppo_run(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    module = PolicyStandIn(["helpful", "harmless"], "ppo", critic=True)
    fit_start(tmp_path, module, [GoldEvalCallback()], logger)
    layout = written_layout(tmp_path / "tb")
    assert [c.title for c in layout.category] == ["transform", "gold", "PPO"]
    charts = {c.title: {ch.title: list(ch.multiline.tag) for ch in c.chart} for c in layout.category}
    expected = build_layout(REWARD_NAMES, "ppo", PROPERTIES)
    universe = {t for charts in expected.values() for tags in charts.values() for t in tags}
    transform, gold, algo = charts["transform"], charts["gold"], charts["PPO"]
    assert matched(transform["helpful: raw vs transformed"], universe) == {
        "reward/helpful_raw",
        "reward/helpful_transformed",
    }
    assert matched(transform["harmless: raw vs transformed"], universe) == {
        "reward/harmless_raw",
        "reward/harmless_transformed",
    }
    assert matched(transform["margin r − r_ref (mean)"], universe) == {
        "reward/helpful_margin",
        "reward/harmless_margin",
    }
    assert matched(transform["share of rollouts above r_ref"], universe) == {
        "reward/helpful_above_ref",
        "reward/harmless_above_ref",
    }
    assert matched(transform["mean du/dr (gradient weight)"], universe) == {
        "reward/helpful_weight",
        "reward/harmless_weight",
    }
    assert matched(gold["win rate vs SFT (0.5 = as good as SFT)"], universe) == {
        "gold/win_rate_helpful",
        "gold/win_rate_harmless",
        "gold/win_rate_both",
    }
    assert matched(gold["proxy − gold win rate (> 0: reward hacking)"], universe) == {"gold/proxy_minus_gold"}
    assert matched(gold["KL(π ‖ π_SFT): held-out, rollouts"], universe) == {"gold/kl_to_sft", "ppo/kl"}
    assert matched(algo["losses"], universe) == {"ppo/pg_loss", "ppo/vf_loss", "train/loss"}
    assert matched(algo["clip fraction"], universe) == {"ppo/clipfrac", "ppo/vf_clipfrac"}
    assert matched(algo["β (KL coefficient)"], universe) == {"ppo/beta"}


def test_layout_follows_algorithm_critic_and_gold(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    module = PolicyStandIn(["helpful"], "grpo", critic=False)
    fit_start(tmp_path, module, [GoldEvalCallback(enabled=False)], logger)
    layout = written_layout(tmp_path / "tb")
    assert [c.title for c in layout.category] == ["transform", "GRPO"]  # gold evaluation off
    tags = {t for c in layout.category for ch in c.chart for t in ch.multiline.tag}
    assert re.escape("grpo/pg_loss") + "$" in tags
    assert not any("vf_" in t or t.startswith("ppo/") or "harmless" in t for t in tags)


def test_layout_of_reward_model_and_sft():
    rm = build_layout(reward_model=True)
    assert list(rm) == ["training"]
    assert {t for tags in rm["training"].values() for t in tags} == {
        "train/loss",
        "val/loss",
        "train/rm_acc",
        "val/rm_acc",
        "val/margin",
        "val/reward_mean",
        "val/reward_std",
    }
    assert build_layout() == {"training": {"loss: train, validation": ["train/loss", "val/loss"]}}


def test_no_tensorboard_logger_no_layout(tmp_path):
    module = PolicyStandIn(["helpful"], "ppo", critic=True)
    assert fit_start(tmp_path, module, [], False).layout is None  # logger=False: no logger at all
    cb = fit_start(tmp_path, module, [], CSVLogger(tmp_path / "csv"))
    assert cb.layout is None
    assert not list(tmp_path.rglob("events.*"))


names = st.lists(st.text("ab._+*$()[]x", min_size=1, max_size=5), min_size=1, max_size=4, unique=True)


@settings(max_examples=60, deadline=None)
@given(names)
def test_each_chart_regex_matches_only_its_own_tags(reward_names):
    """Reward names with regex characters or that extend one another (``a`` and ``a_raw``) still give each
    chart exactly its tags, under the plugin's ``re.match`` (anchored at the start only)."""
    reward_names = [*reward_names, reward_names[0] + "_raw"]
    layout = build_layout(reward_names, "ppo", PROPERTIES)
    universe = {t for charts in layout.values() for tags in charts.values() for t in tags}
    for section, charts in writer_layout(layout).items():
        for title, (kind, regexes) in charts.items():
            assert kind == "Multiline"
            assert matched(regexes, universe) == set(layout[section][title]), (section, title)


# ------------------------------------------------------------------ a real TensorBoard server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard(logdir: Path, timeout: float = 60.0) -> Iterator[Callable[[str], Any]]:
    """A ``tensorboard`` process serving ``logdir`` on a free localhost port (every event file loaded before
    it answers); yields ``get(path)`` → the decoded JSON of ``http://127.0.0.1:PORT/<path>``. The process
    is stopped on exit."""
    port = free_port()
    out = (logdir / "tensorboard-server.log").open("w")
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--load_fast=false", "--reload_interval=0", "--reload_task=blocking"]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"

    def get(path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return json.loads(r.read())

    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                get("data/plugins_listing")
                break
            except (urllib.error.URLError, ConnectionError):
                log = (logdir / "tensorboard-server.log").read_text()
                assert proc.poll() is None, f"tensorboard exited with {proc.returncode}:\n{log}"
                assert time.monotonic() < deadline, f"tensorboard did not answer in {timeout:.0f} s:\n{log}"
                time.sleep(0.3)
        yield get
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def readme_tags() -> list[str]:
    """docs/dashboard.md's "What TensorBoard shows" tags, ``<name>`` / ``<prop>`` / ``{a,b}`` expanded."""
    text = (ROOT / "docs" / "dashboard.md").read_text()
    assert "## What TensorBoard shows" in text, "docs/dashboard.md lost its 'What TensorBoard shows' section"
    section = text.split("## What TensorBoard shows", 1)[1].split("\n#", 1)[0]
    tags = [t for t in re.findall(r"`([^`\s]+)`", section) if re.fullmatch(r"[a-z_]+/[\w<>{},]+", t)]
    out = []
    for tag in tags:
        todo = [tag]
        while todo:
            t = todo.pop()
            if m := re.search(r"\{([^}]*)\}", t):
                todo += [t[: m.start()] + alt + t[m.end() :] for alt in m.group(1).split(",")]
            elif "<name>" in t:
                todo += [t.replace("<name>", n) for n in REWARD_NAMES]
            elif "<prop>" in t:
                todo += [t.replace("<prop>", p) for p in PROPERTIES]
            else:
                out.append(t)
    assert len(out) >= 20, f"docs/dashboard.md's tag list was not parsed (found {out})"
    return out


def plugin_of(tag: str) -> str:
    return "histograms" if tag.startswith("reward_hist/") else "scalars"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, stage_cache, ppo_runs) -> dict[str, Path]:
    """Finished tiny runs with the TensorBoard logger: PPO (log-sigmoid transform, conftest's shared run),
    SFT, a reward model."""
    tmp = tmp_path_factory.mktemp("tb_runs")
    short = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2", "task.max_epochs=1"]
    short += ["task.log_every_n_steps=1", "task.module.warmup_steps=2", "logger=tensorboard"]
    for name, task in {"sft": ["task=sft"], "rm": ["task=reward_model", "reward=helpful"]}.items():
        with hydra_cfg(tmp / name, [*TINY_WORLD, *TINY_STAGES, *task, *short], cache=stage_cache) as cfg:
            run(cfg)
    shutil.copytree(ppo_runs["ls"][2] / "tensorboard", tmp / "ppo" / "run" / "tensorboard")  # one logdir
    return {k: tmp / k / "run" / "tensorboard" for k in ("ppo", "sft", "rm")}


def served(get: Callable[[str], Any], run: str) -> dict[str, set[str]]:
    """The tags of ``run`` in each of the scalars, histograms and text plugins, as the server lists them."""
    return {
        "scalars": set(get("data/plugin/scalars/tags").get(run, {})),
        "histograms": set(get("data/plugin/histograms/tags").get(run, {})),
        "text": set(get("data/plugin/text/tags").get(run, [])),
    }


@pytest.mark.slow
def test_ppo_run_through_tensorboard_http_api(runs):
    logdir = runs["ppo"]
    with tensorboard(logdir) as get:
        listing = get("data/plugins_listing")
        for plugin in ("scalars", "histograms", "text", "custom_scalars"):
            assert listing[plugin]["enabled"], f"TensorBoard does not offer the {plugin} plugin for this run"
        tags = served(get, ".")
        layout = get("data/plugin/custom_scalars/layout")
        table = get(f"data/plugin/text/text?run=.&tag={TEXT_TAG}")
        regex = urllib.parse.quote(re.escape("reward/helpful_raw") + "$")
        chart = get(f"data/plugin/custom_scalars/scalars?run=.&tag={regex}")

    # every tag is in exactly one plugin
    assert not tags["scalars"] & tags["histograms"]
    assert not (tags["scalars"] | tags["histograms"]) & tags["text"]
    # every documented tag of PPO in the plugin it belongs to (the reward-model-only ones are checked below)
    for tag in readme_tags():
        if tag not in ("val/loss", "val/rm_acc", "val/margin"):
            assert tag in tags[plugin_of(tag)], f"{tag} missing from TensorBoard's {plugin_of(tag)} plugin"
    assert {f"reward_hist/{n}_{w}" for n in REWARD_NAMES for w in ("raw", "transformed", "margin")} <= tags[
        "histograms"
    ]
    assert tags["text"] == {TEXT_TAG}
    assert "SFT response" in table[0]["text"] and "<table>" in table[0]["text"]

    # the layout's sections, and every chart shows logged scalars (a misspelt tag would leave one empty)
    assert [c["title"] for c in layout["category"]] == ["transform", "gold", "PPO"]
    for category in layout["category"]:
        for ch in category["chart"]:
            for r in ch["multiline"]["tag"]:
                assert matched([r], tags["scalars"]), f"chart {ch['title']!r}: {r} matches no scalar"
    # the server's own regex matching gives the chart exactly its tag, one point per PPO iteration
    assert chart["regex_valid"] and list(chart["tag_to_events"]) == ["reward/helpful_raw"]
    assert len(chart["tag_to_events"]["reward/helpful_raw"]) == 4


@pytest.mark.slow
def test_sft_and_reward_model_runs_through_tensorboard_http_api(runs):
    logdir = runs["sft"].parents[2]  # one server for the three runs <tmp>/{ppo,sft,rm}/run/tensorboard
    with tensorboard(logdir) as get:
        ppo_tags, sft, rm = (served(get, f"{k}/run/tensorboard") for k in ("ppo", "sft", "rm"))
        layout = get("data/plugin/custom_scalars/layout")
    for tag in ("train/loss", "val/loss"):
        assert tag in sft["scalars"] and tag in rm["scalars"]
    for tag in ("val/rm_acc", "val/margin", "train/rm_acc"):
        assert tag in rm["scalars"] and tag not in sft["scalars"]
    for tags in (sft, rm):
        assert not tags["histograms"] and not tags["text"]
    # every documented tag is in its plugin in one of the three runs, and never in another plugin
    for tag in readme_tags():
        home = plugin_of(tag)
        assert any(tag in t[home] for t in (sft, rm, ppo_tags)), f"{tag} in no run's {home} plugin"
        for t in (sft, rm, ppo_tags):
            assert not any(tag in t[p] for p in t if p != home), f"{tag} logged outside {home}"
    # the server merges the runs' layouts: PPO's sections, then one "training" section (the reward model's
    # charts include SFT's)
    assert [c["title"] for c in layout["category"]] == ["transform", "gold", "PPO", "training"]
    charts = {ch["title"]: ch["multiline"]["tag"] for ch in layout["category"][-1]["chart"]}
    assert set(charts) == set(build_layout(reward_model=True)["training"])
    for title, regexes in charts.items():
        assert matched(regexes, rm["scalars"]), f"chart {title!r} shows nothing of the reward model run"
