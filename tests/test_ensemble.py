"""Reward-model ensembles (Coste et al., 2024; ``lit_rlhf.rewards.ensemble``): one score per sequence, the
members' aggregate, through the one scoring rule; the config keys and their errors."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from tiny_hf import make_config, make_tokenizer
from transformers import AutoModelForSequenceClassification

from conftest import hydra_cfg
from lit_rlhf.models.scoring import reward_scores
from lit_rlhf.rewards.ensemble import AGGREGATES, EnsembleSpec, RewardEnsemble


@pytest.fixture(scope="module")
def members():
    """Three tiny random Llama reward models from seeds 0, 1, 2 (different heads and backbones)."""
    tok = make_tokenizer("llama")
    cfg = make_config("llama", tok, hidden=32, layers=1)
    cfg.num_labels = 1
    out = []
    for seed in range(3):
        torch.manual_seed(seed)
        out.append(AutoModelForSequenceClassification.from_config(cfg).eval())
    return out


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[1, -2:] = 0  # right padding: the score is read at the last attended token
    return ids, mask


@pytest.mark.parametrize("aggregate", AGGREGATES)
@torch.no_grad()
def test_ensemble_score_is_the_aggregate_of_its_members(members, aggregate):
    ids, mask = batch()
    each = torch.stack([reward_scores(m, ids, mask) for m in members], -1)  # (4, 3)
    assert each.std(-1).min() > 1e-4  # the members disagree, so the aggregates differ
    k = 0.5
    mean, var = each.mean(-1), each.var(-1, correction=0)
    expected = {
        "mean_minus_std": mean - k * var.sqrt(),
        "mean_minus_var": mean - k * var,
        "min": each.min(-1).values,
        "mean": mean,
    }[aggregate]
    ens = RewardEnsemble(members, aggregate, k)
    torch.testing.assert_close(reward_scores(ens, ids, mask), expected)  # what the policy tasks call
    torch.testing.assert_close(ens(ids, mask), expected)


def test_ensemble_holds_each_member_once(members):
    ens = RewardEnsemble(members, "mean_minus_std", 1.0)
    assert len(ens.state_dict()) == sum(len(m.state_dict()) for m in members)
    assert sum(p.numel() for p in ens.parameters()) == sum(p.numel() for m in members for p in m.parameters())
    assert ens.settings() == {"aggregate": "mean_minus_std", "k": 1.0, "members": 3}


def test_spec_from_config_and_errors_name_the_key():
    spec = EnsembleSpec.from_config(
        "helpful", {"seeds": [0, 1, 2], "paths": None, "aggregate": "min", "k": 2}
    )
    assert spec.seeds == (0, 1, 2) and spec.paths is None and spec.aggregate == "min"
    from lit_rlhf.rewards.aggregators import Min

    assert isinstance(spec.aggregator(), Min)
    cases = {
        "reward.helpful.ensemble.aggregate must be one of": {"aggregate": "median"},
        "reward.helpful.ensemble.k must be a finite number >= 0": {"k": -1.0},
        r"reward.helpful.ensemble.seeds must list at least 2 members": {"seeds": [0]},
        r"reward.helpful.ensemble.seeds lists a member twice": {"seeds": [0, 0]},
        r"reward.helpful.ensemble.paths must list at least 2": {"paths": ["/a"]},
        r"unknown keys \['size'\]": {"size": 3},
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            EnsembleSpec.from_config("helpful", {"seeds": [0, 1], **bad})
    with pytest.raises(ValueError, match="k must be a finite"):
        EnsembleSpec.from_config("helpful", {"seeds": [0, 1], "k": float("inf")})


def test_shipped_ensemble_configs_compose(tmp_path):
    with hydra_cfg(tmp_path, ["reward=helpful_ensemble"]) as cfg:
        assert list(cfg.reward) == ["helpful"]
        spec = EnsembleSpec.from_config("helpful", cfg.reward.helpful.ensemble)
        assert spec.seeds == (0, 1, 2) and spec.aggregate == "mean_minus_std" and spec.k == 1.0
        assert cfg.reward.helpful.reference.q == 0.85  # the rest of the helpful entry, from helpful.yaml
    overrides = ["reward=helpful_ensemble_harmless", "aggregator=min", "reward.helpful.ensemble.k=2"]
    with hydra_cfg(tmp_path, overrides) as cfg:
        assert list(cfg.reward) == ["helpful", "harmless"] and cfg.aggregator._target_.endswith("Min")
        assert cfg.reward.helpful.ensemble.k == 2 and "ensemble" not in cfg.reward.harmless
    with hydra_cfg(tmp_path, ["reward=helpful"]) as cfg:  # the plain entry (and its stage hash) unchanged
        assert set(OmegaConf.to_container(cfg.reward.helpful)) == {"path", "data", "reference"}


@pytest.mark.slow  # builds the tiny world
def test_pipeline_refuses_ambiguous_ensembles(tmp_path):
    from lit_rlhf.run.pipeline import reward_model_paths, run

    both = ["reward=helpful_ensemble", "reward.helpful.path=/my/rm"]
    with (
        hydra_cfg(tmp_path, both) as cfg,
        pytest.raises(ValueError, match=r"reward.helpful.path and reward.helpful.ensemble are both set"),
    ):
        reward_model_paths(cfg, "helpful")
    members = ["reward=helpful_ensemble", "reward.helpful.ensemble.paths=[/rm/a,/rm/b]"]
    with hydra_cfg(tmp_path, members) as cfg:
        assert [str(p) for p in reward_model_paths(cfg, "helpful")] == ["/rm/a", "/rm/b"]  # nothing trained
    with (
        hydra_cfg(tmp_path, ["task=reward_model", "reward=helpful_ensemble", "logger=none"]) as cfg,
        pytest.raises(ValueError, match=r"task=reward_model reward=helpful seed=<s>"),
    ):
        run(cfg)
