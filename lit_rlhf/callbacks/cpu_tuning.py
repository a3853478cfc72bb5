"""Two settings that make CPU training faster and that nothing else applies (``callbacks.cpu_tuning``).

* **Keep freed memory in the process** (glibc ``mallopt``). A training step frees and re-allocates the same
  large buffers (activations, logits, gradients) every time. glibc returns every freed block above its
  dynamic mmap threshold (at most 32 MiB) to the kernel and trims the heap's top, so the next step
  page-faults the same memory back in and the kernel zeroes it again. Raising the mmap and trim thresholds
  to 2 GiB keeps those pages mapped: at SmolLM2-135M's shapes a bf16 update step (4 × 192 tokens) took
  median 1.64 s (1.25–2.87) before and 1.25 s (1.15–1.56) after on 2 cores (``benchmarks/cpu_tuning.md``).
  The process keeps its peak heap instead of shrinking between steps (peak RSS in the GRPO benchmark: about
  0.6 GB more). It is what PyTorch's CPU performance guide gets with jemalloc or tcmalloc, without a
  preloaded library.
* **Eager attention under bf16 on CPU.** PyTorch's CPU SDPA kernel in bf16 (no AMX) took 589 µs per layer
  at a decoding step (8 sequences, 9 heads over 3 KV heads, 192 keys) against 154 µs for the plain
  matmul-softmax-matmul, and 8.3 against 4.9 ms in a training forward + backward; in fp32 SDPA is the faster
  one, so only bf16 runs switch. Models whose ``attn_implementation`` the user set
  (``model.attn_implementation``, ``task.roles.<role>.attn_implementation``) keep it: the model factory
  marks them (:func:`lit_rlhf.models.factory.pin_attention`).

Both act only when the trainer's root device is the CPU; GPU runs are unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

import lightning as L
from torch import nn
from transformers import PreTrainedModel

from lit_rlhf.models.factory import attention_pinned

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
_KEEP_BYTES = 2**31 - 1  # mallopt takes an int: the largest threshold it can be given
BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")
ATTENTIONS = ("eager", "sdpa")  # what a CPU run can switch to (flash attention needs a GPU)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds so freed blocks stay mapped; False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def attention_for(device_type: str, precision: str, current: str | None, wanted: str | None) -> str | None:
    """The attention implementation a model should switch to, or ``None`` to keep ``current``.

    Args:
        device_type: the trainer's root device type (``cpu``, ``cuda``, …).
        precision: Lightning's precision string (``32-true``, ``bf16-mixed``, …).
        current: the model's ``config._attn_implementation``.
        wanted: what bf16 on CPU should use (``CPUTuning(bf16_attention=…)``); ``None`` = never switch.
    """
    if wanted is None or device_type != "cpu" or str(precision) not in BF16_PRECISIONS:
        return None
    return wanted if current == "sdpa" and wanted != current else None


def _switchable_models(module: nn.Module) -> list[PreTrainedModel]:
    """The Hugging Face models in ``module`` not inside another one (one per network), leaving out those
    inside a module the factory pinned (:func:`~lit_rlhf.models.factory.pin_attention`: a value head's
    wrapper is pinned, its backbone is the ``PreTrainedModel``)."""
    found: list[PreTrainedModel] = []
    skip: set[int] = set()
    for m in module.modules():
        if id(m) in skip:
            continue
        if attention_pinned(m) or isinstance(m, PreTrainedModel):
            skip.update(id(s) for s in m.modules())
            if not attention_pinned(m):
                found.append(m)
    return found


class CPUTuning(L.Callback):
    """Applies the two CPU settings of this module at ``setup``.

    Args:
        keep_freed_memory: raise glibc's mmap / trim thresholds (:func:`keep_freed_memory`).
        bf16_attention: the attention implementation for models still on ``sdpa`` when the run is bf16 on
            the CPU (``eager``); ``null`` keeps SDPA.
    """

    def __init__(self, keep_freed_memory: bool = True, bf16_attention: str | None = "eager") -> None:
        if bf16_attention not in (None, *ATTENTIONS):
            raise ValueError(
                f"callbacks.cpu_tuning.bf16_attention={bf16_attention!r}: expected one of "
                f"{ATTENTIONS} or null"
            )
        self.keep_freed_memory, self.bf16_attention = keep_freed_memory, bf16_attention
        self.switched: list[str] = []  # class names of the models switched (telemetry and tests)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.switched = []
        device = trainer.strategy.root_device.type
        if device != "cpu":
            return
        if self.keep_freed_memory and keep_freed_memory():
            log.info("cpu_tuning: glibc keeps freed memory mapped (mmap/trim thresholds 2 GiB)")
        for model in _switchable_models(pl_module):
            to = attention_for(
                device, trainer.precision, model.config._attn_implementation, self.bf16_attention
            )
            if to is not None:
                model.set_attn_implementation(to)
                self.switched.append(type(model).__name__)
        if self.switched:
            log.info(
                "cpu_tuning: %s attention for bf16 on CPU (%s); "
                "callbacks.cpu_tuning.bf16_attention=null keeps sdpa",
                self.bf16_attention,
                ", ".join(self.switched),
            )
