"""Scaling out, the ``trainer/`` group: every config's keys are arguments of ``Trainer`` and its strategy,
``cpu`` / ``gpu`` trainers, DDP on CPU using gloo, FSDP wrapping each block (of a GPT-2 or a Llama
folder), DeepSpeed stages, and the SLURM launcher following the trainer. 8-bit optimizers:
``test_scale_8bit_adamw.py``; DDP runs on CPU: ``test_scale_ddp_cpu.py``."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from conftest import ROOT, hydra_cfg

TRAINERS = sorted(p.stem for p in (ROOT / "conf" / "trainer").glob("*.yaml"))


# ------------------------------------------------------------------ the trainer group
def trainer_cfg(tmp_path: Path, name: str, *overrides: str):
    with hydra_cfg(tmp_path, [f"trainer={name}", *overrides]) as cfg:
        return cfg.trainer


# strategies pass their **kwargs on to the wrapper they build
WRAPPED = {
    "lightning.pytorch.strategies.DDPStrategy": "torch.nn.parallel.DistributedDataParallel",
    "lightning.pytorch.strategies.FSDPStrategy": "torch.distributed.fsdp.FullyShardedDataParallel",
}


def params(target: str) -> set[str]:
    module, _, name = target.rpartition(".")
    names = set(inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters)
    return names | (params(WRAPPED[target]) if target in WRAPPED else set())


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_config_keys_are_constructor_arguments(tmp_path: Path, name: str) -> None:
    cfg = trainer_cfg(tmp_path, name)
    assert {"num_nodes", "devices", "precision"} <= set(cfg)
    assert set(cfg) - {"_target_"} <= params(cfg._target_), "a trainer key Trainer() does not take"
    if isinstance(cfg.strategy, str):
        return
    strategy_keys = set(cfg.strategy) - {"_target_"}
    assert strategy_keys <= params(cfg.strategy._target_), f"a key {cfg.strategy._target_} does not take"
    assert cfg.precision == "bf16-mixed"  # every multi-GPU config defaults to bf16 mixed precision


def test_cpu_and_gpu_trainers(tmp_path: Path) -> None:
    cpu = instantiate(trainer_cfg(tmp_path, "cpu"), logger=False)
    assert isinstance(cpu, L.Trainer) and cpu.accelerator.__class__.__name__ == "CPUAccelerator"
    gpu = trainer_cfg(tmp_path, "gpu")
    assert (gpu.accelerator, gpu.devices, gpu.precision) == ("gpu", 1, "bf16-mixed")
    assert gpu.max_epochs == cpu.max_epochs  # the rest comes from cpu.yaml
    if not torch.cuda.is_available():
        pytest.skip("trainer=gpu needs CUDA to instantiate")
    assert instantiate(gpu, logger=False).precision == "bf16-mixed"


def test_ddp_trainer_on_cpu_uses_gloo(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    cfg = trainer_cfg(tmp_path, "ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    trainer = instantiate(cfg, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2 and trainer.world_size == 2
    assert trainer.strategy._get_process_group_backend() == "gloo"
    assert trainer.precision == "bf16-mixed"  # from gpu.yaml; CPU runs usually want 32-true


def test_fsdp_strategy_wraps_each_block(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    cfg = trainer_cfg(tmp_path, "fsdp")
    strategy = instantiate(cfg.strategy)  # the strategy object builds on CPU; the Trainer does not
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {GPT2Block}
    if not torch.cuda.is_available():
        with pytest.raises(InstantiationException, match="requires a GPU"):
            instantiate(cfg, accelerator="cpu", logger=False)
        pytest.skip("trainer=fsdp needs CUDA to instantiate a Trainer")
    assert isinstance(instantiate(cfg, logger=False).strategy, FSDPStrategy)


@pytest.mark.slow
def test_fsdp_wraps_the_decoder_layer_of_a_llama_folder(tmp_path: Path) -> None:
    """model=hf: the wrap unit comes from the folder's architecture (`_no_split_modules`), not from a
    class named in the config."""
    from tiny_hf import make_model_folder
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    folder = make_model_folder("llama", tmp_path / "llama")
    cfg = trainer_cfg(tmp_path, "fsdp", "model=hf", f"model.name_or_path={folder}")
    strategy = instantiate(cfg.strategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}


@pytest.mark.parametrize(
    ("name", "overrides", "stage"),
    [("deepspeed", [], 2), ("deepspeed", ["trainer.strategy.stage=3"], 3), ("deepspeed_zero3", [], 3)],
)
def test_deepspeed_stages(tmp_path: Path, name: str, overrides: list[str], stage: int) -> None:
    cfg = trainer_cfg(tmp_path, name, *overrides)
    assert cfg.strategy._target_ == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert cfg.strategy.stage == stage
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("trainer=deepspeed needs the deepspeed package (and CUDA)")
    strategy = instantiate(cfg.strategy)
    assert strategy.config["zero_optimization"]["stage"] == stage


# ------------------------------------------------------------------ SLURM launcher config
def test_submitit_slurm_launcher_follows_the_trainer(tmp_path: Path) -> None:
    overrides = ["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"]
    with hydra_cfg(tmp_path, overrides) as cfg:
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
        # one SLURM task per GPU: Lightning's SLURM environment then spawns nothing itself
        assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 2)
