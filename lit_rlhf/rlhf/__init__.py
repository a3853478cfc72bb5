"""Pure RLHF maths: masked statistics, KL, GAE, critic-free advantages, PPO/GRPO and BT losses, token
log-probs, KL control."""

from lit_rlhf.rlhf.advantages import gae, masked_mean, masked_var, masked_whiten
from lit_rlhf.rlhf.estimators import (
    LOSS_AGGS,
    LossAgg,
    aggregate,
    discounted_returns,
    group_advantages,
    kl_loss,
    loss_weights,
    policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
)
from lit_rlhf.rlhf.kl import kl_penalty, last_token_index, masked_kl, per_token_rewards
from lit_rlhf.rlhf.kl_controller import AdaptiveKLController, FixedKLController
from lit_rlhf.rlhf.logprobs import logprobs_from_logits
from lit_rlhf.rlhf.losses import bradley_terry_loss, ppo_policy_loss, value_loss
from lit_rlhf.rlhf.offpolicy import sampler_mismatch, tis_weights

__all__ = [
    "LOSS_AGGS",
    "AdaptiveKLController",
    "FixedKLController",
    "LossAgg",
    "aggregate",
    "bradley_terry_loss",
    "discounted_returns",
    "gae",
    "group_advantages",
    "kl_loss",
    "kl_penalty",
    "last_token_index",
    "logprobs_from_logits",
    "loss_weights",
    "masked_kl",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_rewards",
    "policy_loss",
    "ppo_policy_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "sampler_mismatch",
    "tis_weights",
    "value_loss",
]
