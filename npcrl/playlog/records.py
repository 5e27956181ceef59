"""Play-log records and their msgpack payloads.

Each record is a dataclass; its payload is a msgpack map from field name to value. Encoding and
decoding share one validator per field type, derived from the dataclass annotations, so whatever
``encode_record`` accepts, ``decode_record`` reads back. Values that already have the exact plain
types skip conversion (the append hot path); anything else is checked and normalised (numpy
scalars and arrays become Python values). Float lists are msgpack float64 values, so log-probs
round-trip bit for bit. Decoding ignores keys it does not know (a newer writer may add fields) and
refuses missing or mistyped ones with a LogFormatError naming the field.

Numbers must be finite, in both directions: a NaN or infinity in a time, a latency, an event value
or anywhere inside a ``dict`` field would poison every reward and average computed from the log.
The one exception is ``-inf`` in a log-prob list (the log of a zero probability, which format
version 1 has always carried); NaN and ``+inf`` are refused there too.

Fields added to a kind after format version 1 first shipped are written only when they differ from
their default, so a record that does not use them keeps its version-1 bytes.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from npcrl.errors import LogFormatError
from npcrl.playlog.framing import MAX_PAYLOAD_BYTES, pack_frame

KIND_CONVERSATION_START = 1
KIND_NPC_TURN = 2
KIND_ENGAGEMENT_EVENT = 3
KIND_CONVERSATION_END = 4
KIND_NAMES = {
    KIND_CONVERSATION_START: "conversation_start",
    KIND_NPC_TURN: "npc_turn",
    KIND_ENGAGEMENT_EVENT: "engagement_event",
    KIND_CONVERSATION_END: "conversation_end",
}
_MAX_NESTING = 32  # well under msgpack's unpack stack limit, so every nested value we write reads back
_MISSING = object()


@dataclass
class ConversationStart:
    conversation_id: str
    npc_id: str
    player_id: str
    persona_name: str
    persona_hash: str
    bundle_id: str
    sampler: dict[str, Any]
    time: float  # unix seconds


@dataclass
class NpcTurn:
    conversation_id: str
    turn_index: int
    npc_id: str
    bundle_id: str
    player_text: str
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    full_logprobs: list[float]
    text: str
    stop_reason: str
    sampler: dict[str, Any]
    latency_s: float
    time_to_first_token_s: float
    filtered: bool
    fallback: bool
    time: float
    filter_reason: str | None = None
    queue_s: float = 0.0


@dataclass
class EngagementEvent:
    conversation_id: str
    turn_index: int
    kind: str  # "reply", "rating", "walk_away", "quest_accepted", "trade", or any custom string
    value: float | None
    time: float
    data: dict[str, Any] = field(default_factory=dict)
    # Set by PlayLogWriter.append ("" in logs written before events had ids); bookkeeping for
    # recognising a record read twice, so == compares what happened and leaves it out.
    event_id: str = field(default="", compare=False)


@dataclass
class ConversationEnd:
    conversation_id: str
    reason: str
    time: float


Record = ConversationStart | NpcTurn | EngagementEvent | ConversationEnd
# How many leading fields each kind had when format version 1 first shipped; fields after them are
# optional additions, written only when they differ from their default (see the module docstring).
_FIRST_FIELDS = {ConversationStart: 8, NpcTurn: 18, EngagementEvent: 6, ConversationEnd: 3}


class _Invalid(Exception):
    """A field value is wrong; the message says what was expected."""


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected str, got {type(value).__name__}")
    return str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _index(value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise _Invalid(f"expected int, got {type(value).__name__}")
    if value < 0:
        raise _Invalid(f"expected an int >= 0, got {value}")
    return int(value)


def _float(value: Any) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
        raise _Invalid(f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise _Invalid(f"expected a finite number, got {number!r}")
    return number


def _opt_float(value: Any) -> float | None:
    return None if value is None else _float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _Invalid(f"expected bool, got {type(value).__name__}")
    return bool(value)


def _number_array(value: Any, kinds: str, what: str) -> np.ndarray:
    # numpy checks and converts a whole list in C; accepts lists, tuples and 1-D arrays alike.
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise _Invalid(f"expected a list of {what}, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _Invalid(f"expected a list of {what} ({exc})") from None
    if array.ndim != 1 or (array.size and array.dtype.kind not in kinds):
        raise _Invalid(f"expected a flat list of {what}, got elements of type {array.dtype}")
    return array


def _int_list(value: Any) -> list[int]:
    array = _number_array(value, "iu", "ints")
    if array.size and array.dtype.kind == "i" and array.min() < 0:
        raise _Invalid("expected token ids >= 0")
    return array.tolist()


def _float_list(value: Any) -> list[float]:
    array = _number_array(value, "fiu", "numbers").astype(np.float64, copy=False)
    bad = np.flatnonzero(np.isnan(array) | np.isposinf(array))
    if bad.size:
        raise _Invalid(f"expected log-probs (finite or -inf), got {float(array[bad[0]])!r} at index {int(bad[0])}")
    return array.tolist()


def _plain(value: Any, depth: int, where: str = "") -> None:
    """Refuse what msgpack cannot write, our strict reader would not read back, or is not a finite
    number; ``where`` is the path to ``value`` inside the field, for the message."""
    if depth > _MAX_NESTING:
        raise _Invalid(f"nested deeper than {_MAX_NESTING} levels")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(f"non-finite number {value!r} at {where or 'the top level'}")
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
                raise _Invalid(f"map keys must be str, got {type(key).__name__} {key!r}")
            _plain(item, depth + 1, f"{where}[{key!r}]")
        return
    raise _Invalid(
        f"{type(value).__name__} values cannot be logged (use None, bool, int, float, str, bytes, list, dict)"
    )


def _str_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a dict, got {type(value).__name__}")
    _plain(value, 0, "")
    return dict(value)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "str": _str,
    "str | None": _opt_str,
    "int": _index,
    "float": _float,
    "float | None": _opt_float,
    "bool": _bool,
    "list[int]": _int_list,
    "list[float]": _float_list,
    "dict[str, Any]": _str_dict,
}


# Fast paths. Values of exactly these types (what msgpack decodes to, and what well-behaved game
# code passes) need only a content check; anything else (numpy scalars and arrays, tuples,
# int-valued floats) goes through the checks above, which normalise it or name the field at fault.
_NONE = type(None)
_EXACT: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, _NONE),
    "int": (int,),
    "float": (float,),
    "float | None": (float, _NONE),
    "bool": (bool,),
    "list[int]": (list,),
    "list[float]": (list,),
    "dict[str, Any]": (dict,),
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
            except _Invalid:
                return False
    return True


_CONTENT_OK: dict[str, Callable[[Any], bool]] = {
    "int": lambda value: value >= 0,
    "float": _isfinite,
    "float | None": lambda value: value is None or _isfinite(value),
    "list[int]": _ints_ok,
    "list[float]": _floats_ok,
    "dict[str, Any]": _plain_ok,
}
# The same tests as one boolean expression per annotation, for _compile_canonical.
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
}


def _compile_canonical(cls: type, annotated: list[tuple[dataclasses.Field[Any], str]]) -> Callable[[Any], bool]:
    """``canonical(instance_dict)``: True when a record's attribute dict can be packed as it is.

    It runs on every append, so it is generated from the annotations (as dataclasses generates
    ``__init__``): one flat expression costs less than half of a loop over the fields."""
    terms = [f"len(d) == {len(annotated)}"]
    terms += [_CANONICAL_TERMS[t].format(v=f"d[{f.name!r}]") for f, t in annotated]
    if cls is NpcTurn:
        terms.append('len(d["response_ids"]) == len(d["logprobs"]) == len(d["full_logprobs"])')
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
    exec(compile(source, f"<npcrl.playlog canonical check for {cls.__name__}>", "exec"), namespace)
    return namespace["canonical"]


@dataclass(frozen=True)
class _Field:
    name: str
    check: Callable[[Any], Any]  # validates and normalises any value, or raises _Invalid
    required: bool
    exact: tuple[type, ...]  # values of these types need only ``content``, if any, to pass
    content: Callable[[Any], bool] | None


@dataclass(frozen=True)
class _Spec:
    kind: int
    cls: type
    fields: tuple[_Field, ...]
    canonical: Callable[[dict[str, Any]], bool]
    added: tuple[tuple[str, Any], ...]  # (name, default) of the fields added after the first version 1
    any_added_at_default: Callable[[dict[str, Any]], bool]


def _spec(kind: int, cls: type) -> _Spec:
    # Field types come from the dataclass annotations, so a new field cannot be left unchecked.
    annotated = [(f, str(f.type)) for f in dataclasses.fields(cls)]
    return _Spec(
        kind,
        cls,
        fields=tuple(
            _Field(
                f.name,
                _CHECKS[t],
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                _EXACT[t],
                _CONTENT_OK.get(t),
            )
            for f, t in annotated
        ),
        canonical=_compile_canonical(cls, annotated),
        added=(added := tuple((f.name, _default(f)) for f, _ in annotated[_FIRST_FIELDS[cls] :])),
        any_added_at_default=_compile_at_default(cls, added),
    )


def _compile_at_default(cls: type, added: tuple[tuple[str, Any], ...]) -> Callable[[dict[str, Any]], bool]:
    """``at_default(values)``: True when an added field holds its default (and must be left out).
    Generated like ``canonical``, as one flat expression: it runs on every append."""
    terms = [f"d[{name!r}] == _default{i}" for i, (name, _) in enumerate(added)] or ["False"]
    namespace: dict[str, Any] = {f"_default{i}": default for i, (_, default) in enumerate(added)}
    source = "def at_default(d):\n    return " + " or ".join(terms) + "\n"
    exec(compile(source, f"<npcrl.playlog default check for {cls.__name__}>", "exec"), namespace)
    return namespace["at_default"]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        raise TypeError(f"{f.name}: a field added to a version-1 record kind needs a default")
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


_SPECS: dict[type, _Spec] = {
    ConversationStart: _spec(KIND_CONVERSATION_START, ConversationStart),
    NpcTurn: _spec(KIND_NPC_TURN, NpcTurn),
    EngagementEvent: _spec(KIND_ENGAGEMENT_EVENT, EngagementEvent),
    ConversationEnd: _spec(KIND_CONVERSATION_END, ConversationEnd),
}
_SPECS_BY_KIND = {spec.kind: spec for spec in _SPECS.values()}
_local = threading.local()


def _check_turn_lengths(values: dict[str, Any]) -> None:
    lengths = (len(values["response_ids"]), len(values["logprobs"]), len(values["full_logprobs"]))
    if len(set(lengths)) != 1:
        raise LogFormatError(
            "NpcTurn: response_ids, logprobs and full_logprobs must have one length, got {}, {} and {}".format(*lengths)
        )


def _normalised(spec: _Spec, record: Record) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in spec.fields:
        value = getattr(record, f.name, _MISSING)
        if value is _MISSING:
            raise LogFormatError(f"{spec.cls.__name__}.{f.name}: missing (deleted from the instance)")
        try:
            values[f.name] = f.check(value)
        except _Invalid as exc:
            raise LogFormatError(f"{spec.cls.__name__}.{f.name}: {exc}") from None
    if spec.kind == KIND_NPC_TURN:
        _check_turn_lengths(values)
    return values


def _packer() -> msgpack.Packer:
    # A Packer reuses its buffer (twice as fast as packb) but is not thread-safe: one per thread.
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True)
        return _local.packer


def encode_record(record: Record) -> tuple[int, bytes]:
    """(kind, msgpack payload) of a record; raises LogFormatError naming a bad field."""
    spec = _spec_of(record)
    return spec.kind, _payload(spec, record)


def frame_record(record: Record) -> bytes:
    """The complete frame of a record: encode_record and pack_frame without a tuple in between
    (the append hot path; tuples are GC-tracked, bytes are not)."""
    spec = _SPECS.get(type(record)) or _spec_of(record)
    return pack_frame(spec.kind, _payload(spec, record))


def _spec_of(record: Record) -> _Spec:
    spec = _SPECS.get(type(record))
    if spec is None:
        raise LogFormatError(f"not a play-log record: {type(record).__name__}")
    return spec


def _payload(spec: _Spec, record: Record) -> bytes:
    # Values already of the exact types are packed straight from the instance dict, which holds
    # the fields in declaration order; anything else is checked and normalised first.
    values = record.__dict__
    if not spec.canonical(values):
        values = _normalised(spec, record)
    if spec.any_added_at_default(values):
        values = _without_defaults(spec, values)
    try:
        payload = _packer().pack(values)
    except (TypeError, ValueError, OverflowError) as exc:
        _normalised(spec, record)  # raises naming the field, when one field is at fault
        raise LogFormatError(f"{spec.cls.__name__}: cannot be encoded ({exc})") from None
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise LogFormatError(
            f"{spec.cls.__name__}: payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    return payload


def _without_defaults(spec: _Spec, values: dict[str, Any]) -> dict[str, Any]:
    """The payload map without the added fields that hold their default (version-1 bytes)."""
    at_default = {name for name, default in spec.added if values[name] == default}
    return {name: value for name, value in values.items() if name not in at_default}


def decode_record(kind: int, payload: bytes | memoryview) -> Record:
    """The record in a frame's payload; raises LogFormatError naming the kind or field at fault."""
    spec = _SPECS_BY_KIND.get(kind)
    if spec is None:
        raise LogFormatError(f"unknown record kind {kind}")
    name = spec.cls.__name__
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise LogFormatError(f"{name}: payload of {size} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        # unpackb has no max_buffer_size: the size check above is that limit. The element limits
        # stop a forged length prefix from allocating more than the payload could hold.
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise LogFormatError(f"{name}: undecodable payload ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise LogFormatError(f"{name}: payload is a {type(obj).__name__}, not a map")
    values: dict[str, Any] = {}
    for f in spec.fields:
        value = obj.get(f.name, _MISSING)
        if value is _MISSING:
            if f.required:
                raise LogFormatError(f"{name}: missing field {f.name!r}")
        elif type(value) in f.exact and (f.content is None or f.content(value)):
            values[f.name] = value  # msgpack's own types: the common case, no conversion needed
        else:
            try:
                values[f.name] = f.check(value)
            except _Invalid as exc:
                raise LogFormatError(f"{name}.{f.name}: {exc}") from None
    if spec.kind == KIND_NPC_TURN:
        _check_turn_lengths(values)
    return spec.cls(**values)
