"""Supervised fine-tuning (``task=sft``): next-token loss on response tokens only."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from lit_rlhf.training.fsdp import Sharded
from lit_rlhf.training.optim import warmup_schedule
from lit_rlhf.training.precision import FusedClipping


class SFTModule(Sharded, FusedClipping):
    """Fine-tunes a causal LM on (prompt, response) demonstrations.

    The collator puts ``-100`` on prompt and padding labels, so the loss
    ``−(1/N) Σ_t log π(y_t | x, y_<t)`` runs over response tokens (and the EOS) only.

    Args:
        model: a ``transformers`` causal LM.
        optimizer: partial optimizer (the ``optimizer/`` group), completed with params and ``lr``.
        lr: peak learning rate.
        warmup_steps: linear warm-up steps.
        cosine_decay: after warm-up, decay the learning rate to 0 over the run (cosine); else constant.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr: float = 1e-3,
        warmup_steps: int = 0,
        cosine_decay: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])  # load_from_checkpoint(path, model=…)
        self.model, self.optimizer_fn, self.lr, self.warmup_steps = model, optimizer, lr, warmup_steps
        self.cosine_decay = cosine_decay

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        return out.loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log(
            "val/loss", self._loss(batch), prog_bar=True, sync_dist=True, batch_size=len(batch["input_ids"])
        )

    def sharded_models(self) -> list[torch.nn.Module]:
        return [self.model]  # trainer=model_parallel

    def configure_optimizers(self):
        opt = self.optimizer_fn(self.model.parameters(), lr=self.lr)
        total = int(self.trainer.estimated_stepping_batches) if self.cosine_decay else None
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": warmup_schedule(opt, self.warmup_steps, total), "interval": "step"},
        }
