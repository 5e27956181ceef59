"""Counting each record once: an index of the records a read has yielded, by identity.

A record whose identity (``identity.record_identity``) was already read is a **duplicate** when its
payload is byte-for-byte the one read first (a copied file, a concatenation) and a **conflict**
when it differs (two writers reusing a conversation id, a hand-edited log). Either way the record
read first, in file-name order and then offset order, is the one kept; the reader skips the other
and reports both places.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

from npcrl.playlog.identity import describe_identity, record_identity
from npcrl.playlog.records import Record


@dataclass(frozen=True)
class LogRepeat:
    """A record skipped because a record of the same identity was read before."""

    path: Path
    offset: int
    first_path: Path
    first_offset: int
    conversation_id: str
    identity: str  # e.g. "npc_turn c-1#3"
    conflict: bool  # False: the same bytes again; True: the same identity with other content

    def describe(self) -> str:
        what = "conflicts with" if self.conflict else "duplicate of"
        return f"{self.path.name}@{self.offset}: {self.identity}: {what} {self.first_path.name}@{self.first_offset}"


class RecordIndex:
    """Where each identity was first read, with a digest of its payload. One index may span
    several readers (pooled directories), so a record repeated across them counts once too."""

    def __init__(self) -> None:
        self._first: dict[Hashable, tuple[Path, int, bytes]] = {}

    def __len__(self) -> int:
        return len(self._first)

    def check(self, path: Path, offset: int, record: Record, payload: bytes | memoryview) -> LogRepeat | None:
        """None when the record is new (and remember it); else what it repeats."""
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        identity = record_identity(record, digest)
        first = self._first.get(identity)
        if first is None:
            self._first[identity] = (path, offset, digest)
            return None
        first_path, first_offset, first_digest = first
        return LogRepeat(
            path,
            offset,
            first_path,
            first_offset,
            record.conversation_id,
            describe_identity(identity),
            conflict=digest != first_digest,
        )
