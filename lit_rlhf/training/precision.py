"""Mixed precision helpers for the tasks (``trainer.precision=bf16-mixed``: fp32 weights, bf16 autocast).

* :class:`FusedClipping` — gradient clipping that works with fused optimizers under bf16-mixed. Lightning's
  ``MixedPrecision`` plugin refuses to clip for an optimizer that unscales gradients itself (``fused=True``
  AdamW: ``_step_supports_amp_scaling``), a guard meant for fp16's loss scaler. bf16-mixed has no scaler,
  so the gradients are the true ones and clipping them is what it is in fp32: this clips them through the
  plugin's own norm/value clipping. Every other plugin (fp32, fp16 with its scaler, FSDP, DeepSpeed) takes
  Lightning's path unchanged.
* :func:`cached_casts` — inside a rollout (no optimizer step), cast each trainable weight to bf16 once
  instead of at every call. Lightning's autocast runs with ``cache_enabled=False``, so generation re-casts
  every weight of the policy at every decoding step; the cache is exact while the weights do not change and
  is cleared when the rollout ends (before any update).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType


class FusedClipping(L.LightningModule):
    """Mixin for a LightningModule: ``clip_gradients`` that lets a fused optimizer clip under bf16-mixed."""

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        plugin = self.trainer.precision_plugin
        if type(plugin) is MixedPrecision and plugin.scaler is None and gradient_clip_val:  # bf16-mixed
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, float(gradient_clip_val), algorithm)
            return
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


@contextmanager
def cached_casts(trainer: L.Trainer | None) -> Iterator[None]:
    """Autocast with its weight-cast cache on, for a region without optimizer steps (no-op unless the
    trainer runs Lightning's ``MixedPrecision``)."""
    plugin = trainer.precision_plugin if trainer is not None else None
    if type(plugin) is not MixedPrecision:
        yield
        return
    dtype = torch.bfloat16 if plugin.precision == "bf16-mixed" else torch.half
    try:
        with torch.autocast(plugin.device, dtype=dtype, cache_enabled=True):
            yield
    finally:
        torch.clear_autocast_cache()  # an inner autocast keeps its casts until the outermost one exits
