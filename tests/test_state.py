"""PPO state that stays exact: strict loading with only the frozen models absent, modules that rebuild
from their checkpoint, the missing-EOS penalty in reward-model units, and stage keys that see tokenisation."""

from __future__ import annotations

import pytest
import test_resume
import torch
from test_resume import RESUMABLE, run_ppo

from conftest import TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.run.pipeline import stage_config, stage_hash


@pytest.mark.slow
def test_resume_is_strict_except_for_the_frozen_models(tmp_path, stage_cache, crashed_ppo, monkeypatch):
    """A checkpoint lacking a trained weight (or holding an unknown one) is refused; the frozen reference
    and reward models, which checkpoints leave out on purpose, are the only allowed absentees."""
    path = crashed_ppo / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert not any(k.startswith(("ref.", "reward_models.")) for k in ckpt["state_dict"])  # left out
    for name, edit in (("missing", lambda sd: sd.pop("critic.head.weight")), ("extra", None)):
        bad = dict(ckpt)
        bad["state_dict"] = dict(ckpt["state_dict"])
        if edit is None:
            bad["state_dict"]["actor.not_a_weight"] = torch.zeros(1)
        else:
            edit(bad["state_dict"])
        file = tmp_path / f"{name}.ckpt"
        torch.save(bad, file)
        monkeypatch.setattr(test_resume, "RESUMABLE", [*RESUMABLE, f"ckpt_path={file}"])
        with pytest.raises(RuntimeError, match="critic.head.weight" if edit else "actor.not_a_weight"):
            run_ppo(tmp_path / name, stage_cache)


@pytest.mark.slow
def test_ppo_module_rebuilds_from_its_checkpoint(tmp_path, stage_cache, crashed_ppo):
    """save_hyperparameters: `PPOModule.load_from_checkpoint(path, <the networks>)` gives the same settings
    and the trained weights."""
    import lit_rlhf.run.pipeline as pipeline
    from lit_rlhf.tasks.ppo import PPOModule

    path = crashed_ppo / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["kl_target"] == 1.0 and "actor" not in ckpt["hyper_parameters"]
    with hydra_cfg(tmp_path / "d", [*TINY_WORLD, *TINY_STAGES, *RESUMABLE], cache=stage_cache) as cfg:
        policy = pipeline.ensure_stage(cfg, "sft")
        names = ("helpful", "harmless")
        rms = {n: pipeline.ensure_stage(cfg, "reward_model", [f"reward={n}"]) for n in names}
        models = pipeline.ppo_models(cfg, policy, rms)
    module = PPOModule.load_from_checkpoint(path, weights_only=True, optimizer=torch.optim.AdamW, **models)
    assert module.hparams.kl_target == 1.0 and module.hparams.value_lr == ckpt["hyper_parameters"]["value_lr"]
    assert module.iteration == ckpt["ppo_iteration"]
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(module.state_dict()[k], v), k


@pytest.mark.slow
def test_missing_eos_penalty_is_in_raw_reward_units(tmp_path, stage_cache, monkeypatch):
    """The penalty lowers each reward model's raw score before the transform: under log-sigmoid a cut
    response gets log σ(r − p − r_ref), not log σ(r − r_ref) − p."""
    from test_ppo import RewardSpy

    from lit_rlhf.tasks import policy as policy_mod

    rollouts = []
    real = policy_mod.PolicyModule.rollout
    monkeypatch.setattr(
        policy_mod.PolicyModule,
        "rollout",
        lambda self, batch, **kw: rollouts.append(real(self, batch, **kw)) or rollouts[-1],
    )
    spy = RewardSpy()
    extra = ["task.iterations=2", "task.val_check_interval=2", "task.module.missing_eos_penalty=3.0"]
    monkeypatch.setattr(test_resume, "RESUMABLE", [*RESUMABLE, *extra, "task.module.max_new_tokens=3"])
    run_ppo(tmp_path, stage_cache, [spy])
    for ro, seen in zip(rollouts, spy.scores):
        cut = (~ro.has_eos).float()[:, None]  # (B, 1)
        assert cut.sum() > 0  # 3 new tokens: some responses are cut
        torch.testing.assert_close(seen, ro.scores - 3.0 * cut)  # what the transform received
    assert all((r <= 0).all() for r in spy.rewards)  # log σ(·) ≤ 0: the penalty went in before it


@pytest.mark.slow
def test_stage_keys_change_with_tokenisation_settings(tmp_path):
    """A stage (SFT, reward model) is rebuilt when its prompt truncation or chat-template setting changes."""
    base = [*TINY_WORLD, *TINY_STAGES]
    keys = {}
    for name, extra in (
        ("base", []),
        ("trunc", ["task.datamodule.max_prompt_tokens=8"]),
        ("template", ["data.chat_template=false"]),
    ):
        with hydra_cfg(tmp_path / name, base) as cfg:
            from omegaconf import open_dict

            with open_dict(cfg):
                cfg.pipeline.sft = [*cfg.pipeline.sft, *extra]
            keys[name] = stage_hash(stage_config(cfg, "sft"))
    assert len(set(keys.values())) == 3, keys


@pytest.mark.slow
def test_stage_keys_do_not_depend_on_where_the_cache_is(tmp_path):
    """The same stage config with its cache and root folders elsewhere (a relative vs an absolute cache
    path, a moved checkout) has the same key: it is found, not trained again."""
    keys = []
    for where in ("a", "b/deeper"):
        with hydra_cfg(tmp_path / where, [*TINY_WORLD, *TINY_STAGES]) as cfg:
            sub = stage_config(cfg, "sft")
            assert str(tmp_path / where) in str(sub.data.world.out_dir)  # the data paths do differ
            keys.append(stage_hash(sub))
    assert keys[0] == keys[1]
