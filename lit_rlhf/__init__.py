"""lit_rlhf: RLHF with transformed and combined Bradley–Terry rewards on Lightning + Hydra."""

import hashlib

from omegaconf import OmegaConf


def run_name(overrides: str, default: str = "default", max_len: int = 100) -> str:
    """A folder name for a run from its overrides: the same command finds (and resumes) the same folder.

    Slashes are replaced (a path in an override must not nest folders) and a long name is cut and suffixed
    with a hash of the whole, so it stays unique and within file-name limits.
    """
    if not overrides:
        return default
    name = overrides.replace("/", "_")
    if len(name) > max_len:
        name = f"{name[: max_len - 13]}-{hashlib.sha1(overrides.encode()).hexdigest()[:12]}"
    return name


if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", run_name)


def fused_ok(precision) -> bool:
    """Whether a fused optimizer suits ``trainer.precision``: not under fp16 mixed precision, where it
    unscales fp16 gradients inside its step and Lightning therefore refuses to clip them before it."""
    return str(precision) not in ("16", "16-mixed")


if not OmegaConf.has_resolver("fused_ok"):
    OmegaConf.register_new_resolver("fused_ok", fused_ok)
if not OmegaConf.has_resolver("min"):
    OmegaConf.register_new_resolver("min", lambda *values: min(values))
