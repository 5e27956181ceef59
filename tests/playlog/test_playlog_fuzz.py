"""Fuzzing the reader: whatever the bytes, it yields only records that were written, or raises
LogFormatError; never another exception, and never large allocations. Whole frames holding
arbitrary maps (wrong types, NaN and infinities, deep nesting) are skipped one by one, and what
the reader does yield is always something the writer would accept."""

from __future__ import annotations

import dataclasses
import math
import struct
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playlog_helpers import build_log, conversation, event

from npcrl.errors import LogFormatError
from npcrl.playlog import (
    ConversationEnd,
    ConversationStart,
    EngagementEvent,
    LogReader,
    NpcTurn,
    Record,
    decode_record,
    encode_record,
)
from npcrl.playlog.framing import FILE_HEADER, MAX_PAYLOAD_BYTES, encode_frame, file_header

RECORDS = conversation("fuzz", turns=2) + [event("fuzz", 2, i) for i in range(2)]
DATA, SPANS = build_log(RECORDS)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_bytes(data: bytes) -> tuple[list[Record], LogReader | None]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.npl"
        path.write_bytes(data)
        reader = LogReader(path)
        try:
            return list(reader), reader
        except LogFormatError:
            return [], None


def is_subsequence(got: list[Record], of: list[Record]) -> bool:
    it = iter(of)
    return all(any(x == y for y in it) for x in got)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_after_a_valid_header(tail: bytes) -> None:
    records, reader = read_bytes(file_header() + tail)
    assert reader is not None  # the header is fine, so nothing may raise
    assert records == []  # random bytes never carry a valid checksum in practice
    s = reader.stats
    assert s.corrupt_bytes + s.torn_tail_bytes <= len(tail)


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_as_a_whole_file(data: bytes) -> None:
    records, _ = read_bytes(data)
    assert records == []


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(DATA) - 1), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, len(DATA)), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, len(DATA) - 1), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, len(DATA))),
    st.tuples(st.just("u32"), st.integers(0, len(DATA) - 4), st.sampled_from([0, 1, MAX_PAYLOAD_BYTES, 2**32 - 1])),
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(data)
    for op, at, *arg in mutations:
        at = min(at, len(out))
        if op == "flip" and at < len(out):
            out[at] ^= arg[0]
        elif op == "insert":
            out[at:at] = arg[0]
        elif op == "delete":
            del out[at : at + arg[0]]
        elif op == "truncate":
            del out[at:]
        elif op == "u32" and at + 4 <= len(out):
            struct.pack_into("<I", out, at, arg[0])
    return bytes(out)


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_files_yield_only_original_records_in_order(mutations: list[tuple[Any, ...]]) -> None:
    records, reader = read_bytes(mutate(DATA, mutations))
    assert is_subsequence(records, RECORDS)
    if reader is not None:
        assert reader.stats.records == len(records)


@FUZZ
@given(st.integers(0, len(SPANS) - 1), st.integers(MAX_PAYLOAD_BYTES // 2, 2**32 - 1))
def test_a_huge_length_field_costs_no_memory(victim: int, length: int) -> None:
    data = bytearray(DATA)
    struct.pack_into("<I", data, SPANS[victim][0], length)
    tracemalloc.start()
    try:
        records, _ = read_bytes(bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records == RECORDS[:victim] + RECORDS[victim + 1 :]
    assert peak < 256 * 1024, peak


@FUZZ
@given(st.binary(min_size=1, max_size=512))
def test_decode_record_raises_only_log_format_error(payload: bytes) -> None:
    for kind in (1, 2, 3, 4):
        try:
            decode_record(kind, payload)
        except LogFormatError:
            pass


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["conversation_id", "turn_index", "kind", "value", "time", "data", "extra"]),
        st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(), st.binary()),
    )
)
def test_framed_maps_with_wrong_types_are_skipped_not_raised(payload: dict[str, Any]) -> None:
    frame = encode_frame(3, msgpack.packb(payload))
    records, reader = read_bytes(file_header() + frame + DATA[FILE_HEADER.size :])
    assert reader is not None
    assert records[-len(RECORDS) :] == RECORDS
    assert reader.stats.records + reader.stats.corrupt_skipped == len(RECORDS) + 1


# Property-based records: payload maps with every field name of every kind and values of any type
# msgpack can carry, non-finite numbers and nested maps included, framed with a valid checksum.
FIELD_NAMES = sorted(
    {f.name for cls in (ConversationStart, NpcTurn, EngagementEvent, ConversationEnd) for f in dataclasses.fields(cls)}
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.sampled_from([math.inf, -math.inf, math.nan]),
    st.text(max_size=8),
    st.binary(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
# Conversation ids apart from the surrounding records', so a decodable fuzz record never repeats one.
PAYLOADS = st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=len(FIELD_NAMES)).map(
    lambda payload: {**payload, "conversation_id": "x-" + str(payload.get("conversation_id", ""))}
)
NUMERIC_FIELDS = ["time", "value", "latency_s", "time_to_first_token_s", "logprobs", "full_logprobs", "data", "sampler"]
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
NEAR_VALID = st.builds(
    lambda record, changes: {**dataclasses.asdict(record), **changes},
    st.sampled_from(RECORDS),
    st.one_of(
        st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=2),
        # A known record with one non-finite number where numbers go: what older writers let through.
        st.dictionaries(
            st.sampled_from(NUMERIC_FIELDS),
            NON_FINITE | st.lists(NON_FINITE, min_size=8, max_size=8) | st.dictionaries(st.just("k"), NON_FINITE),
            min_size=1,
            max_size=1,
        ),
    ),
).map(lambda payload: {**payload, "conversation_id": "x-near"})


def non_finite(value: Any) -> list[float]:
    """The NaN and infinite numbers anywhere in a value (lists and maps walked)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [bad for item in items for bad in non_finite(item)]


def assert_finite(record: Record) -> None:
    for name, value in vars(record).items():
        bad = non_finite(value)
        if name in ("logprobs", "full_logprobs"):  # the log of a zero probability is allowed
            bad = [v for v in bad if v != -math.inf]
        assert not bad, f"{type(record).__name__}.{name} holds {bad}"


def fuzz_frame(kind: int, payload: dict[str, Any]) -> bytes:
    return encode_frame(kind, msgpack.packb(payload, use_bin_type=True))


@FUZZ
@given(st.integers(1, 6), st.one_of(PAYLOADS, NEAR_VALID))
def test_decode_record_yields_a_writable_record_or_log_format_error(kind: int, payload: dict[str, Any]) -> None:
    """Only the project's error comes out, and whatever decodes the writer would write again:
    the reader never hands on a record (a NaN, an infinity) that the writer refuses."""
    try:
        record = decode_record(kind, msgpack.packb(payload, use_bin_type=True))
    except LogFormatError:
        return
    assert_finite(record)
    assert decode_record(*encode_record(record)) == record


@FUZZ
@given(st.lists(st.tuples(st.integers(1, 6), st.one_of(PAYLOADS, NEAR_VALID)), min_size=1, max_size=4), st.data())
def test_bad_records_in_the_middle_never_stop_the_reader(
    inserted: list[tuple[int, dict[str, Any]]], data: st.DataObject
) -> None:
    at = data.draw(st.integers(1, len(SPANS) - 1))
    middle = b"".join(fuzz_frame(kind, payload) for kind, payload in inserted)
    records, reader = read_bytes(DATA[: SPANS[at][0]] + middle + DATA[SPANS[at][0] :])
    assert reader is not None
    assert [r for r in records if not r.conversation_id.startswith("x-")] == RECORDS
    for record in records:
        assert_finite(record)
        encode_record(record)  # valid: the writer accepts everything the reader yields
    s = reader.stats
    assert s.records + s.invalid_records + s.unknown_kinds + s.duplicates + s.conflicts == len(RECORDS) + len(inserted)
    assert s.invalid_records == s.corrupt_skipped == len(s.issues)
    for issue in s.issues:  # each skipped record is named by its own frame's offset
        assert SPANS[at][0] <= issue.offset < SPANS[at][0] + len(middle)
