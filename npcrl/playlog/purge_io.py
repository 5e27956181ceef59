"""The file work of ``npcrl logs purge``: rewriting one log file without some of its records,
atomically, and the journal of conversations still to be dropped.

A file is rewritten into ``NAME.npl.purge-tmp`` beside it (mode 0600): the file header and every
byte that is not a dropped record's frame, copied as they are (other records, and any corrupt
stretch or torn tail, unchanged and in order); then fsync, rename over the original, fsync of the
directory. A crash before the rename leaves the original and a temporary file that the next purge
removes; after it, the new file. A file left with nothing but its header is deleted instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import npcrl.playlog.inuse as inuse
from npcrl.durable import atomic_file, atomic_write, fsync_dir, write_all
from npcrl.errors import LogFormatError
from npcrl.playlog.dedupe import LogRepeat, RecordIndex
from npcrl.playlog.framing import FILE_HEADER, FILE_SUFFIX, FRAME_HEADER
from npcrl.playlog.reader import LogReader
from npcrl.playlog.records import KIND_NAMES, Record
from npcrl.privacy.private_files import PRIVATE_FILE_MODE

TEMP_SUFFIX = ".purge-tmp"
JOURNAL_NAME = ".purge-pending.json"
JOURNAL_TEMP_NAME = JOURNAL_NAME + ".tmp"
_COPY_CHUNK = 1 << 20

REWRITTEN, DELETED, IN_USE, FAILED = "rewritten", "deleted", "in use", "failed"
WOULD_REWRITE, WOULD_DELETE = "would rewrite", "would delete"


@dataclass
class FilePurge:
    """What purge did to one file: records removed per kind, and the outcome."""

    path: Path
    status: str  # REWRITTEN, DELETED, IN_USE, FAILED, WOULD_REWRITE or WOULD_DELETE
    removed: Counter[str] = field(default_factory=Counter)
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.status in (REWRITTEN, DELETED)


class EveryRecord(RecordIndex):
    """A record index that reports no repeats: purge must see (and drop) every copy of a record."""

    def check(self, path: Path, offset: int, record: Record, payload: bytes | memoryview) -> LogRepeat | None:
        return None


def purge_file(path: Path, drop: set[str], *, dry_run: bool) -> FilePurge:
    """Remove every record of the conversations in ``drop`` from ``path``, unless a writer holds it."""
    try:
        source = open(path, "rb")
    except OSError as exc:
        return FilePurge(path, FAILED, detail=f"cannot open ({exc})")
    with source:  # closing it releases the lock
        if not inuse.try_hold(source.fileno()):
            return FilePurge(path, IN_USE, detail="a writer is appending to it")
        try:
            spans, removed = _dropped_spans(path, source, drop)
            size = os.fstat(source.fileno()).st_size
        except (LogFormatError, OSError) as exc:
            return FilePurge(path, FAILED, detail=str(exc))
        keep = _complement(spans, size)
        only_header = keep == [(0, FILE_HEADER.size)]
        if dry_run:
            return FilePurge(path, WOULD_DELETE if only_header else WOULD_REWRITE, removed)
        try:
            if only_header:
                path.unlink()
                fsync_dir(path.parent)
                return FilePurge(path, DELETED, removed)
            _replace_atomically(path, source, keep)
        except OSError as exc:
            return FilePurge(path, FAILED, removed, detail=f"left unchanged ({exc})")
    return FilePurge(path, REWRITTEN, removed)


def _dropped_spans(path: Path, source: BinaryIO, drop: set[str]) -> tuple[list[tuple[int, int]], Counter[str]]:
    """(start, end) of each dropped record's frame, in file order, and their counts per kind."""
    spans: list[tuple[int, int]] = []
    removed: Counter[str] = Counter()
    for entry in LogReader(path, index=EveryRecord()).entries():
        if entry.record.conversation_id in drop:
            source.seek(entry.offset)
            (length, _crc, _kind) = FRAME_HEADER.unpack(source.read(FRAME_HEADER.size))
            spans.append((entry.offset, entry.offset + FRAME_HEADER.size + length))
            removed[KIND_NAMES[entry.kind]] += 1
    return spans, removed


def _complement(spans: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    keep, start = [], 0
    for span_start, span_end in spans:
        if span_start > start:
            keep.append((start, span_start))
        start = span_end
    if size > start:
        keep.append((start, size))
    return keep


def _replace_atomically(path: Path, source: BinaryIO, keep: list[tuple[int, int]]) -> None:
    # An error (not a crash) removes the temporary file at once rather than at the next purge.
    with atomic_file(path, mode=PRIVATE_FILE_MODE, temp=path.with_name(path.name + TEMP_SUFFIX)) as out:
        for start, end in keep:
            _copy(source, out, start, end)


def _copy(source: BinaryIO, out: BinaryIO, start: int, end: int) -> None:
    source.seek(start)
    while start < end:
        chunk = source.read(min(_COPY_CHUNK, end - start))
        if not chunk:
            raise OSError(f"{source.name}: file ended at {start}, before {end}")
        write_all(out, chunk)
        start += len(chunk)


def remove_leftover_temps(directory: Path) -> list[Path]:
    """Delete the temporary files of a purge that crashed (call only while holding the purge lock)."""
    leftovers = [
        p for p in directory.iterdir() if p.name.endswith(FILE_SUFFIX + TEMP_SUFFIX) or p.name == JOURNAL_TEMP_NAME
    ]
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers:
        fsync_dir(directory)
    return sorted(leftovers)


def read_journal(directory: Path) -> set[str]:
    """Conversation ids an earlier purge chose but could not drop everywhere (empty without one)."""
    path = directory / JOURNAL_NAME
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise LogFormatError(f"{path}: unreadable purge journal ({exc})") from None
    ids = obj.get("conversations") if isinstance(obj, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise LogFormatError(f"{path}: purge journal field 'conversations' must be a list of conversation ids")
    return set(ids)


def write_journal(directory: Path, ids: set[str]) -> None:
    """Record ``ids`` as still to be dropped (atomically); no ids removes the journal."""
    path = directory / JOURNAL_NAME
    if not ids:
        if path.exists():
            path.unlink()
            fsync_dir(directory)
        return
    data = json.dumps({"format": 1, "conversations": sorted(ids)}, ensure_ascii=True).encode("ascii")
    atomic_write(path, data, mode=PRIVATE_FILE_MODE, temp=directory / JOURNAL_TEMP_NAME)
