"""FSDP2 (torch's ``fully_shard``) for the tasks' models, under ``trainer=model_parallel``.

Lightning's :class:`~lightning.pytorch.strategies.ModelParallelStrategy` leaves the sharding to the module's
``configure_model``; :class:`Sharded` does it for every task: each transformer block of each model (the
classes its ``_no_split_modules`` names) becomes one unit, gathered only while it computes, then the units
the code calls directly:

* a causal LM is called as a whole — its root gathers what the blocks leave (embeddings, final norm,
  head);
* a reward model is read through its backbone and its score head apart
  (:func:`~lit_rlhf.models.heads.sequence_scores`), and so is the critic on the shared-prefix path
  (:mod:`lit_rlhf.rollout.shared_prefix`): each of the two is a unit of its own; an ensemble's members
  alike.

Every forward of a sharded model needs every rank: the rollouts generate with ``synced_gpus`` (a rank whose
rows have all ended keeps stepping until every rank's have), r_ref is sampled by every rank in step, and a
rank without rows in a minibatch still runs a stand-in row.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

from lit_rlhf.models.heads import ValueModel, score_head, unwrap


def is_sharded(model: nn.Module) -> bool:
    """Whether any part of ``model`` is an FSDP2 unit."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def synced() -> bool:
    """Whether ``generate`` must keep every rank stepping (several processes: a model may be sharded)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def blocks(model: nn.Module) -> list[nn.Module]:
    """The submodules whose class a ``_no_split_modules`` of ``model`` (or of a model inside it) names."""
    names: set[str] = set()
    for m in model.modules():
        names |= set(getattr(m, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        raise ValueError(
            f"{type(unwrap(model)).__name__} lists no _no_split_modules: trainer=model_parallel cannot tell "
            "its transformer blocks; use trainer=ddp"
        )
    return found


def shard_model(model: nn.Module, mesh) -> None:
    """Shard ``model`` over ``mesh``: its blocks, then the units the code calls (see the module doc)."""
    if is_sharded(model):  # configure_model runs again for trainer.validate after fit
        return
    members = getattr(model, "members", None)
    if isinstance(members, nn.ModuleList):  # a reward ensemble: each member is a reward model
        for m in members:
            shard_model(m, mesh)
        return
    for block in blocks(model):
        fully_shard(block, mesh=mesh)
    hf = unwrap(model)
    if isinstance(model, ValueModel):  # the shared-prefix path calls the backbone and the head apart
        fully_shard(model.backbone, mesh=mesh)
        fully_shard(model.head, mesh=mesh)
    elif isinstance(getattr(hf, "score", getattr(hf, "classifier", None)), nn.Module):  # a reward model
        fully_shard(hf.base_model, mesh=mesh)  # read through its backbone and its head apart
        fully_shard(score_head(model), mesh=mesh)
    else:
        fully_shard(model, mesh=mesh)


class Sharded:
    """Mixin of a LightningModule: ``configure_model`` shards :meth:`sharded_models` under Lightning's
    ``ModelParallelStrategy`` (``trainer=model_parallel``), and does nothing under any other strategy."""

    def sharded_models(self) -> Iterable[nn.Module]:
        raise NotImplementedError

    def configure_model(self) -> None:
        from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: PLC0415

        trainer = self._trainer  # None outside fit/validate (load_from_checkpoint calls this too)
        if trainer is None or not isinstance(trainer.strategy, ModelParallelStrategy):
            return
        mesh = self.device_mesh["data_parallel"]
        for model in self.sharded_models():
            shard_model(model, mesh)
