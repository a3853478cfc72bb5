"""Gradient clipping that works with fused optimizers under ``bf16-mixed``.

Lightning's ``MixedPrecision`` plugin refuses to clip gradients for an optimizer that unscales them itself
(``fused=True`` AdamW: ``_step_supports_amp_scaling``), a guard meant for fp16's loss scaler. bf16-mixed has
no scaler, so the gradients are already the true ones and clipping them is exactly what it is in fp32;
:class:`FusedClipping` clips them through the plugin's own norm/value clipping. Every other plugin (fp32,
fp16 with its scaler, FSDP, DeepSpeed) takes Lightning's path unchanged.
"""

from __future__ import annotations

import lightning as L
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
