"""Checks of play-log field values, one per annotated field type, and the generated fast paths.

Each check validates any value and normalises it to the plain type msgpack writes and reads
(numpy scalars and arrays become Python values), or raises ``InvalidValue`` saying what was
expected. Values that already have the exact plain types need only the cheaper content tests
(``EXACT_TYPES``, ``CONTENT_OK``), compiled into one expression per record kind by
``compile_canonical``: the append hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from npcrl.playlog.record_types import REJECTED_SAMPLE_KEYS

_MAX_NESTING = 32  # well under msgpack's unpack stack limit, so every nested value we write reads back


class InvalidValue(Exception):
    """A field value is wrong; the message says what was expected."""


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected str, got {type(value).__name__}")
    return str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _index(value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise InvalidValue(f"expected int, got {type(value).__name__}")
    if value < 0:
        raise InvalidValue(f"expected an int >= 0, got {value}")
    return int(value)


def _float(value: Any) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
        raise InvalidValue(f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidValue(f"expected a finite number, got {number!r}")
    return number


def _opt_float(value: Any) -> float | None:
    return None if value is None else _float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidValue(f"expected bool, got {type(value).__name__}")
    return bool(value)


def _number_array(value: Any, kinds: str, what: str) -> np.ndarray:
    # numpy checks and converts a whole list in C; accepts lists, tuples and 1-D arrays alike.
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise InvalidValue(f"expected a list of {what}, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidValue(f"expected a list of {what} ({exc})") from None
    if array.ndim != 1 or (array.size and array.dtype.kind not in kinds):
        raise InvalidValue(f"expected a flat list of {what}, got elements of type {array.dtype}")
    return array


def _int_list(value: Any) -> list[int]:
    array = _number_array(value, "iu", "ints")
    if array.size and array.dtype.kind == "i" and array.min() < 0:
        raise InvalidValue("expected token ids >= 0")
    return array.tolist()


def _float_list(value: Any) -> list[float]:
    array = _number_array(value, "fiu", "numbers").astype(np.float64, copy=False)
    bad = np.flatnonzero(np.isnan(array) | np.isposinf(array))
    if bad.size:
        raise InvalidValue(f"expected log-probs (finite or -inf), got {float(array[bad[0]])!r} at index {int(bad[0])}")
    return array.tolist()


def _plain(value: Any, depth: int, where: str = "") -> None:
    """Refuse what msgpack cannot write, our strict reader would not read back, or is not a finite
    number; ``where`` is the path to ``value`` inside the field, for the message."""
    if depth > _MAX_NESTING:
        raise InvalidValue(f"nested deeper than {_MAX_NESTING} levels")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue(f"non-finite number {value!r} at {where or 'the top level'}")
        return
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain(item, depth + 1, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValue(f"map keys must be str, got {type(key).__name__} {key!r}")
            _plain(item, depth + 1, f"{where}[{key!r}]")
        return
    raise InvalidValue(
        f"{type(value).__name__} values cannot be logged (use None, bool, int, float, str, bytes, list, dict)"
    )


def _str_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidValue(f"expected a dict, got {type(value).__name__}")
    _plain(value, 0, "")
    return dict(value)


def _rejected_samples(value: Any) -> list[dict[str, Any]]:
    """``NpcTurn.rejected_samples`` (``record_types.RejectedSamples``): a list of sample maps, each
    with exactly the known keys, checked like the turn's own lists; the message names the entry."""
    if not isinstance(value, (list, tuple)):
        raise InvalidValue(f"expected a list of samples, got {type(value).__name__}")
    samples = []
    for i, sample in enumerate(value):
        if not isinstance(sample, dict):
            raise InvalidValue(f"[{i}]: expected a map, got {type(sample).__name__}")
        missing = [key for key in REJECTED_SAMPLE_KEYS if key not in sample]
        unknown = sorted(str(key) for key in sample if key not in REJECTED_SAMPLE_KEYS)
        if missing or unknown:
            raise InvalidValue(f"[{i}]: missing keys {missing}, unknown keys {unknown}")
        checks = (_int_list, _float_list, _float_list, _str_dict, _str)
        checked: dict[str, Any] = {}
        for key, check in zip(REJECTED_SAMPLE_KEYS, checks, strict=True):
            try:
                checked[key] = check(sample[key])
            except InvalidValue as exc:
                raise InvalidValue(f"[{i}].{key}: {exc}") from None
        lengths = {len(checked[key]) for key in ("response_ids", "logprobs", "full_logprobs")}
        if len(lengths) != 1:
            raise InvalidValue(f"[{i}]: response_ids, logprobs and full_logprobs must have one length")
        samples.append(checked)
    return samples


CHECKS: dict[str, Callable[[Any], Any]] = {
    "str": _str,
    "str | None": _opt_str,
    "int": _index,
    "float": _float,
    "float | None": _opt_float,
    "bool": _bool,
    "list[int]": _int_list,
    "list[float]": _float_list,
    "dict[str, Any]": _str_dict,
    "RejectedSamples": _rejected_samples,
}


# Fast paths. Values of exactly these types (what msgpack decodes to, and what well-behaved game
# code passes) need only a content check; anything else (numpy scalars and arrays, tuples,
# int-valued floats) goes through the checks above, which normalise it or name the field at fault.
_NONE = type(None)
EXACT_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, _NONE),
    "int": (int,),
    "float": (float,),
    "float | None": (float, _NONE),
    "bool": (bool,),
    "list[int]": (list,),
    "list[float]": (list,),
    "dict[str, Any]": (dict,),
    "RejectedSamples": (list,),
}
_SCALARS = frozenset({_NONE, bool, int, str, bytes})
_isfinite = math.isfinite


def _ints_ok(value: list[Any]) -> bool:
    return set(map(type, value)) <= {int} and (not value or min(value) >= 0)


def _floats_ok(value: list[Any]) -> bool:
    # One C-speed sum tests for NaN and +inf: either makes the sum NaN or +inf (+inf and -inf
    # together give NaN). -inf alone, allowed, stays -inf; finite values that overflow to +inf
    # only send the list to the exact per-element check.
    if not set(map(type, value)) <= {float}:
        return False
    total = sum(value)
    return total == total and total != math.inf


def _plain_ok(value: dict[str, Any]) -> bool:
    for key, item in value.items():
        if type(key) is not str:
            return False
        kind = type(item)
        if kind is float:
            if not _isfinite(item):
                return False
        elif kind not in _SCALARS:
            try:
                _plain(item, 1, "")
            except InvalidValue:
                return False
    return True


CONTENT_OK: dict[str, Callable[[Any], bool]] = {
    "int": lambda value: value >= 0,
    "float": _isfinite,
    "float | None": lambda value: value is None or _isfinite(value),
    "list[int]": _ints_ok,
    "list[float]": _floats_ok,
    "dict[str, Any]": _plain_ok,
    "RejectedSamples": lambda value: not value,  # the common empty list; any sample takes the full check
}
# The same tests as one boolean expression per annotation, for compile_canonical.
_CANONICAL_TERMS = {
    "str": "type({v}) is str",
    "str | None": "({v} is None or type({v}) is str)",
    "int": "(type({v}) is int and {v} >= 0)",
    "float": "(type({v}) is float and _isfinite({v}))",
    "float | None": "({v} is None or (type({v}) is float and _isfinite({v})))",
    "bool": "type({v}) is bool",
    "list[int]": "(type({v}) is list and _ints_ok({v}))",
    "list[float]": "(type({v}) is list and _floats_ok({v}))",
    "dict[str, Any]": "(type({v}) is dict and _plain_ok({v}))",
    "RejectedSamples": "(type({v}) is list and not {v})",
}


def compile_canonical(
    name: str, annotated: list[tuple[str, str]], extra_terms: tuple[str, ...] = ()
) -> Callable[[Any], bool]:
    """``canonical(instance_dict)``: True when a record's attribute dict, with the (field name,
    annotation) pairs ``annotated``, can be packed as it is; ``extra_terms`` are further Python
    expressions over ``d`` that must hold.

    It runs on every append, so it is generated from the annotations (as dataclasses generates
    ``__init__``): one flat expression costs less than half of a loop over the fields."""
    terms = [f"len(d) == {len(annotated)}"]
    terms += [_CANONICAL_TERMS[t].format(v=f"d[{f!r}]") for f, t in annotated]
    terms += extra_terms
    source = (
        "def canonical(d):\n    try:\n        return "
        + " and ".join(terms)
        + "\n    except KeyError:\n        return False\n"
    )
    namespace: dict[str, Any] = {
        "_ints_ok": _ints_ok,
        "_floats_ok": _floats_ok,
        "_plain_ok": _plain_ok,
        "_isfinite": _isfinite,
    }
    exec(compile(source, f"<npcrl.playlog canonical check for {name}>", "exec"), namespace)
    return namespace["canonical"]


def compile_at_default(name: str, added: tuple[tuple[str, Any], ...]) -> Callable[[dict[str, Any]], bool]:
    """``at_default(values)``: True when an added field holds its default (and must be left out).
    Generated like ``canonical``, as one flat expression: it runs on every append."""
    terms = [f"d[{name!r}] == _default{i}" for i, (name, _) in enumerate(added)] or ["False"]
    namespace: dict[str, Any] = {f"_default{i}": default for i, (_, default) in enumerate(added)}
    source = "def at_default(d):\n    return " + " or ".join(terms) + "\n"
    exec(compile(source, f"<npcrl.playlog default check for {name}>", "exec"), namespace)
    return namespace["at_default"]
