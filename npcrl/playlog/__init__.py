"""Crash-safe play logs: append-only files of checksummed msgpack records (docs/PLAYLOG.md)."""

from __future__ import annotations

from npcrl.playlog.dedupe import LogRepeat, RecordIndex
from npcrl.playlog.framing import FORMAT_VERSION, MAX_PAYLOAD_BYTES
from npcrl.playlog.reader import (
    LogEntry,
    LogIssue,
    LogReader,
    LogReadStats,
    list_log_files,
    read_log_dir,
    read_log_file,
)
from npcrl.playlog.records import (
    KIND_NAMES,
    ConversationEnd,
    ConversationStart,
    EngagementEvent,
    NpcTurn,
    Record,
    decode_record,
    encode_record,
)
from npcrl.playlog.writer import PlayLogWriter, SyncPolicy, WriterStats

__all__ = [
    "FORMAT_VERSION",
    "KIND_NAMES",
    "MAX_PAYLOAD_BYTES",
    "ConversationEnd",
    "ConversationStart",
    "EngagementEvent",
    "LogEntry",
    "LogIssue",
    "LogReadStats",
    "LogReader",
    "LogRepeat",
    "NpcTurn",
    "PlayLogWriter",
    "Record",
    "RecordIndex",
    "SyncPolicy",
    "WriterStats",
    "decode_record",
    "encode_record",
    "list_log_files",
    "read_log_dir",
    "read_log_file",
]
