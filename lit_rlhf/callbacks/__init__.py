"""Lightning callbacks: the reward transform injected into PPO, gold-reward evaluation, CPU tuning."""

from lit_rlhf.callbacks.cpu_tuning import CPUTuning
from lit_rlhf.callbacks.dashboard import TensorBoardLayout
from lit_rlhf.callbacks.gold_eval import GoldEvalCallback
from lit_rlhf.callbacks.reward_transform import RewardTransformCallback

__all__ = ["CPUTuning", "GoldEvalCallback", "RewardTransformCallback", "TensorBoardLayout"]
