"""Bradley–Terry reward model (``task=reward_model``).

P(y_c ≻ y_r | x) = σ(r(x, y_c) − r(x, y_r)); the loss is ``−log σ(r_c − r_r − m)`` (+ optional centering
``c·(r_c + r_r)²`` as TRL's ``center_rewards_coefficient``). Chosen and rejected are scored in one forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchmetrics import MeanMetric
from transformers import PreTrainedModel

from lit_rlhf.models.scoring import reward_scores
from lit_rlhf.rlhf import bradley_terry_loss
from lit_rlhf.training.fsdp import Sharded
from lit_rlhf.training.optim import warmup_schedule
from lit_rlhf.training.precision import FusedClipping


class RewardModelModule(Sharded, FusedClipping):
    """Trains a scalar reward head on preference pairs.

    Batches come from ``PreferenceCollator``: 2B rows, the first B chosen, the last B rejected.

    Args:
        model: a ``*ForSequenceClassification`` model with one label.
        optimizer: partial optimizer (the ``optimizer/`` group).
        lr: peak learning rate.
        warmup_steps: linear warm-up steps.
        cosine_decay: after warm-up, decay the learning rate to 0 over the run (cosine); else constant.
        margin: constant margin m in the loss (0 = plain Bradley–Terry).
        center_coef: weight of the reward-centering regulariser (0 = off).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr: float = 1e-3,
        warmup_steps: int = 0,
        cosine_decay: bool = False,
        margin: float = 0.0,
        center_coef: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])  # load_from_checkpoint(path, model=…)
        self.model, self.optimizer_fn = model, optimizer
        self.lr, self.warmup_steps, self.margin, self.center_coef = lr, warmup_steps, margin, center_coef
        self.cosine_decay = cosine_decay
        self.val_acc, self.val_margin = MeanMetric(), MeanMetric()
        self.val_r, self.val_r2 = MeanMetric(), MeanMetric()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return reward_scores(self.model, input_ids, attention_mask)  # (N,)

    def _pair_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self(batch["input_ids"], batch["attention_mask"])  # (2B,)
        return scores.chunk(2)  # chosen (B,), rejected (B,)

    def _loss(self, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        margin = torch.full_like(chosen, self.margin) if self.margin else None
        return bradley_terry_loss(chosen, rejected, margin=margin, center_coef=self.center_coef)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        chosen, rejected = self._pair_scores(batch)
        loss = self._loss(chosen, rejected)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/rm_acc", (chosen > rejected).float().mean())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        chosen, rejected = self._pair_scores(batch)
        n = len(chosen)
        self.log("val/loss", self._loss(chosen, rejected), sync_dist=True, batch_size=n)
        self.val_acc.update((chosen > rejected).float())
        self.val_margin.update(chosen - rejected)
        both = torch.cat([chosen, rejected])
        self.val_r.update(both)
        self.val_r2.update(both.square())

    def on_validation_epoch_end(self) -> None:
        mean, mean_sq = self.val_r.compute(), self.val_r2.compute()
        self.log_dict(
            {
                "val/rm_acc": self.val_acc.compute(),
                "val/margin": self.val_margin.compute(),
                "val/reward_mean": mean,
                "val/reward_std": (mean_sq - mean.square()).clamp(min=0).sqrt(),
            },
            prog_bar=False,
        )
        for m in (self.val_acc, self.val_margin, self.val_r, self.val_r2):
            m.reset()

    def sharded_models(self) -> list[torch.nn.Module]:
        return [self.model]  # trainer=model_parallel

    def configure_optimizers(self):
        opt = self.optimizer_fn(self.model.parameters(), lr=self.lr)
        total = int(self.trainer.estimated_stepping_batches) if self.cosine_decay else None
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": warmup_schedule(opt, self.warmup_steps, total), "interval": "step"},
        }
