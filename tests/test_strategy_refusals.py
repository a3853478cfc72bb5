"""Every strategy × task pair the configs offer runs or is refused, and refused before any work.

A new user's ``trainer=fsdp trainer.accelerator=cpu task=ppo`` used to train the SFT stage and both reward
models first (minutes) and only then meet Lightning's refusal. Now the run's trainer is built and checked
first (:func:`lit_rlhf.run.validate.check_trainer`): a pair that does not run is refused with one line
naming ``trainer=``, and Lightning's own refusals come before any stage or data preparation."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException

import lit_rlhf.run.pipeline as pipeline
from conftest import hydra_cfg
from lit_rlhf.run.errors import user_message

POLICY_TASKS = ("ppo", "grpo", "rloo", "reinforce_pp")


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run starts any work: the world's data, a stage, or a run record."""

    def work(*args, **kwargs):
        raise AssertionError("the run started work before refusing its trainer")

    for name in ("prepare_data", "ensure_stage"):
        monkeypatch.setattr(pipeline, name, work)
    monkeypatch.setattr(pipeline.run_record, "begin_run", work)


@pytest.mark.parametrize("trainer", ["fsdp", "deepspeed", "deepspeed_zero3"])
@pytest.mark.parametrize("task", POLICY_TASKS)
def test_policy_task_under_a_strategy_without_collective_rollouts_is_refused_first(
    tmp_path, no_work, task: str, trainer: str
) -> None:
    overrides = [f"task={task}", f"trainer={trainer}", "trainer.accelerator=cpu"]
    with hydra_cfg(tmp_path, overrides) as cfg, pytest.raises(ValueError) as err:
        pipeline.run(cfg)
    message = user_message(err.value)
    assert message is not None and "\n" not in message
    assert message.startswith(f"trainer={trainer} does not run task={task}: ")
    assert "trainer=model_parallel" in message


def test_a_strategy_named_on_the_command_line_is_refused_alike(tmp_path, no_work) -> None:
    refused = pytest.raises(ValueError, match=r"^trainer.strategy=deepspeed_stage_3 does not run task=grpo")
    with hydra_cfg(tmp_path, ["task=grpo", "trainer.strategy=deepspeed_stage_3"]) as cfg, refused:
        pipeline.run(cfg)


def test_lora_under_model_parallel_is_refused_first(tmp_path, no_work) -> None:
    overrides = ["task=ppo", "trainer=model_parallel", "trainer.accelerator=cpu", "lora=default"]
    refused = pytest.raises(ValueError, match=r"^trainer=model_parallel does not run lora=…")
    with hydra_cfg(tmp_path, overrides) as cfg, refused:
        pipeline.run(cfg)


@pytest.mark.parametrize("task", ["sft", "reward_model", "ppo"])
def test_lightnings_own_refusal_comes_before_any_work(tmp_path, no_work, task: str) -> None:
    """FSDP1 on CPU (sft, reward_model: the pairs not refused above) and a GPU accelerator on a machine
    without one: Lightning refuses while the trainer is built, before the data or a stage."""
    overrides = [f"task={task}", "trainer=fsdp", "trainer.accelerator=cpu"]
    if task == "ppo":  # a pair we run (model_parallel) on an accelerator this machine lacks
        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
        overrides = ["task=ppo", "trainer=model_parallel", "trainer.accelerator=gpu"]
    with hydra_cfg(tmp_path, overrides) as cfg, pytest.raises(InstantiationException) as err:
        pipeline.run(cfg)
    message = user_message(err.value)
    assert message is not None and ("GPU" in message or "gpu" in message), message


@pytest.mark.parametrize("trainer", ["ddp", "model_parallel"])
@pytest.mark.parametrize("task", ["sft", "reward_model", *POLICY_TASKS])
def test_supported_pairs_pass_the_check(tmp_path, trainer: str, task: str) -> None:
    from lit_rlhf.run.validate import check_trainer

    overrides = [f"task={task}", f"trainer={trainer}", "trainer.accelerator=cpu", "trainer.devices=2"]
    with hydra_cfg(tmp_path, [*overrides, "trainer.precision=32-true"]) as cfg:
        check_trainer(cfg)  # no error


def test_forced_shared_prefix_under_model_parallel_is_refused_first(tmp_path, no_work) -> None:
    overrides = [
        "task=grpo",
        "trainer=model_parallel",
        "trainer.accelerator=cpu",
        "task.module.shared_prefix=true",
    ]
    refused = pytest.raises(
        ValueError, match=r"^trainer=model_parallel does not run task.module.shared_prefix=true"
    )
    with hydra_cfg(tmp_path, overrides) as cfg, refused:
        pipeline.run(cfg)
