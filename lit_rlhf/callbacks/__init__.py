"""Lightning callbacks: the reward transform injected into PPO, and gold-reward evaluation."""

from lit_rlhf.callbacks.dashboard import TensorBoardLayout
from lit_rlhf.callbacks.gold_eval import GoldEvalCallback
from lit_rlhf.callbacks.reward_transform import RewardTransformCallback

__all__ = ["GoldEvalCallback", "RewardTransformCallback", "TensorBoardLayout"]
