"""The config resolvers ``conf/`` uses (``${run_name:…}``, ``${sweep_name:…}``, ``${fused_ok:…}``,
``${min:…}``), registered when ``lit_rlhf`` is imported."""

import hashlib
from pathlib import Path

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


def fused_ok(precision) -> bool:
    """Whether a fused optimizer suits ``trainer.precision``: not under fp16 mixed precision, where it
    unscales fp16 gradients inside its step and Lightning therefore refuses to clip them before it."""
    return str(precision) not in ("16", "16-mixed")


def studies_conf() -> str:
    """``studies/conf`` of the checkout lit_rlhf runs from: Hydra's search path for the studies' sweeps
    (``experiment=single_reward`` …), which live in the study workshop, apart from the product's ``conf/``."""
    return str(Path(__file__).resolve().parents[2] / "studies" / "conf")


def register() -> None:
    """Register the resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("sweep_name"):  # run_name resolved once per sweep (cached, like `now`)
        OmegaConf.register_new_resolver("sweep_name", run_name, use_cache=True)
    if not OmegaConf.has_resolver("fused_ok"):
        OmegaConf.register_new_resolver("fused_ok", fused_ok)
    if not OmegaConf.has_resolver("studies_conf"):
        OmegaConf.register_new_resolver("studies_conf", studies_conf)
    if not OmegaConf.has_resolver("min"):
        OmegaConf.register_new_resolver("min", lambda *values: min(values))


register()
