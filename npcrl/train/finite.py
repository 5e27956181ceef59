"""The trainer's last line of defence against non-finite numbers.

A NaN or an infinity anywhere in PPO (a reward, a model output, an advantage, an importance weight,
the loss, the gradient norm, a parameter) spreads to every weight within one optimizer step, and a
checkpoint or bundle written after that is garbage that still loads. The trainer checks at each
stage and stops with ``NonFiniteError`` naming the iteration and the quantity, before anything is
written; these helpers do the checking and word the message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from npcrl.errors import TrainError

_LISTED = 3
"""how many offending tensors or turns a message names before it says how many more there are"""


class NonFiniteError(TrainError):
    """A training quantity is NaN or infinite; nothing was written and the weights were not stepped."""


def describe_nonfinite(tensor: torch.Tensor) -> str | None:
    """None when every value of ``tensor`` is finite, else how many are NaN and how many infinite."""
    values = tensor.detach()
    if not values.is_floating_point() or bool(torch.isfinite(values).all()):
        return None
    nan = int(torch.isnan(values).sum())
    inf = int(torch.isinf(values).sum())
    return f"{nan} NaN and {inf} infinite of {values.numel()} values"


def _listed(items: Sequence[str]) -> str:
    more = f" (and {len(items) - _LISTED} more)" if len(items) > _LISTED else ""
    return "; ".join(items[:_LISTED]) + more


def require_finite_tensors(named: Iterable[tuple[str, torch.Tensor]], where: str, what: str) -> None:
    """Raise ``NonFiniteError`` naming each tensor of ``named`` that holds a NaN or an infinity."""
    bad = []
    for name, tensor in named:
        found = describe_nonfinite(tensor)
        if found is not None:
            bad.append(f"{name}: {found}")
    if bad:
        raise NonFiniteError(f"{where}: {what} not finite: {_listed(bad)}")


def require_finite_masked(tensors: dict[str, torch.Tensor], mask: torch.Tensor, where: str) -> None:
    """As ``require_finite_tensors`` over the response positions of (R, T) tensors only (padding is not read)."""
    keep = mask.bool()
    require_finite_tensors(((name, t[keep]) for name, t in tensors.items()), where, "values at response tokens")


def require_finite_numbers(values: dict[str, float], where: str, consequence: str) -> None:
    """Raise ``NonFiniteError`` when a scalar of ``values`` is NaN or infinite; ``consequence`` says what was done."""
    bad = [f"{name} = {value!r}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteError(f"{where}: {_listed(bad)} is not finite; {consequence}")


def require_finite_rewards(keys: Sequence[str], rewards: Sequence[float], where: str, what: str = "reward") -> None:
    """Raise ``NonFiniteError`` naming the turns (``conversation#turn``) whose reward is NaN or infinite."""
    bad = [f"{key} = {reward!r}" for key, reward in zip(keys, rewards, strict=True) if not math.isfinite(reward)]
    if bad:
        raise NonFiniteError(f"{where}: the {what} of {len(bad)} turn(s) is not finite: {_listed(bad)}")
