"""Typed settings of the policy modules (``lit_rlhf.tasks.config``): flat Hydra keys and ``config=`` objects
build the same config; wrong keys and values are refused naming ``task.module.<key>``."""

from __future__ import annotations

import dataclasses

import pytest

from lit_rlhf.tasks.config import (
    CriticFreeConfig,
    GRPOConfig,
    PolicyConfig,
    PPOConfig,
    ReinforcePPConfig,
    RLOOConfig,
    build_config,
)


def test_flat_keys_and_config_object_build_the_same_config() -> None:
    flat = build_config(PPOConfig, None, {"kl_coef": 0.2, "value_lr": 3e-4, "samples_per_prompt": 2})
    assert flat == build_config(PPOConfig, PPOConfig(kl_coef=0.2, value_lr=3e-4, samples_per_prompt=2), {})
    assert (flat.kl_coef, flat.value_lr, flat.lam) == (0.2, 3e-4, 0.95)


def test_unknown_key_is_refused_naming_it_and_a_known_one() -> None:
    with pytest.raises(
        ValueError, match=r"^task\.module\.value_lr: not a setting of GRPOConfig; known: .*kl_coef"
    ):
        build_config(GRPOConfig, None, {"value_lr": 1e-4, "samples_per_prompt": 4})


def test_config_and_flat_keys_together_or_the_wrong_class_are_refused() -> None:
    with pytest.raises(TypeError, match="either config= or flat settings"):
        build_config(PPOConfig, PPOConfig(), {"kl_coef": 0.1})
    with pytest.raises(TypeError, match="config must be a GRPOConfig, got PPOConfig"):
        build_config(GRPOConfig, PPOConfig(), {})


def test_values_are_checked_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"task\.module\.samples_per_prompt must be >= 1, got 0"):
        PolicyConfig(samples_per_prompt=0)
    with pytest.raises(ValueError, match=r"task=grpo .*samples_per_prompt must be >= 2, got 1"):
        GRPOConfig(samples_per_prompt=1)
    with pytest.raises(ValueError, match=r"task=rloo .*samples_per_prompt must be >= 2, got 1"):
        RLOOConfig()
    with pytest.raises(ValueError, match=r"task\.module\.loss_agg must be one of .*got 'sum'"):
        CriticFreeConfig(loss_agg="sum")


def test_algorithm_defaults() -> None:
    assert GRPOConfig(samples_per_prompt=4).kl_in_loss is True  # GRPO's KL is a loss term
    assert RLOOConfig(samples_per_prompt=2).kl_in_loss is False  # RLOO's is in the reward
    assert ReinforcePPConfig().gamma == 1.0
    shared = {f.name for f in dataclasses.fields(PolicyConfig)}
    assert shared <= {f.name for f in dataclasses.fields(PPOConfig)}  # every algorithm has the shared keys


@pytest.mark.parametrize(
    "task, config",
    [("ppo", PPOConfig), ("grpo", GRPOConfig), ("rloo", RLOOConfig), ("reinforce_pp", ReinforcePPConfig)],
)
def test_shipped_task_yaml_keys_are_config_fields(task: str, config: type, tmp_path) -> None:
    """Every ``task.module.*`` key the shipped YAML sets (the networks aside) is a field of the config."""
    from conftest import hydra_cfg

    with hydra_cfg(tmp_path, [f"task={task}"]) as cfg:
        keys = set(cfg.task.module) - {"_target_", "optimizer"}
    fields = {f.name for f in dataclasses.fields(config)}
    assert keys and keys <= fields, keys - fields


@pytest.mark.parametrize("key", ["old_logprobs_from_update", "minibatch_by_group", "kl_in_loss"])
def test_a_switch_that_is_not_true_or_false_is_refused_naming_its_key(key: str) -> None:
    """``task.module.<switch>=maybe`` reaches the config as the string 'maybe': refused, not taken as on."""
    with pytest.raises(ValueError, match=rf"task\.module\.{key} must be true or false, got 'maybe'"):
        GRPOConfig(samples_per_prompt=4, **{key: "maybe"})
    assert getattr(GRPOConfig(samples_per_prompt=4, **{key: False}), key) is False
