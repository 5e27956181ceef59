"""Sample records and hand-built log files shared by the play-log tests (no tests here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, Record, encode_record
from npcrl.playlog.framing import encode_frame, file_header

SAMPLER = {
    "temperature": 0.7,
    "top_k": 0,
    "top_p": 0.9,
    "repetition_penalty": 1.1,
    "max_new_tokens": 64,
    "seed": None,
    "stop_strings": ["\n\n"],
}


def npc_turn(conversation_id: str = "conv-1", turn_index: int = 0, tokens: int = 60, **overrides: object) -> NpcTurn:
    fields: dict[str, object] = {
        "conversation_id": conversation_id,
        "turn_index": turn_index,
        "npc_id": "brom",
        "bundle_id": "0123456789abcdef",
        "player_text": "Can you fix my sword? — Grüße 🐉",
        "prompt_ids": list(range(100, 140)),
        "response_ids": [(7 * i + 3) % 400 for i in range(tokens)],
        "logprobs": [-0.1 - i / 997 for i in range(tokens)],
        "full_logprobs": [-0.2 - i / 991 for i in range(tokens)],
        "text": "Aye, leave it on the anvil. 日本語も少し。",
        "stop_reason": "eos",
        "sampler": SAMPLER,
        "latency_s": 0.412,
        "time_to_first_token_s": 0.031,
        "filtered": False,
        "fallback": False,
        "time": 1_700_000_001.5,
    }
    fields.update(overrides)
    return NpcTurn(**fields)  # type: ignore[arg-type]


def event(conversation_id: str = "conv-1", turn_index: int = 0, index: int = 0, **overrides: object) -> EngagementEvent:
    fields: dict[str, object] = {
        "conversation_id": conversation_id,
        "turn_index": turn_index,
        "kind": "reply",
        "value": float(index),
        "time": 1_700_000_002.0 + index,
        "data": {"index": index},
    }
    fields.update(overrides)
    return EngagementEvent(**fields)  # type: ignore[arg-type]


def conversation(conversation_id: str = "conv-1", turns: int = 2) -> list[Record]:
    """A small conversation with every record kind."""
    records: list[Record] = [
        ConversationStart(conversation_id, "brom", "player-7", "Brom", "ab" * 32, "0123456789abcdef", SAMPLER, 1.7e9)
    ]
    for turn in range(turns):
        records.append(npc_turn(conversation_id, turn, tokens=8))
        records.append(event(conversation_id, turn, turn, kind="rating", value=4.5 if turn else None))
    records.append(ConversationEnd(conversation_id, "walk_away", 1.7e9 + 60))
    return records


def build_log(records: Sequence[Record]) -> tuple[bytes, list[tuple[int, int]]]:
    """A log file's bytes and the (start, end) offsets of each record's frame."""
    data = bytearray(file_header())
    spans = []
    for record in records:
        frame = encode_frame(*encode_record(record))
        spans.append((len(data), len(data) + len(frame)))
        data += frame
    return bytes(data), spans


def write_log(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def rewritten_logs(source: Path, dest: Path, rewrite: Callable[[Record], Record]) -> Path:
    """``dest`` (made here), holding ``source``'s records, each passed through ``rewrite``, in one file."""
    from npcrl.playlog import read_log_dir

    dest.mkdir()
    records = [rewrite(record) for record in read_log_dir(source)]
    write_log(dest / "play-20260101T000000Z-000000.npl", build_log(records)[0])
    return dest


def event_indices(records: Iterable[Record]) -> list[int]:
    """The ``data["index"]`` of each record, all of which must be events made by ``event()``."""
    indices = []
    for record in records:
        assert isinstance(record, EngagementEvent), record
        indices.append(record.data["index"])
    return indices
