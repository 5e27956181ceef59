"""The KL penalty coefficient beta of PPO's per-token reward: fixed, or adapted toward a target KL
per turn (Ziegler et al. 2019, as in TRL). Both save and restore their state as plain JSON values,
so a resumed run goes on with the coefficient it had.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from npcrl.train.config import PPOConfig


def _number(state: Mapping[str, object], key: str) -> float:
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"state field {key!r} must be a number; got {value!r}")
    return float(value)


def _check_keys(state: Mapping[str, object], expected: set[str], owner: str) -> None:
    keys = set(state)
    if keys != expected:
        raise ValueError(
            f"{owner} state has unknown fields {sorted(keys - expected)} and lacks fields {sorted(expected - keys)}; expected exactly {sorted(expected)}"
        )


@dataclass
class FixedKLController:
    """A KL coefficient that never changes."""

    value: float
    """the KL penalty coefficient beta"""

    def __post_init__(self) -> None:
        if not (self.value >= 0 and math.isfinite(self.value)):
            raise ValueError(f"FixedKLController.value must be finite and >= 0; got {self.value}")

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed (same signature as the adaptive controller's)."""

    def state_dict(self) -> dict[str, float]:
        """The state as plain JSON-able values."""
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore from ``state_dict()``'s output; unknown or missing fields raise ValueError."""
        _check_keys(state, {"value"}, "FixedKLController")
        value = _number(state, "value")
        FixedKLController(value)  # validate before mutating
        self.value = value


@dataclass
class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. 2019 (as in TRL), steering the KL toward ``target``.

    ``e = clip(current_kl / target - 1, -0.2, 0.2)``; ``value *= 1 + e * n_steps / horizon``.
    """

    value: float
    """the current KL penalty coefficient beta (> 0: a multiplicative update cannot leave 0)"""
    target: float
    """the KL per turn to steer toward (> 0)"""
    horizon: int
    """the number of samples over which the coefficient may change by a factor of about e^0.2 (> 0)"""

    def __post_init__(self) -> None:
        if not (self.value > 0 and math.isfinite(self.value)):
            raise ValueError(f"AdaptiveKLController.value must be finite and > 0; got {self.value}")
        if not (self.target > 0 and math.isfinite(self.target)):
            raise ValueError(f"AdaptiveKLController.target must be finite and > 0; got {self.target}")
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon <= 0:
            raise ValueError(f"AdaptiveKLController.horizon must be an integer > 0; got {self.horizon!r}")

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient toward the target after ``n_steps`` samples whose mean KL was ``current_kl``."""
        if not math.isfinite(current_kl):
            # A NaN would stick in the coefficient for the rest of the run.
            raise ValueError(f"current_kl must be finite; got {current_kl}")
        if n_steps < 0 or 0.2 * n_steps >= self.horizon:
            # Past 5 * horizon the multiplier 1 - 0.2 * n_steps / horizon reaches 0 or below, which
            # would zero the coefficient for good or turn the KL penalty into a bonus.
            raise ValueError(f"n_steps must be in [0, 5 * horizon) = [0, {5 * self.horizon}); got {n_steps}")
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float | int]:
        """The state as plain JSON-able values."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore from ``state_dict()``'s output; unknown or missing fields raise ValueError."""
        _check_keys(state, {"value", "target", "horizon"}, "AdaptiveKLController")
        horizon = state["horizon"]
        if isinstance(horizon, bool) or not isinstance(horizon, int):
            raise ValueError(f"state field 'horizon' must be an integer; got {horizon!r}")
        loaded = AdaptiveKLController(_number(state, "value"), _number(state, "target"), horizon)
        self.value, self.target, self.horizon = loaded.value, loaded.target, loaded.horizon


def kl_controller(config: PPOConfig) -> AdaptiveKLController | FixedKLController:
    """The controller ``ppo.kl_target`` asks for: adaptive toward it, or fixed at ``ppo.kl_coef`` when unset."""
    if config.kl_target is not None:
        return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    return FixedKLController(config.kl_coef)
