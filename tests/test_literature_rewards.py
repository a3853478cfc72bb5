"""End to end on the tiny world: `+transform=sigmoid` (PAR) and `reward=helpful_ensemble` (three seeds)
compose from the command line, the ensemble's members are three cached stages, and the reward PPO gets is
the bounded PAR reward of the members' mean − k·std."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_pipeline import cli
from test_ppo import PPO_FAST, RewardSpy, ppo
from transformers import AutoModelForSequenceClassification

from conftest import TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.data.tokenize import encode_examples, pad_batch
from lit_rlhf.models.scoring import reward_scores
from lit_rlhf.rewards.ensemble import RewardEnsemble
from lit_rlhf.run.pipeline import ensure_stage

pytestmark = pytest.mark.slow  # PPO on the tiny world's stages, and train.py

ENSEMBLE = [
    "reward=helpful_ensemble",
    "reward.helpful.ensemble.k=0.5",
    "+transform=sigmoid",
    "transform.samples=2",
]


def test_helpful_ensemble_with_par_in_ppo(tmp_path, stage_cache):
    # 1. the members: one reward-model stage per seed, cached; seed 0 is the usual helpful reward model
    with hydra_cfg(tmp_path / "stages", [*TINY_WORLD, *TINY_STAGES], cache=stage_cache) as cfg:
        usual = ensure_stage(cfg, "reward_model", ["reward=helpful"])
        built = [ensure_stage(cfg, "reward_model", ["reward=helpful", f"seed={s}"]) for s in range(3)]
    assert built[0] == usual and len(set(built)) == 3
    assert all(p.parent.name.startswith("reward_model-helpful-") for p in built)

    spy = RewardSpy()
    trainer, cbs, run_dir = ppo(tmp_path, stage_cache, [*ENSEMBLE, "task.iterations=2"], spy)
    members = [Path(p) for p in json.loads((run_dir / "stages.json").read_text())["reward_models"]["helpful"]]
    assert members == built  # the run used exactly those cached stages, in seed order
    folders = [AutoModelForSequenceClassification.from_pretrained(p).eval() for p in members]
    heads = [f.score.weight for f in folders]
    assert not torch.allclose(heads[0], heads[1]) and not torch.allclose(heads[1], heads[2])

    # 2. the run's helpful reward is mean − 0.5·std of the three folders' scores
    module = trainer.lightning_module
    ens = module.reward_models["helpful"]
    assert isinstance(ens, RewardEnsemble) and (ens.aggregate, ens.k) == ("mean_minus_std", 0.5)
    tok = module.tokenizer
    prompts = [r.prompt for r in trainer.datamodule.val_records[:4]]
    responses = ["pan oven salt first next", "use caution and a professional", "the a stupid", "guitar chord"]
    rows = [ids for ids, _ in encode_examples(tok, prompts, responses, 16, 48, False)]
    ids, mask = pad_batch(rows, tok.pad_token_id, left=True)
    with torch.no_grad():
        each = torch.stack([reward_scores(f, ids, mask) for f in folders], -1)  # (4, 3)
        torch.testing.assert_close(
            module.score(ids, mask)[:, 0], each.mean(-1) - 0.5 * each.std(-1, correction=0), atol=1e-5, rtol=0
        )

    # 3. the reward PPO got at the first step: u = mean over the 2 sampled references of σ(r − r_ref,m)
    cb = cbs["RewardTransformCallback"]
    scores, pids = spy.scores[0], spy.prompt_ids[0]
    refs = cb.table.lookup_refs(pids, "helpful")  # (B, 2)
    assert refs.shape == (len(pids), 2)
    expected = torch.sigmoid(scores[:, :1] - refs).mean(-1)
    torch.testing.assert_close(spy.rewards[0], expected)
    assert ((spy.rewards[0] > 0) & (spy.rewards[0] < 1)).all()


@pytest.mark.slow
def test_cli_sigmoid_and_ensemble(tmp_path, stage_cache):
    """`python train.py +transform=sigmoid reward=helpful_ensemble_harmless aggregator=min` as typed, with
    the world's refusal as the harmless reference."""
    out = cli(
        *TINY_WORLD,
        *TINY_STAGES,
        *[o for o in PPO_FAST if not o.startswith("task.iterations")],
        "task.iterations=2",
        "logger=tensorboard",
        "+transform=sigmoid",
        "transform.samples=2",
        "reward=helpful_ensemble_harmless",
        "aggregator=min",
        "reward.harmless.reference.statistic=refusal",
        f"paths.cache_dir={stage_cache}",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())["reward_models"]
    assert len(set(stages["helpful"])) == 3 and isinstance(stages["harmless"], str)
    logs = out.stdout + out.stderr + "".join(p.read_text() for p in (tmp_path / "run").rglob("*.log"))
    assert "r_ref[helpful] (first 2 of 2 samples): 2 per prompt" in logs
    assert "r_ref[harmless] (refusal 'use caution and a professional'): 1 per prompt" in logs
    (events,) = (tmp_path / "run" / "tensorboard").rglob("events.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    for name in ("helpful", "harmless"):
        u = [e.value for e in acc.Scalars(f"reward/{name}_transformed")]
        w = [e.value for e in acc.Scalars(f"reward/{name}_weight")]
        assert u and all(0 < x < 1 for x in u)  # PAR is bounded (log-sigmoid would be < 0, raw unbounded)
        assert all(0 < x <= 0.25 for x in w)  # du/dr = σ(1 − σ) ≤ 1/4
