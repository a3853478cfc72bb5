"""PPO end to end on the tiny world: weights move, the reference stays frozen, tags are logged, the
callback shapes the reward at every step, r_ref is cached, the saved policy loads with transformers."""

from __future__ import annotations

import glob
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.run.pipeline import ensure_stage, run

pytestmark = pytest.mark.slow  # every test trains PPO on the tiny world's stages

PPO_FAST = [
    "task.iterations=4",
    "task.val_check_interval=2",
    "task.datamodule.batch_size=8",
    "task.module.eval_samples_per_prompt=1",
    "task.callbacks.reward_transform.n_samples=2",
    "trainer.enable_progress_bar=false",
    "logger=tensorboard",
]


class RewardSpy(L.Callback):
    """Records the reward PPO receives from ``reward_fn`` at each step (wraps whatever is installed)."""

    def __init__(self) -> None:
        self.rewards: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.prompt_ids: list[torch.Tensor] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        inner = pl_module.reward_fn

        def spy(scores, prompt_ids, module):
            out = inner(scores, prompt_ids, module)
            self.scores.append(scores.clone())
            self.prompt_ids.append(prompt_ids.clone())
            self.rewards.append(out.detach().clone())
            return out

        pl_module.reward_fn = spy


def ppo(tmp: Path, cache: Path, extra: list[str], spy: L.Callback | None = None):
    """Run a few PPO iterations; returns (module, callbacks by class name, run dir)."""
    import lit_rlhf.run.pipeline as pipeline

    captured = {}
    real_make_trainer = pipeline.make_trainer

    def make_trainer(cfg, extra_callbacks=None):
        trainer = real_make_trainer(cfg, extra_callbacks)
        if spy is not None:
            trainer.callbacks.append(spy)
        captured["trainer"] = trainer
        return trainer

    pipeline.make_trainer = make_trainer
    try:
        with hydra_cfg(tmp, [*TINY_WORLD, *TINY_STAGES, *PPO_FAST, *extra], cache=cache) as cfg:
            run(cfg)
    finally:
        pipeline.make_trainer = real_make_trainer
    trainer = captured["trainer"]
    return trainer, {type(c).__name__: c for c in trainer.callbacks}, tmp / "run"


def sft_and_rm_paths(tmp: Path, cache: Path) -> tuple[Path, dict[str, Path]]:
    with hydra_cfg(tmp, [*TINY_WORLD, *TINY_STAGES], cache=cache) as cfg:
        sft = ensure_stage(cfg, "sft")
        rms = {n: ensure_stage(cfg, "reward_model", [f"reward={n}"]) for n in ("helpful", "harmless")}
    return sft, rms


@pytest.fixture(scope="module")
def runs(ppo_runs):
    return ppo_runs


def test_ppo_moves_actor_keeps_reference_and_logs(tmp_path, stage_cache, runs):
    sft_path, _ = sft_and_rm_paths(tmp_path / "probe", stage_cache)
    sft = AutoModelForCausalLM.from_pretrained(sft_path)
    trainer, cbs, run_dir, _ = runs["ls"]
    module = trainer.lightning_module
    sft_state = sft.state_dict()
    moved = [k for k, v in module.actor.state_dict().items() if not torch.equal(v, sft_state[k])]
    assert moved, "PPO did not change the actor's weights"
    for k, v in module.ref.state_dict().items():
        assert torch.equal(v, sft_state[k]), f"reference weight {k} changed"
    assert not any(p.requires_grad for p in module.ref.parameters())
    assert cbs["RewardTransformCallback"].calls == 4  # once per PPO iteration

    events = glob.glob(str(run_dir / "tensorboard" / "events.*"))
    acc = EventAccumulator(events[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in [
        "ppo/kl",
        "ppo/clipfrac",
        "ppo/beta",
        "reward/helpful_raw",
        "reward/helpful_transformed",
        "reward/harmless_raw",
        "reward/harmless_transformed",
        "reward/helpful_margin",
        "reward/helpful_above_ref",
        "reward/helpful_weight",
        "reward/total",
        "gold/win_rate_helpful",
        "gold/win_rate_harmless",
        "gold/win_rate_both",
        "gold/kl_to_sft",
        "gold/proxy_minus_gold",
    ]:
        assert tag in tags, f"{tag} not logged"
    assert len(acc.Scalars("ppo/kl")) == 4
    assert len(acc.Scalars("gold/win_rate_helpful")) == 2  # every 2 iterations
    # the transformed reward is log σ(·) ≤ 0, the raw one is not constrained
    assert all(e.value <= 0 for e in acc.Scalars("reward/helpful_transformed"))

    # the saved policy loads with plain transformers and generates
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    ids = tok(["ask cooking"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_transform_and_aggregator_change_the_reward_ppo_sees(runs):
    """Same seed, same rollouts: only ``+transform=`` and ``aggregator=`` differ, and the reward given to
    PPO differs by them (the aggregators' values by hand are in tests/test_aggregators.py)."""
    *_, raw_spy = runs["raw"]
    *_, cbs, _, ls_spy = runs["ls"]
    assert len(raw_spy.rewards) == len(ls_spy.rewards) == 4  # called at every training step
    # first iteration: identical weights and seed → identical raw scores
    torch.testing.assert_close(raw_spy.scores[0], ls_spy.scores[0])
    scores = raw_spy.scores[0]
    torch.testing.assert_close(raw_spy.rewards[0], scores.min(-1).values)  # no transform, aggregator=min
    r_ref = cbs["RewardTransformCallback"].table.lookup(ls_spy.prompt_ids[0])  # (B, 2)
    expected = torch.nn.functional.logsigmoid(scores - r_ref).sum(-1)  # Σ log σ(r − r_ref): the paper's AND
    torch.testing.assert_close(ls_spy.rewards[0], expected)
    assert not torch.allclose(ls_spy.rewards[0], raw_spy.rewards[0])


def test_reference_cache_reused_by_the_next_run(runs, stage_cache):
    """The second run with the same policy, reward models, prompts and sampling reads r_ref from the cache
    under ``paths.cache_dir`` (the key's other parts: tests/test_reference_cache.py)."""
    raw, ls = (runs[n][1]["RewardTransformCallback"] for n in ("raw", "ls"))
    assert ls.loaded_from_cache is True  # the transform and aggregator are not part of the key
    assert ls.cache_dir == raw.cache_dir == stage_cache / "reference"
    assert list(ls.cache_dir.glob("samples-*.pt"))
    torch.testing.assert_close(ls.table.values, raw.table.values)


def test_progress_bar_counts_iterations(runs):
    """The bar reads "ppo iteration i/N" (not Lightning's "Epoch 0/0") and shows KL, reward, above_ref."""
    from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

    trainer, *_ = runs["ls"]
    (bar,) = [c for c in trainer.callbacks if isinstance(c, ProgressBar)]
    assert type(bar).__name__.startswith("Iteration")
    if hasattr(bar, "_get_train_description"):
        assert bar._get_train_description(0) == "ppo iteration"
    shown = bar.get_metrics(trainer, trainer.lightning_module)
    assert {"kl", "reward", "above_ref"} <= set(shown)


def test_closing_summary_equals_the_logged_scalars(runs):
    """summary.json of a PPO run (and of the stages it used) holds the values the run logged."""
    import json

    trainer, _, run_dir, _ = runs["ls"]
    summary = json.loads((run_dir / "summary.json").read_text())
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in ("gold/win_rate_helpful", "gold/win_rate_both", "gold/kl_to_sft", "reward/helpful_above_ref"):
        assert summary["metrics"][name] == pytest.approx(logged[name])
    p, n = summary["metrics"]["gold/win_rate_helpful"], 0
    n = len(trainer.datamodule.val_records) * trainer.lightning_module.eval_samples_per_prompt
    assert summary["errors"]["gold/win_rate_helpful"] == pytest.approx((p * (1 - p) / n) ** 0.5)
    assert "reward/helpful_above_ref_start" in summary["metrics"]  # the transform's activity at the start
    assert (run_dir / "summary.txt").read_text().strip()
    stages = json.loads((run_dir / "stages.json").read_text())
    sft_run = Path(stages["policy"]).parent
    assert json.loads((sft_run / "summary.json").read_text())["task"] == "sft"
