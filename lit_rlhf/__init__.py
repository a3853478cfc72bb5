"""lit_rlhf: RLHF with transformed and combined rewards (Wang et al., 2024) on Lightning + Hydra.

The public names import from here:
``from lit_rlhf import PPOModule, RewardTransformCallback, LogSigmoid``.
They load on first use (PEP 562), so ``import lit_rlhf`` stays cheap; importing it registers the config
resolvers ``conf/`` uses. Where each lives: ``tasks/`` (LightningModules), ``callbacks/``, ``data/``
(datamodules), ``rewards/`` (transforms, aggregators, r_ref, ensembles), ``models/``, ``rlhf/`` (the maths).
"""

from importlib import import_module

from lit_rlhf.run import resolvers  # noqa: F401  (registers ${run_name:…}, ${fused_ok:…}, …)

_PUBLIC = {
    # LightningModules (conf/task/*)
    "SFTModule": "lit_rlhf.tasks.sft",
    "RewardModelModule": "lit_rlhf.tasks.reward_model",
    "PolicyModule": "lit_rlhf.tasks.policy",
    "PPOModule": "lit_rlhf.tasks.ppo",
    "GRPOModule": "lit_rlhf.tasks.grpo",
    "RLOOModule": "lit_rlhf.tasks.rloo",
    "ReinforcePPModule": "lit_rlhf.tasks.reinforce_pp",
    # datamodules (conf/data, conf/task/*)
    "SFTDataModule": "lit_rlhf.data",
    "PreferenceDataModule": "lit_rlhf.data",
    "PromptDataModule": "lit_rlhf.data",
    # callbacks (conf/callbacks)
    "RewardTransformCallback": "lit_rlhf.callbacks",
    "GoldEvalCallback": "lit_rlhf.callbacks",
    "CPUTuning": "lit_rlhf.callbacks",
    # reward transforms (conf/transform) and aggregators (conf/aggregator)
    "RewardTransform": "lit_rlhf.rewards.transforms",
    "Identity": "lit_rlhf.rewards.transforms",
    "LogSigmoid": "lit_rlhf.rewards.transforms",
    "Sigmoid": "lit_rlhf.rewards.transforms",
    "Center": "lit_rlhf.rewards.transforms",
    "Whiten": "lit_rlhf.rewards.transforms",
    "Clip": "lit_rlhf.rewards.transforms",
    "Sum": "lit_rlhf.rewards.aggregators",
    "WeightedSum": "lit_rlhf.rewards.aggregators",
    "Min": "lit_rlhf.rewards.aggregators",
    "SoftMin": "lit_rlhf.rewards.aggregators",
    "Mean": "lit_rlhf.rewards.aggregators",
    "MeanMinusStd": "lit_rlhf.rewards.aggregators",
    "MeanMinusVar": "lit_rlhf.rewards.aggregators",
    "NormalizeThenSum": "lit_rlhf.rewards.gdpo",
    # reward functions beside reward models (conf/reward/word_limit.yaml)
    "RewardFunction": "lit_rlhf.rewards.reward_function",
    "word_limit": "lit_rlhf.rewards.functions",
    # models (conf/model)
    "TinyGPT2": "lit_rlhf.models",
    "Pretrained": "lit_rlhf.models",
    "ValueModel": "lit_rlhf.models",
    # the embedded synthetic world (conf/data/world.yaml)
    "build_world": "lit_rlhf.world",
    "load_tokenizer": "lit_rlhf.models",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'lit_rlhf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
