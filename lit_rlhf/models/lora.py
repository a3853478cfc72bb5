"""LoRA adapters through PEFT: the ``lora/`` config group, off unless selected (``lora=default``).

With LoRA (Hu et al., 2021) a weight ``W`` is trained as ``W + (α/r)·B·A``, ``A`` (r × in) and ``B``
(out × r) small; the base ``W`` stays frozen. For PPO this also gives the reference policy for free: π_ref
is the same network with the adapters switched off (``reference(actor)``), so no second full copy of the
policy is held in memory (what TRL does with ``peft_config``).

Needs the optional extra: ``pip install 'lit_rlhf[peft]'``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from lit_rlhf.models.factory import Head

_TASK_TYPE = {"causal_lm": "CAUSAL_LM", "reward": "SEQ_CLS", "value": "TOKEN_CLS"}


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:
        raise ImportError("lora=… needs PEFT: pip install 'lit_rlhf[peft]' (or pip install peft)") from e
    return peft


class LoRA:
    """LoRA adapters on a model's linear layers.

    Args:
        r: rank of each adapter (``lora.r``).
        alpha: scale numerator; the update is ``(alpha / r)·B·A`` (``lora.alpha``).
        dropout: dropout on the adapter's input. PPO turns every dropout off (its ratio π/π_old must be 1
            before an update), so this only acts in ``task=sft`` / ``task=reward_model``.
        target_modules: names of the layers to adapt (e.g. ``[c_attn]`` for GPT-2, ``[q_proj, v_proj]`` for
            Llama); ``null`` = PEFT's default for the architecture.
    """

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] | None = None,
    ) -> None:
        if r < 1:
            raise ValueError(f"lora.r must be >= 1, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {dropout}")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules = list(target_modules) if target_modules is not None else None

    def apply(self, model: PreTrainedModel, head: Head) -> nn.Module:
        """Wrap ``model`` in a ``PeftModel``: base weights frozen, adapters (and a new head) trainable.

        For ``reward``/``value`` heads PEFT also trains the score head (``modules_to_save``).
        """
        peft = _peft()
        config = peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type=_TASK_TYPE[head],
            # GPT-2 stores its linear layers transposed (Conv1D)
            fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
        )
        try:
            return peft.get_peft_model(model, config)
        except ValueError as e:  # e.g. no default target modules for this architecture
            raise ValueError(f"{e} — set lora.target_modules to the names of the layers to adapt") from e


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries PEFT adapters."""
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


@contextmanager
def reference(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its adapters switched off: the frozen base, i.e. the SFT policy PPO started from."""
    with model.disable_adapter():
        yield model


def base_weights(model: nn.Module) -> dict[str, Tensor]:
    """The frozen base model's weights under the names of the plain model (adapters left out).

    Equal to the SFT model's ``state_dict()`` until someone trains the base, so the reference policy has
    the same fingerprint with or without LoRA.
    """
    out = {}
    for k, v in model.state_dict().items():
        if "lora_" in k or "modules_to_save" in k:
            continue
        k = k.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
        out[k] = v
    return out


def merged(model: nn.Module) -> PreTrainedModel:
    """A plain ``transformers`` model to ``save_pretrained``: adapters merged into a copy (the training
    model keeps its adapters); ``model`` itself if it has none."""
    if not is_lora(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


@torch.no_grad()
def merged_weights(model: nn.Module) -> dict[str, Tensor]:
    """The weights of ``model`` with its active adapters merged, under the plain model's names, computed
    beside the model: ``W + (alpha / r)·B·A`` per adapted layer (PEFT's ``get_delta_weight``). The model
    itself is not touched, so its base weights do not drift through merge / unmerge round trips.
    ``model.state_dict()`` if it has no adapters."""
    if not is_lora(model):
        return dict(model.state_dict())
    out = base_weights(model)
    for name, module in model.named_modules():
        if not hasattr(module, "get_delta_weight") or getattr(module, "merged", False):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        for adapter in module.active_adapters:
            if adapter in getattr(module, "lora_A", {}):
                out[key] = out[key] + module.get_delta_weight(adapter).to(out[key].dtype)
    return out
