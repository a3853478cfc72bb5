"""What the ``trainer/`` strategies need: FSDP's wrap units from ``_no_split_modules``, FSDP2 over every
process (:class:`FSDP2Strategy`, ``trainer=model_parallel``), and DDP's children joining the right job of a
Hydra multirun (:func:`one_ddp_job`). Which strategy runs which task: :mod:`lit_rlhf.run.validate`.

transformers lists, per architecture, the blocks that must not be split across devices
(``LlamaDecoderLayer``, ``GPT2Block``, ``Qwen2DecoderLayer`` …). Each becomes one FSDP unit, gathered only
while it computes — the right granularity for any family, without naming a class in the config.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import read_write
from torch import nn
from torch.distributed.constants import default_pg_timeout
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as plain FSDP2: one data-parallel dimension over every process
    (no tensor parallelism), whatever the number of nodes and devices. The modules shard themselves in
    ``configure_model`` (:class:`lit_rlhf.training.fsdp.Sharded`)."""

    def __init__(
        self,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.world_size
        super().setup_environment()


def no_split_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The module classes a model's ``_no_split_modules`` names, found among its submodules."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(
            f"{type(model).__name__} lists no _no_split_modules; set the FSDP wrap classes by hand "
            "(trainer.strategy.auto_wrap_policy)"
        )
    return classes


def no_split_policy(name_or_path: str | None = None, trust_remote_code: bool = False) -> ModuleWrapPolicy:
    """FSDP wrap policy whose units are the architecture's no-split blocks.

    Args:
        name_or_path: the model folder (``model.name_or_path``); ``None`` = the embedded tiny GPT-2.
        trust_remote_code: as ``model.trust_remote_code``.
    """
    if name_or_path is None:
        config = GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=8)
    else:
        if not (Path(name_or_path) / "config.json").is_file():
            raise FileNotFoundError(
                f"model.name_or_path={name_or_path} has no config.json (FSDP wrap policy)"
            )
        config = AutoConfig.from_pretrained(
            name_or_path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    with torch.device("meta"):  # no memory, no weights: only the module tree
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return ModuleWrapPolicy(no_split_classes(model))


# ------------------------------------------------------------------ DDP inside a Hydra multirun
@contextmanager
def one_ddp_job() -> Iterator[None]:
    """Make Lightning's DDP children re-run THIS job of a ``-m`` sweep, then clear the job's DDP state.

    Lightning starts ranks > 0 by re-executing ``sys.argv``; under ``-m`` that would re-run the whole sweep
    into a second sweep folder. Inside a multirun job the command line is replaced by this job's own
    overrides and ``hydra.run.dir`` by the job's folder, so the children join this job and write into it;
    afterwards the process group and DDP environment are cleared so the next job starts its own.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hc, argv = HydraConfig.get(), sys.argv
    sys.argv = [argv[0], *hc.overrides.task]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in DDP_ENV:
            os.environ.pop(key, None)
