"""Numbers from config files and config dataclasses: the right type, finite, within a documented range.

One rule for every config number: a TOML ``true`` is not a number, NaN and infinities are refused,
and each field has both a lower and an upper bound. Upper bounds are what keep combinations finite
(a weight times an event value, summed and discounted; ``exp`` of a log-weight clip), so every
range is stated explicitly at the field rather than left open.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from npcrl.errors import NpcrlError


class ConfigValueError(NpcrlError, ValueError):
    """A config value breaks its rule; ``key`` names the field and ``value`` is what was given.

    Also a ``ValueError``, so callers that caught ``ValueError`` for bad config values still do.
    """

    def __init__(self, key: str, value: Any, requirement: str) -> None:
        super().__init__(f"{key} = {value!r}: must be {requirement}")
        self.key = key
        self.value = value
        self.requirement = requirement


def describe_bounds(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> str:
    """The range as words, e.g. ``> 0 and <= 1``."""
    return f"{'>' if low_open else '>='} {plain_number(low)} and {'<' if high_open else '<='} {plain_number(high)}"


def plain_number(bound: float) -> str:
    """A bound as people write it: ``1000000``, ``0.5``, ``1e-06``."""
    if isinstance(bound, int) or (bound.is_integer() and abs(bound) < 1e7):
        return str(int(bound))
    return f"{bound:g}"


def _is_integer(value: Any) -> bool:
    # numbers.Integral covers numpy integers; bool is an int in Python but never a config number.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return _is_integer(value) or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def check_number(
    key: str,
    value: Any,
    low: float,
    high: float,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """``value`` as an ``int`` (``integer``) or a ``float``, if it is one and lies in the range.

    Raises ``ConfigValueError`` naming ``key`` and the value otherwise. Integers are compared
    exactly before any conversion, so an integer too large for a float is refused, not an
    ``OverflowError``.
    """
    bounds = describe_bounds(low, high, low_open=low_open, high_open=high_open)
    requirement = f"an integer {bounds}" if integer else bounds
    if not (_is_integer(value) if integer else _is_real(value)):
        raise ConfigValueError(key, value, requirement)
    if not _is_integer(value) and not math.isfinite(value):
        raise ConfigValueError(key, value, requirement)
    above_low = value > low if low_open else value >= low
    below_high = value < high if high_open else value <= high
    if not (above_low and below_high):
        raise ConfigValueError(key, value, requirement)
    return int(value) if integer else float(value)


def check_optional(key: str, value: Any, low: float, high: float, **kwargs: Any) -> Any:
    """As ``check_number``, but ``None`` (a field left unset) passes through."""
    return None if value is None else check_number(key, value, low, high, **kwargs)


def check_bool(key: str, value: Any) -> bool:
    """A real ``bool``: ``1`` or ``"yes"`` where true/false belongs is a mistake."""
    if not isinstance(value, bool):
        raise ConfigValueError(key, value, "true or false")
    return value


def unknown_keys_text(unknown: Iterable[str], allowed: Sequence[str], notes: Mapping[str, str] | None = None) -> str:
    """The unknown keys of a config file for an error message, each with its note from ``notes`` or
    the closest allowed key: ``'colour' (did you mean 'color'?), 'zzz'``."""
    notes = notes or {}
    return ", ".join(
        f"{key!r}" + (f" ({notes[key]})" if key in notes else did_you_mean(key, allowed)) for key in unknown
    )


def did_you_mean(key: str, allowed: Sequence[str]) -> str:
    """`` (did you mean 'closest'?)`` naming the allowed key closest to ``key``, or ``""`` when none is close."""
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
