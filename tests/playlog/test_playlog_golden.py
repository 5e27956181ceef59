"""Pins play-log format version 1: a checked-in file must keep reading with known content.

tests/data/golden_v1.npl was written once by ``write_golden`` below
(``python tests/test_playlog_golden.py``). Never regenerate it to make a test pass: a reader that
cannot read it has broken every log already on players' disks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack

from npcrl.playlog import LogReader, encode_record
from npcrl.playlog.framing import encode_frame, file_header
from npcrl.playlog.record_types import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, Record

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_v1.npl"
SAMPLER = {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 48}
GOLDEN_RECORDS: list[Record] = [
    ConversationStart(
        conversation_id="c-0001",
        npc_id="brom",
        player_id="p-42",
        persona_name="Brom the Blacksmith",
        persona_hash="9f2c" * 16,
        bundle_id="a1b2c3d4e5f60718",
        sampler=SAMPLER,
        time=1735689600.0,
    ),
    NpcTurn(
        conversation_id="c-0001",
        turn_index=0,
        npc_id="brom",
        bundle_id="a1b2c3d4e5f60718",
        player_text="Can you fix my sword? 🗡️",
        prompt_ids=[1, 9, 28, 300, 4095, 65535, 65536],
        response_ids=[17, 256, 0],
        logprobs=[-0.125, -2.5, -1e-9],
        full_logprobs=[-0.25, -3.0, -float("inf")],
        text="Aye. Leave it on the anvil — Grüße.",
        stop_reason="eos",
        sampler=SAMPLER,
        latency_s=0.4375,
        time_to_first_token_s=0.03125,
        filtered=False,
        fallback=False,
        time=1735689601.5,
        filter_reason=None,
    ),
    EngagementEvent(conversation_id="c-0001", turn_index=0, kind="reply", value=None, time=1735689605.0),
    EngagementEvent(
        conversation_id="c-0001",
        turn_index=0,
        kind="rating",
        value=4.0,
        time=1735689606.0,
        data={"stars": 4, "tags": ["helpful", "in-character"], "raw": b"\x00\xff"},
    ),
    NpcTurn(
        conversation_id="c-0001",
        turn_index=1,
        npc_id="brom",
        bundle_id="a1b2c3d4e5f60718",
        player_text="",
        prompt_ids=[],
        response_ids=[],
        logprobs=[],
        full_logprobs=[],
        text="I cannot help with that.",
        stop_reason="filtered",
        sampler={},
        latency_s=0.0,
        time_to_first_token_s=0.0,
        filtered=True,
        fallback=True,
        time=1735689610.0,
        filter_reason="blocklist",
    ),
    ConversationEnd(conversation_id="c-0001", reason="walk_away", time=1735689620.25),
]
# A frame of a kind version 1 does not know, as a future writer might add: readers skip it.
FUTURE_FRAME_KIND = 77


def write_golden(path: Path) -> None:
    frames = [encode_frame(*encode_record(record)) for record in GOLDEN_RECORDS]
    frames.insert(3, encode_frame(FUTURE_FRAME_KIND, msgpack.packb({"added_later": True})))
    path.write_bytes(file_header() + b"".join(frames))


def test_golden_log_reads_with_known_content() -> None:
    reader = LogReader(GOLDEN)
    assert list(reader) == GOLDEN_RECORDS
    s = reader.stats
    assert (s.records, s.unknown_kinds, s.corrupt_skipped, s.torn_tail_bytes) == (len(GOLDEN_RECORDS), 1, 0, 0)


def test_golden_log_header_bytes() -> None:
    assert GOLDEN.read_bytes()[:12] == b"NPCRLLOG\x01\x00\x00\x00"


def test_writer_encoding_still_matches_the_golden_bytes(tmp_path: Path) -> None:
    write_golden(tmp_path / "again.npl")
    assert (tmp_path / "again.npl").read_bytes() == GOLDEN.read_bytes()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN
    if target.exists():
        sys.exit(f"{target} exists; the golden log is written once and never regenerated")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_golden(target)
    print(target)
