"""Play-log records and their msgpack payloads.

Each record is a dataclass (``npcrl.playlog.record_types``); its payload is a msgpack map from field
name to value. Encoding and decoding share one validator per field type
(``npcrl.playlog.field_checks``), derived from the dataclass annotations, so whatever
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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from npcrl.errors import LogFormatError
from npcrl.playlog.field_checks import (
    CHECKS,
    CONTENT_OK,
    EXACT_TYPES,
    InvalidValue,
    compile_at_default,
    compile_canonical,
)
from npcrl.playlog.framing import MAX_PAYLOAD_BYTES, pack_frame
from npcrl.playlog.record_types import (
    FIRST_FIELDS,
    KIND_CONVERSATION_END,
    KIND_CONVERSATION_START,
    KIND_ENGAGEMENT_EVENT,
    KIND_NPC_TURN,
    ConversationEnd,
    ConversationStart,
    EngagementEvent,
    NpcTurn,
    Record,
)
from npcrl.playlog.record_types import KIND_NAMES as KIND_NAMES  # re-exported: its users import it from here

_MISSING = object()
_TURN_LISTS = ("response_ids", "logprobs", "full_logprobs")  # one entry per generated token each


@dataclass(frozen=True)
class FieldSpec:
    name: str
    check: Callable[[Any], Any]  # validates and normalises any value, or raises InvalidValue
    required: bool
    exact: tuple[type, ...]  # values of these types need only ``content``, if any, to pass
    content: Callable[[Any], bool] | None

    def checked(self, value: Any, owner: str) -> Any:
        """``value`` validated and normalised; LogFormatError naming ``owner.field`` if it is wrong."""
        try:
            return self.check(value)
        except InvalidValue as exc:
            raise LogFormatError(f"{owner}.{self.name}: {exc}") from None


@dataclass(frozen=True)
class RecordSpec:
    """How one record kind is checked, packed and unpacked, derived from its dataclass."""

    kind: int
    cls: type
    fields: tuple[FieldSpec, ...]
    canonical: Callable[[dict[str, Any]], bool]
    added: tuple[tuple[str, Any], ...]  # (name, default) of the fields added after the first version 1
    any_added_at_default: Callable[[dict[str, Any]], bool]

    def check_whole(self, values: dict[str, Any]) -> None:
        """What no single field can check: an NpcTurn's per-token lists have one length."""
        if self.kind != KIND_NPC_TURN:
            return
        lengths = tuple(len(values[name]) for name in _TURN_LISTS)
        if len(set(lengths)) != 1:
            raise LogFormatError(
                "NpcTurn: response_ids, logprobs and full_logprobs must have one length, got {}, {} and {}".format(
                    *lengths
                )
            )


def _build_spec(kind: int, cls: type) -> RecordSpec:
    # Field types come from the dataclass annotations, so a new field cannot be left unchecked.
    fields = dataclasses.fields(cls)
    annotated = [(f.name, str(f.type)) for f in fields]
    same_length = (" == ".join(f"len(d[{name!r}])" for name in _TURN_LISTS),)
    added = tuple((f.name, _default(f)) for f in fields[FIRST_FIELDS[cls] :])
    return RecordSpec(
        kind,
        cls,
        fields=tuple(
            FieldSpec(name, CHECKS[t], _required(f), EXACT_TYPES[t], CONTENT_OK.get(t))
            for f, (name, t) in zip(fields, annotated, strict=True)
        ),
        canonical=compile_canonical(cls.__name__, annotated, same_length if kind == KIND_NPC_TURN else ()),
        added=added,
        any_added_at_default=compile_at_default(cls.__name__, added),
    )


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field[Any]) -> Any:
    if _required(f):
        raise TypeError(f"{f.name}: a field added to a version-1 record kind needs a default")
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


_SPECS: dict[type, RecordSpec] = {
    ConversationStart: _build_spec(KIND_CONVERSATION_START, ConversationStart),
    NpcTurn: _build_spec(KIND_NPC_TURN, NpcTurn),
    EngagementEvent: _build_spec(KIND_ENGAGEMENT_EVENT, EngagementEvent),
    ConversationEnd: _build_spec(KIND_CONVERSATION_END, ConversationEnd),
}
_SPECS_BY_KIND = {spec.kind: spec for spec in _SPECS.values()}
_local = threading.local()


def spec_of(record: Record) -> RecordSpec:
    """The spec of ``record``'s kind; LogFormatError for anything that is not a record."""
    spec = _SPECS.get(type(record))
    if spec is None:
        raise LogFormatError(f"not a play-log record: {type(record).__name__}")
    return spec


def checked_values(spec: RecordSpec, record: Record) -> dict[str, Any]:
    """Every field of ``record`` through its full check (no fast path), in declaration order."""
    owner = spec.cls.__name__
    values: dict[str, Any] = {}
    for f in spec.fields:
        value = getattr(record, f.name, _MISSING)
        if value is _MISSING:
            raise LogFormatError(f"{owner}.{f.name}: missing (deleted from the instance)")
        values[f.name] = f.checked(value, owner)
    spec.check_whole(values)
    return values


def without_defaults(spec: RecordSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The payload map without the added fields that hold their default (version-1 bytes)."""
    at_default = {name for name, default in spec.added if values[name] == default}
    return {name: value for name, value in values.items() if name not in at_default}


def _packer() -> msgpack.Packer:
    # A Packer reuses its buffer (twice as fast as packb) but is not thread-safe: one per thread.
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True)
        return _local.packer


def encode_record(record: Record) -> tuple[int, bytes]:
    """(kind, msgpack payload) of a record; raises LogFormatError naming a bad field."""
    spec = spec_of(record)
    return spec.kind, _payload(spec, record)


def frame_record(record: Record) -> bytes:
    """The complete frame of a record: encode_record and pack_frame without a tuple in between
    (the append hot path; tuples are GC-tracked, bytes are not)."""
    spec = _SPECS.get(type(record)) or spec_of(record)
    return pack_frame(spec.kind, _payload(spec, record))


def _payload(spec: RecordSpec, record: Record) -> bytes:
    # Values already of the exact types are packed straight from the instance dict, which holds
    # the fields in declaration order; anything else is checked and normalised first.
    values = record.__dict__
    if not spec.canonical(values):
        values = checked_values(spec, record)
    if spec.any_added_at_default(values):
        values = without_defaults(spec, values)
    try:
        payload = _packer().pack(values)
    except (TypeError, ValueError, OverflowError) as exc:
        checked_values(spec, record)  # raises naming the field, when one field is at fault
        raise LogFormatError(f"{spec.cls.__name__}: cannot be encoded ({exc})") from None
    _check_size(spec, len(payload))
    return payload


def _check_size(spec: RecordSpec, size: int) -> None:
    if size > MAX_PAYLOAD_BYTES:
        raise LogFormatError(f"{spec.cls.__name__}: payload of {size} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")


def decode_record(kind: int, payload: bytes | memoryview) -> Record:
    """The record in a frame's payload; raises LogFormatError naming the kind or field at fault."""
    spec = _SPECS_BY_KIND.get(kind)
    if spec is None:
        raise LogFormatError(f"unknown record kind {kind}")
    obj = _unpack_map(spec, payload)
    owner = spec.cls.__name__
    values: dict[str, Any] = {}
    for f in spec.fields:
        value = obj.get(f.name, _MISSING)
        if value is _MISSING:
            if f.required:
                raise LogFormatError(f"{owner}: missing field {f.name!r}")
        elif type(value) in f.exact and (f.content is None or f.content(value)):
            values[f.name] = value  # msgpack's own types: the common case, no conversion needed
        else:
            values[f.name] = f.checked(value, owner)
    spec.check_whole(values)
    return spec.cls(**values)


def _unpack_map(spec: RecordSpec, payload: bytes | memoryview) -> dict[str, Any]:
    """The payload's msgpack map, unpacked within limits that a forged length cannot exceed."""
    size = len(payload)
    _check_size(spec, size)
    # unpackb has no max_buffer_size: the size check above is that limit. The element limits stop
    # a forged length prefix from allocating more than the payload could hold.
    limits = {"max_str_len": size, "max_bin_len": size, "max_array_len": size, "max_map_len": size // 2}
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True, max_ext_len=0, **limits)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise LogFormatError(f"{spec.cls.__name__}: undecodable payload ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise LogFormatError(f"{spec.cls.__name__}: payload is a {type(obj).__name__}, not a map")
    return obj
