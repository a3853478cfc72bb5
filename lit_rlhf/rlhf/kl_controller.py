"""KL coefficient controllers (Ziegler et al., 2019, sec. 2.2).

Both controllers expose ``.value`` (the current ``beta``), ``update(current_kl, n_steps)`` after each
PPO batch, and ``state_dict()`` / ``load_state_dict()`` so a resumed run continues with the same beta.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor


def _as_float(current_kl: float | Tensor) -> float:
    kl = float(current_kl)
    if not math.isfinite(kl):
        raise ValueError(f"current_kl must be finite, got {kl}")
    return kl


class FixedKLController:
    """Constant KL coefficient: ``beta_t = beta``.

    Args:
        beta: The KL coefficient (>= 0).
    """

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"kl_controller.beta must be >= 0, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """No-op: the coefficient is fixed (the KL is still checked to be finite)."""
        _as_float(current_kl)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient that steers the measured KL towards a target (Ziegler et al., 2019).

    ``e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)`` and ``beta_{t+1} = beta_t (1 + K_beta e_t)`` with
    ``K_beta = n_steps / horizon``: beta grows while the KL is above the target and shrinks below it.

    Args:
        init_beta: Initial coefficient (> 0; a zero beta could never move).
        target: Target KL per sequence, in nats (> 0).
        horizon: Number of samples over which the error is corrected (> 0), e.g. 10000.
    """

    def __init__(self, init_beta: float, target: float, horizon: float) -> None:
        if init_beta <= 0:
            raise ValueError(f"kl_controller.init_beta must be > 0, got {init_beta}")
        if target <= 0:
            raise ValueError(f"kl_controller.target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"kl_controller.horizon must be > 0, got {horizon}")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """Move beta after a batch of ``n_steps`` samples whose mean KL was ``current_kl``."""
        error = min(max(_as_float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
