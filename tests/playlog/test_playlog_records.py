"""Play-log records: every kind round-trips, and decoding refuses bad payloads by field name."""

from __future__ import annotations

import copy
import math
import random
import struct
from typing import TypeVar

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from playlog_helpers import SAMPLER, conversation, event, npc_turn

from npcrl.errors import LogFormatError, NpcrlError
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, Record
from npcrl.playlog.framing import MAX_PAYLOAD_BYTES
from npcrl.playlog.records import (
    KIND_ENGAGEMENT_EVENT,
    KIND_NPC_TURN,
    checked_values,
    decode_record,
    encode_record,
    spec_of,
    without_defaults,
)

R = TypeVar("R", ConversationStart, NpcTurn, EngagementEvent, ConversationEnd)


def roundtrip(record: R) -> R:
    back = decode_record(*encode_record(record))
    assert isinstance(back, type(record))
    return back


@pytest.mark.parametrize("record", conversation(), ids=lambda r: type(r).__name__)
def test_every_kind_round_trips(record: Record) -> None:
    assert decode_record(*encode_record(record)) == record


def test_unicode_empty_and_large_lists_round_trip() -> None:
    empty = npc_turn(tokens=0, prompt_ids=[], player_text="", text="", sampler={})
    assert roundtrip(empty) == empty
    rng = random.Random(7)
    large = npc_turn(
        tokens=20_000,
        prompt_ids=[rng.randrange(50_000) for _ in range(30_000)],
        text="🐉" * 5000 + "\u0000nul and\nnewlines",
        filter_reason="profanity",
        filtered=True,
    )
    assert roundtrip(large) == large
    start = ConversationStart("c", "n", "p", "Ωμέγα", "h", "b", {"nested": {"list": [1, "two", None, b"\xff"]}}, 0.0)
    assert roundtrip(start) == start


def test_logprobs_round_trip_bit_exact_as_float64() -> None:
    rng = random.Random(1)
    values = [-rng.expovariate(0.5) for _ in range(500)] + [-math.inf, 0.0, -0.0, -5e-324, -1.7976931348623157e308]
    turn = npc_turn(tokens=len(values), logprobs=values, full_logprobs=list(reversed(values)))
    back = roundtrip(turn)
    assert struct.pack(f"<{len(values)}d", *back.logprobs) == struct.pack(f"<{len(values)}d", *values)
    assert struct.pack(f"<{len(values)}d", *back.full_logprobs) == struct.pack(f"<{len(values)}d", *reversed(values))


def test_numpy_inputs_are_normalised_to_plain_python() -> None:
    turn = npc_turn(
        tokens=3,
        response_ids=np.array([5, 6, 7], dtype=np.int64),
        logprobs=np.array([-0.5, -0.25, -1.0], dtype=np.float32),
        full_logprobs=(-1, -2, -3),
        turn_index=np.int32(4),
        latency_s=np.float32(0.5),
        filtered=np.bool_(True),
    )
    back = roundtrip(turn)
    assert back.response_ids == [5, 6, 7] and type(back.response_ids[0]) is int
    assert back.logprobs == [-0.5, -0.25, -1.0] and type(back.logprobs[0]) is float
    assert back.full_logprobs == [-1.0, -2.0, -3.0] and type(back.full_logprobs[0]) is float
    assert back.turn_index == 4 and back.latency_s == 0.5 and back.filtered is True


def test_defaults_apply_when_optional_fields_are_absent() -> None:
    payload = dict(msgpack.unpackb(encode_record(event(data={"x": 1}))[1]))
    del payload["data"]
    back = decode_record(KIND_ENGAGEMENT_EVENT, msgpack.packb(payload))
    assert isinstance(back, EngagementEvent) and back.data == {}
    turn_payload = dict(msgpack.unpackb(encode_record(npc_turn())[1]))
    del turn_payload["filter_reason"]
    turn = decode_record(KIND_NPC_TURN, msgpack.packb(turn_payload))
    assert isinstance(turn, NpcTurn) and turn.filter_reason is None


def test_unknown_fields_are_ignored() -> None:
    payload = dict(msgpack.unpackb(encode_record(npc_turn())[1]))
    payload["added_in_v7"] = {"anything": [1, 2]}
    assert decode_record(KIND_NPC_TURN, msgpack.packb(payload)) == npc_turn()


def _turn_payload(**changes: object) -> bytes:
    payload = dict(msgpack.unpackb(encode_record(npc_turn(tokens=3))[1]))
    for key, value in changes.items():
        if value is KeyError:
            del payload[key]
        else:
            payload[key] = value
    return msgpack.packb(payload)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"text": KeyError}, "missing field 'text'"),
        ({"turn_index": "3"}, "NpcTurn.turn_index: expected int"),
        ({"turn_index": -1}, "NpcTurn.turn_index: expected an int >= 0"),
        ({"turn_index": True}, "NpcTurn.turn_index: expected int"),
        ({"filtered": 1}, "NpcTurn.filtered: expected bool"),
        ({"latency_s": "fast"}, "NpcTurn.latency_s: expected a number"),
        ({"logprobs": [-0.1, "x", -0.3]}, "NpcTurn.logprobs: expected a flat list"),
        ({"logprobs": [[-0.1], [-0.2], [-0.3]]}, "NpcTurn.logprobs: expected a flat list"),
        ({"response_ids": [1.5, 2.0, 3.0]}, "NpcTurn.response_ids: expected a flat list of ints"),
        ({"response_ids": [1, -2, 3]}, "NpcTurn.response_ids: expected token ids >= 0"),
        ({"response_ids": "abc"}, "NpcTurn.response_ids: expected a list"),
        ({"sampler": [1, 2]}, "NpcTurn.sampler: expected a dict"),
        ({"filter_reason": 5}, "NpcTurn.filter_reason: expected str"),
        ({"full_logprobs": [-0.1, -0.2]}, "must have one length, got 3, 3 and 2"),
    ],
    ids=[
        "missing",
        "str-for-int",
        "negative-int",
        "bool-for-int",
        "int-for-bool",
        "str-for-float",
        "str-in-floats",
        "nested-floats",
        "floats-for-ids",
        "negative-id",
        "str-for-list",
        "list-for-dict",
        "int-for-optional-str",
        "length-mismatch",
    ],
)
def test_decode_names_the_bad_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(LogFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_record(KIND_NPC_TURN, _turn_payload(**changes))


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        (KIND_NPC_TURN, msgpack.packb([1, 2, 3]), "payload is a list, not a map"),
        (KIND_NPC_TURN, b"\xc1", "undecodable payload"),
        (KIND_NPC_TURN, b"\x81\xa1a", "undecodable payload"),  # truncated
        (KIND_NPC_TURN, msgpack.packb({"a": 1}) + b"\x00", "undecodable payload"),  # extra data
        (KIND_NPC_TURN, msgpack.packb({1: 2}), "undecodable payload"),  # non-str key
        (KIND_NPC_TURN, b"\x81\xa1a\xdd\xff\xff\xff\xff", "undecodable payload"),  # array32 claiming 4G items
        (KIND_NPC_TURN, b"\x81\xa1a\xc7\x01\x05x", "undecodable payload"),  # ext type
        (KIND_NPC_TURN, b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0", "undecodable payload"),  # nesting bomb
        (KIND_NPC_TURN, b"\x81\xa2\xff\xfe\x01", "undecodable payload"),  # invalid UTF-8 key
        (KIND_NPC_TURN, b"\x80" + b"\x00" * MAX_PAYLOAD_BYTES, "exceeds"),
        (99, msgpack.packb({}), "unknown record kind 99"),
    ],
    ids=[
        "not-a-map",
        "reserved-byte",
        "truncated",
        "extra-data",
        "int-key",
        "huge-array-header",
        "ext",
        "deep-nesting",
        "bad-utf8",
        "oversize",
        "unknown-kind",
    ],
)
def test_decode_refuses_malformed_payloads(kind: int, payload: bytes, message: str) -> None:
    with pytest.raises(LogFormatError, match=message):
        decode_record(kind, payload)


def test_log_format_error_is_an_npcrl_error() -> None:
    assert issubclass(LogFormatError, NpcrlError)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (npc_turn(tokens=2, logprobs=[-0.1]), "must have one length"),
        (npc_turn(conversation_id=7), "NpcTurn.conversation_id: expected str"),  # type: ignore[arg-type]
        (npc_turn(prompt_ids=[1, "2"]), "NpcTurn.prompt_ids"),
        (npc_turn(prompt_ids=[1, 2**70]), "NpcTurn.prompt_ids"),
        (npc_turn(logprobs=(x for x in [1.0])), "NpcTurn.logprobs: expected a list"),
        (event(data={1: "int key"}), r"EngagementEvent.data: map keys must be str"),
        (event(data={"deep": {"er": {2: 3}}}), r"EngagementEvent.data: map keys must be str"),
        (event(data={"array": np.zeros(2)}), "ndarray values cannot be logged"),
        (event(data={"big": 2**70}), "cannot be encoded"),
        (event(value="high"), "EngagementEvent.value: expected a number"),
        (ConversationStart("c", "n", "p", "x", "h", "b", {"s": set()}, 0.0), "set values cannot be logged"),
        (ConversationEnd("c", "r", None), "ConversationEnd.time: expected a number"),  # type: ignore[arg-type]
        (npc_turn(prompt_ids=list(range(300_000))), "exceeds the"),
        ("not a record", "not a play-log record: str"),
    ],
    ids=[
        "length-mismatch",
        "int-for-str",
        "str-in-ids",
        "id-too-big",
        "generator",
        "int-key",
        "nested-int-key",
        "numpy-in-data",
        "int-too-big",
        "str-for-float",
        "set-in-sampler",
        "none-for-float",
        "oversize",
        "not-a-record",
    ],
)
def test_encode_refuses_what_decode_would_refuse(record: object, message: str) -> None:
    with pytest.raises(LogFormatError, match=message):
        encode_record(record)  # type: ignore[arg-type]


def test_sampler_dict_is_logged_as_given() -> None:
    assert roundtrip(npc_turn()).sampler == SAMPLER
    assert roundtrip(event(value=None, data={})).value is None
    assert isinstance(roundtrip(event()), EngagementEvent)


def test_fast_and_normalising_paths_encode_the_same_bytes() -> None:
    plain = npc_turn(tokens=4)
    as_numpy = npc_turn(
        tokens=4,
        prompt_ids=np.array(plain.prompt_ids, dtype=np.int32),
        response_ids=tuple(plain.response_ids),
        logprobs=np.array(plain.logprobs),
        full_logprobs=[np.float64(x) for x in plain.full_logprobs],
        latency_s=np.float64(plain.latency_s),
    )
    assert encode_record(as_numpy) == encode_record(plain)
    assert encode_record(event(turn_index=np.int64(2), value=3)) == encode_record(event(turn_index=2, value=3.0))


def test_instance_attributes_outside_the_fields_are_not_logged() -> None:
    record = event()
    record.note = "debug only"  # type: ignore[attr-defined]
    assert encode_record(record) == encode_record(event())
    del record.time
    with pytest.raises(LogFormatError, match="EngagementEvent.time: missing"):
        encode_record(record)


def test_a_failed_encode_leaves_the_next_one_intact() -> None:
    with pytest.raises(LogFormatError):
        encode_record(event(data={"big": 2**70}))
    assert roundtrip(event()) == event()


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**65),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=3),
    st.lists(st.integers(-3, 2**64), max_size=3),
    st.lists(st.floats(), max_size=3),
    st.lists(st.booleans(), max_size=2),
    st.tuples(st.integers(0, 9)),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.integers(), max_size=2),
    st.builds(np.int64, st.integers(0, 100)),
    st.builds(np.float32, st.floats(-1, 1)),
    st.builds(np.float64, st.sampled_from([math.nan, math.inf, -math.inf, 0.5])),
    st.dictionaries(st.text(max_size=2), st.floats(), max_size=2),
    st.lists(st.dictionaries(st.just("x"), st.floats(), max_size=1), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([npc_turn(tokens=2), event(), event(event_id="w-1"), conversation()[0], conversation()[-1]]),
    st.data(),
)
def test_fast_path_agrees_with_the_field_checks(base: Record, data: st.DataObject) -> None:
    """Whatever the values, the generated canonical check never lets through what the per-field
    checks would refuse or change."""
    spec = spec_of(base)
    record = copy.deepcopy(base)
    for name in data.draw(st.sets(st.sampled_from(sorted(vars(record))), max_size=3)):
        setattr(record, name, data.draw(ODD_VALUES))
    try:
        expected = msgpack.packb(without_defaults(spec, checked_values(spec, record)), use_bin_type=True)
    except (LogFormatError, OverflowError):
        with pytest.raises(LogFormatError):
            encode_record(record)
        return
    assert encode_record(record)[1] == expected  # by the fast path or not, the same bytes


def _rejected(tokens: int = 3, **overrides: object) -> dict[str, object]:
    sample: dict[str, object] = {
        "response_ids": [5 + i for i in range(tokens)],
        "logprobs": [-0.5 - i for i in range(tokens)],
        "full_logprobs": [-0.6 - i for i in range(tokens - 1)] + [-math.inf],
        "sampler": {**SAMPLER, "seed": 8},
        "reason": "contradicts_card:name:Grimbold",
    }
    sample.update(overrides)
    return sample


def test_rejected_samples_round_trip_and_are_left_out_when_empty() -> None:
    turn = npc_turn(tokens=2, rejected_samples=[_rejected(), _rejected(tokens=1)])
    assert roundtrip(turn) == turn
    assert roundtrip(turn).rejected_samples[0]["full_logprobs"][-1] == -math.inf
    # a turn without any keeps the bytes a writer before the field wrote (no key at all)
    _, payload = encode_record(npc_turn(tokens=2))
    assert "rejected_samples" not in msgpack.unpackb(payload)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ({"x": 1}, "expected a list of samples"),
        (["not a map"], r"\[0\]: expected a map"),
        ([_rejected(reason=None)], r"\[0\].reason: expected str"),
        ([{k: v for k, v in _rejected().items() if k != "sampler"}], r"\[0\]: missing keys \['sampler'\]"),
        ([{**_rejected(), "text": "Grimbold here"}], r"\[0\]: missing keys \[\], unknown keys \['text'\]"),
        ([_rejected(), _rejected(logprobs=[-0.1])], r"\[1\]: response_ids, logprobs and full_logprobs must have one"),
        ([_rejected(logprobs=[-0.1, math.nan, -0.2])], r"\[0\].logprobs: expected log-probs"),
        ([_rejected(response_ids=[1, -2, 3])], r"\[0\].response_ids: expected token ids >= 0"),
    ],
    ids=["not-a-list", "not-a-map", "bad-reason", "missing-key", "unknown-key", "length", "nan", "negative-id"],
)
def test_bad_rejected_samples_are_refused_naming_the_entry(samples: object, message: str) -> None:
    turn = npc_turn(tokens=2, rejected_samples=samples)
    with pytest.raises(LogFormatError, match="NpcTurn.rejected_samples: " + message):
        encode_record(turn)
    payload = msgpack.unpackb(encode_record(npc_turn(tokens=2))[1])
    payload["rejected_samples"] = samples
    with pytest.raises(LogFormatError, match="NpcTurn.rejected_samples: " + message):
        decode_record(KIND_NPC_TURN, msgpack.packb(payload))
