"""Pure RLHF maths: masked statistics, KL, GAE, PPO and Bradley-Terry losses, KL controllers."""

from lit_rlhf.rlhf.advantages import gae, masked_mean, masked_var, masked_whiten
from lit_rlhf.rlhf.kl import kl_penalty, last_token_index, per_token_rewards
from lit_rlhf.rlhf.kl_controller import AdaptiveKLController, FixedKLController
from lit_rlhf.rlhf.losses import bradley_terry_loss, logprobs_from_logits, ppo_policy_loss, value_loss

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "bradley_terry_loss",
    "gae",
    "kl_penalty",
    "last_token_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_rewards",
    "ppo_policy_loss",
    "value_loss",
]
