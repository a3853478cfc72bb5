"""A progress bar that says what runs: ``ppo iteration 37/120`` with KL, reward and the share above r_ref,
instead of Lightning's ``Epoch 0/0`` (a policy task is one epoch of N iterations)."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


def _description(trainer) -> str | None:
    algorithm = getattr(trainer.lightning_module, "algorithm", None)
    return f"{algorithm} iteration" if algorithm else None


class IterationRichProgressBar(RichProgressBar):
    """Rich bar titled by the algorithm's iterations (the bar itself shows i/N)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return _description(self.trainer) or super()._get_train_description(current_epoch)


class IterationTQDMProgressBar(TQDMProgressBar):
    """tqdm bar titled by the algorithm's iterations."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        if (description := _description(trainer)) is not None:
            self.train_progress_bar.set_description(description)


def iteration_progress_bar() -> RichProgressBar | TQDMProgressBar:
    """The bar Lightning would pick (Rich if installed), titled by iterations."""
    return IterationRichProgressBar() if _RICH_AVAILABLE else IterationTQDMProgressBar()


def scalar_step(trainer) -> int:
    """The step Lightning logs scalars at: once per training batch (an iteration of a policy task), where
    ``trainer.global_step`` counts every optimizer's steps. Tables and histograms logged beside scalars
    use it, so that TensorBoard shows them on one axis."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped if trainer is not None else 0
