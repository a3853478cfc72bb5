"""lit_rlhf: RLHF with transformed and combined Bradley–Terry rewards on Lightning + Hydra."""

from omegaconf import OmegaConf

# `${or_default:${hydra.job.override_dirname},default}` names a run's folder after its overrides, so the same
# command finds (and resumes) the same folder.
if not OmegaConf.has_resolver("or_default"):
    OmegaConf.register_new_resolver("or_default", lambda value, default: value or default)
if not OmegaConf.has_resolver("min"):
    OmegaConf.register_new_resolver("min", lambda *values: min(values))
