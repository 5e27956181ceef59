"""The allowed range of every numeric training-config field, and the checks that apply them.

Kept apart from ``config`` so the table reads as one list (docs/TRAINING.md repeats it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from npcrl.errors import TrainConfigError
from npcrl.validate import ConfigValueError, check_number, describe_bounds, plain_number


@dataclass(frozen=True)
class Range:
    """Where a numeric field may lie. Both ends are stated: the upper bounds keep what the trainer
    computes from them (rewards times coefficients, exp of a clipped log-weight) finite."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    """None is allowed (the field's "off")"""

    def interval(self) -> str:
        """As docs/TRAINING.md writes it, e.g. ``int [1, 4096]`` or ``(0, 1] or none``."""
        span = f"{'(' if self.low_open else '['}{plain_number(self.low)}, {plain_number(self.high)}{')' if self.high_open else ']'}"
        return ("int " if self.integer else "") + span + (" or none" if self.optional else "")

    def describe(self) -> str:
        words = describe_bounds(self.low, self.high, low_open=self.low_open, high_open=self.high_open)
        return ("an integer " if self.integer else "") + words + (", or absent" if self.optional else "")


_MANY = 1_000_000
_TOKENS = 131_072
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**63 - 1, integer=True),
    "data.holdout_fraction": Range(0, 1, high_open=True),
    "data.max_sequence_tokens": Range(2, _TOKENS, integer=True),
    "data.min_response_tokens": Range(1, _TOKENS, integer=True),
    "data.baseline_prior_turns": Range(0, _MANY, low_open=True),
    "model.lora_r": Range(1, 4096, integer=True),
    "model.lora_alpha": Range(0, 10_000, low_open=True),
    "model.value_head_std": Range(0, 10),
    "ppo.rollout_turns": Range(1, _MANY, integer=True),
    "ppo.minibatch_turns": Range(1, _MANY, integer=True),
    "ppo.micro_batch_turns": Range(1, _MANY, integer=True),
    "ppo.epochs": Range(1, 1000, integer=True),
    "ppo.passes": Range(0, _MANY, low_open=True),
    "ppo.iterations": Range(0, _MANY, integer=True),
    "ppo.max_iterations_per_pass": Range(0, _MANY, integer=True),
    "ppo.learning_rate": Range(0, 1, low_open=True),
    "ppo.weight_decay": Range(0, 10),
    "ppo.max_grad_norm": Range(0, _MANY, low_open=True),
    "ppo.gamma": Range(0, 1),
    "ppo.lam": Range(0, 1),
    "ppo.clip_eps": Range(0, 10, low_open=True),
    "ppo.value_clip_eps": Range(0, _MANY, low_open=True),
    "ppo.value_coef": Range(0, 1000),
    "ppo.entropy_coef": Range(0, 1000),
    "ppo.kl_coef": Range(0, 1000),
    "ppo.kl_target": Range(0, 1000, low_open=True, optional=True),
    "ppo.kl_horizon": Range(1, 10**9, integer=True),
    "ppo.is_cap": Range(1, _MANY),
    "ppo.reward_clip": Range(0, _MANY, low_open=True, optional=True),
    "ppo.kl_budget": Range(0, 1000, low_open=True, optional=True),
    "ppo.kl_stop": Range(0, 1000, low_open=True, optional=True),
    "ppo.kl_stop_window": Range(1, 1000, integer=True),
    "run.checkpoint_every": Range(1, _MANY, integer=True),
    "run.keep_checkpoints": Range(1, 1000, integer=True),
    "run.sample_prompts": Range(0, 10_000, integer=True),
    "run.sample_tokens": Range(1, 4096, integer=True),
    # exp(100) is about 3e43: weights stay far from float overflow (exp(710) is inf).
    "run.ope_log_weight_clip": Range(0, 100, low_open=True),
    "run.threads": Range(0, 1024, integer=True),
    "reward_model.epochs": Range(1, 1000, integer=True),
    "reward_model.batch_turns": Range(1, _MANY, integer=True),
    "reward_model.micro_batch_turns": Range(1, _MANY, integer=True),
    "reward_model.learning_rate": Range(0, 1, low_open=True),
    "reward_model.weight_decay": Range(0, 10),
    "reward_model.max_grad_norm": Range(0, _MANY, low_open=True),
    "reward_model.engaged_threshold": Range(-_MANY, _MANY),
    "reward_model.max_new_tokens": Range(0, 4096, integer=True),
    "reward_model.ridge_folds": Range(2, 1000, integer=True),
    "reward_model.repetition_penalty": Range(0, 1000),
    "contradiction.initial_multiplier": Range(0, 1000),
    "contradiction.step": Range(0, 100, low_open=True),
    "contradiction.estimate_decay": Range(0, 1, high_open=True),
    "contradiction.max_multiplier": Range(0, 1000, low_open=True),
    "contradiction.release_confidence": Range(0.5, 0.9999),
}
"""every numeric field of every section, by its TOML key (docs/TRAINING.md lists the same)"""


def check(condition: bool, key: str, value: Any, requirement: str) -> None:
    """A config error naming ``key`` and its value unless ``condition`` holds."""
    if not condition:
        raise TrainConfigError(f"{key} = {value!r}: must be {requirement}")


def check_path(key: str, value: Any) -> None:
    check(
        value is None or (isinstance(value, str) and bool(value) and "\0" not in value),
        key,
        value,
        "a non-empty path without NUL characters, or absent",
    )


def check_fields(section: Any, prefix: str) -> None:
    """Numbers of ``section`` within their ``RANGES`` (stored back as int or float) and booleans
    that are real booleans, so a config built in code is held to the same rules as a file."""
    for spec in dataclasses.fields(section):
        key = f"{prefix}{spec.name}"
        value = getattr(section, spec.name)
        if str(spec.type) == "bool" and not isinstance(value, bool):
            raise TrainConfigError(f"{key} = {value!r}: must be true or false")
        rule = RANGES.get(key)
        if rule is None or (value is None and rule.optional):
            continue
        try:
            checked = check_number(
                key, value, rule.low, rule.high, integer=rule.integer, low_open=rule.low_open, high_open=rule.high_open
            )
        except ConfigValueError:
            raise TrainConfigError(f"{key} = {value!r}: must be {rule.describe()}") from None
        setattr(section, spec.name, checked)
