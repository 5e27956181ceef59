"""Reading play logs: every complete, checksum-valid record, and an account of everything else.

Frames are read in order. A frame that fails (length over the limit, reserved kind 0, payload not
a msgpack map, bad checksum) is corrupt: the reader scans forward byte by byte for the next offset
where a whole frame with a valid checksum begins and carries on from there, counting what it
skipped. A frame that runs past the end of the file, with no valid frame after it, is a torn tail
(a writer that crashed or is still writing): not an error, the reader stops there and reports its
size; with ``follow`` it waits for the rest instead. A valid frame whose payload does not decode
or validate (a wrong type, a non-finite number) is skipped as an invalid record, named by file and
offset; a frame of an unknown kind is skipped as unknown (a newer writer). A record whose identity
was already read in this pass (a copied file, a concatenation) is skipped as a duplicate or, with
other content, a conflict (``dedupe``): every record counts once.

Memory stays bounded: the reader holds a window of the file of at most about one chunk plus one
maximal frame, and never reads past the file's current size, so a forged length field costs
nothing. Every failure surfaces as LogFormatError.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from npcrl.errors import LogFormatError
from npcrl.playlog.dedupe import LogRepeat, RecordIndex
from npcrl.playlog.framing import (
    CANDIDATE,
    CANDIDATE_OFFSET,
    FILE_HEADER,
    FILE_SUFFIX,
    FRAME_HEADER,
    MAGIC,
    MAP_MARKERS,
    MAX_PAYLOAD_BYTES,
    check_file_header,
    frame_crc,
)
from npcrl.playlog.records import KIND_NAMES, Record, decode_record

_CHUNK = 1 << 20
_MAX_ISSUES = 1000
_OK, _SHORT, _BAD = 0, 1, 2


@dataclass(frozen=True)
class LogIssue:
    """One stretch of a file that yielded no record."""

    path: Path
    offset: int
    size: int
    corrupt: bool  # False: a torn tail, which a crash or a live writer leaves behind
    problem: str


@dataclass
class LogReadStats:
    files: int = 0
    records: int = 0
    corrupt_skipped: int = 0  # corrupt stretches skipped (bad frames up to the next valid one, bad payloads)
    corrupt_bytes: int = 0
    unknown_kinds: int = 0  # valid frames of a kind this version does not know
    torn_tail_bytes: int = 0
    issues: list[LogIssue] = field(default_factory=list)  # the first 1000 corrupt stretches and torn tails
    invalid_records: int = 0  # of corrupt_skipped: whole frames whose payload did not decode or validate
    duplicates: int = 0  # records read again with the same bytes: skipped, the first read counts
    conflicts: int = 0  # records whose identity was read before with other content: skipped
    repeats: list[LogRepeat] = field(default_factory=list)  # the first 1000 duplicates and conflicts
    conflicting_conversations: set[str] = field(default_factory=set)

    def warning(self) -> str | None:
        """One line on records read more than once, for commands that read whole directories."""
        if not (self.duplicates or self.conflicts):
            return None
        first = self.repeats[0].describe() if self.repeats else ""
        return (
            f"warning: {self.duplicates} duplicate record(s) counted once and {self.conflicts} conflicting"
            f" record(s) skipped (first: {first}); `npcrl logs validate` lists them"
        )


@dataclass(frozen=True)
class LogEntry:
    """A record with where it was found."""

    path: Path
    offset: int
    kind: int
    record: Record


class _Window:
    """A sliding window over a file that may still be growing."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        self._file = file
        self._path = path
        self.base = 0  # file offset of data[0]
        self.data = b""

    @property
    def end(self) -> int:
        return self.base + len(self.data)

    def size(self) -> int:
        try:
            return os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise LogFormatError(f"{self._path}: cannot stat ({exc})") from None

    def ensure(self, end: int, keep_from: int) -> bool:
        """Hold file bytes [keep_from, end), dropping those before keep_from; False if the file is shorter."""
        if keep_from < self.base:
            self._seek(keep_from)  # a resync that found nothing moved on; following, we come back
        if end <= self.end:
            return True
        size = self.size()
        if end > size:
            return False  # never read (or allocate) on the word of a length field alone
        want = max(end, min(size, self.end + _CHUNK)) - self.end
        chunks = []
        while want > 0:
            try:
                chunk = self._file.read(want)
            except OSError as exc:
                raise LogFormatError(f"{self._path}: read failed ({exc})") from None
            if not chunk:
                break  # the file shrank since fstat
            chunks.append(chunk)
            want -= len(chunk)
        drop = min(max(keep_from - self.base, 0), len(self.data))
        self.data = self.data[drop:] + b"".join(chunks)
        self.base += drop
        return end <= self.end

    def _seek(self, offset: int) -> None:
        try:
            self._file.seek(offset)
        except OSError as exc:
            raise LogFormatError(f"{self._path}: seek failed ({exc})") from None
        self.base, self.data = offset, b""

    def all_zero(self, start: int, end: int) -> bool:
        while start < end:
            step = min(end, start + _CHUNK)
            if not self.ensure(step, start):
                return False
            i = start - self.base
            if self.data.count(0, i, i + step - start) != step - start:
                return False
            start = step
        return True


def _frame_at(win: _Window, pos: int) -> tuple[int, int, int]:
    """(status, kind, payload length) of the frame at ``pos``: _OK, _BAD, or _SHORT (runs past the end)."""
    if not win.ensure(pos + FRAME_HEADER.size, pos):
        return _SHORT, 0, 0
    length, crc, kind = FRAME_HEADER.unpack_from(win.data, pos - win.base)
    if kind == 0 or not 0 < length <= MAX_PAYLOAD_BYTES:
        return _BAD, kind, length
    start = pos + FRAME_HEADER.size
    if not win.ensure(start + 1, pos):
        return _SHORT, kind, length
    if win.data[start - win.base] not in MAP_MARKERS:
        return _BAD, kind, length
    if not win.ensure(start + length, pos):
        return _SHORT, kind, length
    i = start - win.base
    if frame_crc(kind, memoryview(win.data)[i : i + length]) != crc:
        return _BAD, kind, length
    return _OK, kind, length


def _resync(win: _Window, start: int) -> int | None:
    """The first offset >= start where a complete frame with a valid checksum begins."""
    pos = start
    while win.ensure(pos + FRAME_HEADER.size + 1, pos):
        # The regex finds, in C, offsets whose bytes look like a frame header; only those get a CRC.
        match = CANDIDATE.search(win.data, pos - win.base + CANDIDATE_OFFSET)
        if match is None:
            pos = win.end - FRAME_HEADER.size  # first offset the search could not test yet
            continue
        pos = win.base + match.start() - CANDIDATE_OFFSET
        if _frame_at(win, pos)[0] == _OK:
            return pos
        pos += 1
    return None


def list_log_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``*.npl`` files of a play-log directory, in name order (the order they were written)."""
    root = Path(directory)
    if not root.exists():
        raise LogFormatError(f"play-log directory {root} does not exist")
    if not root.is_dir():
        raise LogFormatError(f"{root} is not a directory")
    try:
        return sorted((p for p in root.iterdir() if p.name.endswith(FILE_SUFFIX) and p.is_file()), key=lambda p: p.name)
    except OSError as exc:
        raise LogFormatError(f"cannot list play-log directory {root} ({exc})") from None


class LogReader:
    """Reads a play-log directory (its ``*.npl`` files in name order) or a single ``.npl`` file.

    Iterate for records, or over ``entries()`` for records with their file and offset; ``stats``
    describes the last (or current) pass. With ``follow`` (single files only) the reader waits at the
    end for more data, like ``tail -f``, until nothing has been appended for ``idle_timeout_s``
    (forever when None).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        follow: bool = False,
        poll_interval_s: float = 0.05,
        idle_timeout_s: float | None = None,
        index: RecordIndex | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            if follow:
                raise LogFormatError(f"{self.path}: follow works on one log file, not a directory")
            self._is_dir = True
        elif self.path.is_file():
            if not self.path.name.endswith(FILE_SUFFIX):
                raise LogFormatError(f"{self.path}: play-log files end in {FILE_SUFFIX}")
            self._is_dir = False
        elif self.path.exists():
            raise LogFormatError(f"{self.path}: not a regular file or directory")
        else:
            raise LogFormatError(f"play-log path {self.path} does not exist")
        if poll_interval_s <= 0:
            raise LogFormatError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self._follow = follow
        self._poll_interval_s = poll_interval_s
        self._idle_timeout_s = idle_timeout_s
        self._shared_index = index
        self._index = RecordIndex()
        self.stats = LogReadStats()

    def files(self) -> list[Path]:
        return list_log_files(self.path) if self._is_dir else [self.path]

    def __iter__(self) -> Iterator[Record]:
        for entry in self.entries():
            yield entry.record

    def entries(self) -> Iterator[LogEntry]:
        self.stats = LogReadStats()
        self._index = self._shared_index if self._shared_index is not None else RecordIndex()
        for path in self.files():
            yield from self._read_file(path)

    def _issue(self, path: Path, offset: int, size: int, corrupt: bool, problem: str) -> None:
        if corrupt:
            self.stats.corrupt_skipped += 1
            self.stats.corrupt_bytes += size
        else:
            self.stats.torn_tail_bytes += size
        if len(self.stats.issues) < _MAX_ISSUES:
            self.stats.issues.append(LogIssue(path, offset, size, corrupt, problem))

    def _repeat(self, repeat: LogRepeat) -> None:
        if repeat.conflict:
            self.stats.conflicts += 1
            self.stats.conflicting_conversations.add(repeat.conversation_id)
        else:
            self.stats.duplicates += 1
        if len(self.stats.repeats) < _MAX_ISSUES:
            self.stats.repeats.append(repeat)

    def _entry(self, win: _Window, path: Path, offset: int, kind: int, length: int) -> LogEntry | None:
        """The record in a whole, checksum-valid frame, or None when it is skipped and counted."""
        if kind not in KIND_NAMES:
            self.stats.unknown_kinds += 1
            return None
        i = offset + FRAME_HEADER.size - win.base
        payload = win.data[i : i + length]
        try:
            record = decode_record(kind, payload)
        except LogFormatError as exc:
            self.stats.invalid_records += 1
            self._issue(path, offset, FRAME_HEADER.size + length, True, f"invalid record: {exc}")
            return None
        repeat = self._index.check(path, offset, record, payload)
        if repeat is not None:
            self._repeat(repeat)
            return None
        self.stats.records += 1
        return LogEntry(path, offset, kind, record)

    def _wait(self, win: _Window, observed: int) -> bool:
        """Following: True once the file's size differs from ``observed`` (the size before the
        verdict that sent us here, so growth during the verdict counts), False after
        idle_timeout_s without change."""
        if not self._follow:
            return False
        idle_since = time.monotonic()
        while win.size() == observed:
            if self._idle_timeout_s is not None and time.monotonic() - idle_since >= self._idle_timeout_s:
                return False
            time.sleep(self._poll_interval_s)
        return True

    def _read_file(self, path: Path) -> Iterator[LogEntry]:
        try:
            file = open(path, "rb", buffering=0)
        except OSError as exc:
            raise LogFormatError(f"{path}: cannot open ({exc})") from None
        with file:
            self.stats.files += 1
            win = _Window(file, path)
            while True:
                observed = win.size()
                win.ensure(min(FILE_HEADER.size, observed), 0)
                if check_file_header(win.data[: FILE_HEADER.size], path):
                    break
                if not self._wait(win, observed):
                    if win.data:
                        self._issue(path, 0, len(win.data), False, "file header incomplete")
                    return
            pos = FILE_HEADER.size
            while True:
                status, kind, length = _frame_at(win, pos)
                if status != _OK:
                    # A file being written grows under us: judge again on data no older than
                    # `observed` before concluding anything from this frame.
                    observed = win.size()
                    status, kind, length = _frame_at(win, pos)
                if status == _OK:
                    entry = self._entry(win, path, pos, kind, length)
                    pos += FRAME_HEADER.size + length
                    if entry is not None:
                        yield entry
                    continue
                seam = status == _BAD and win.data.startswith(MAGIC, pos - win.base)
                resume = _resync(win, pos + 1)
                if resume is not None and status == _SHORT and _frame_at(win, pos)[0] == _OK:
                    continue  # the file grew while we searched: the frame is whole now, not corrupt
                if resume is not None:
                    problem = "bad frame" if status == _BAD else "frame runs past a valid frame"
                    if seam:
                        problem = "a file header inside the file (log files concatenated?)"
                    self._issue(path, pos, resume - pos, True, f"{problem} (length {length}, kind {kind})")
                    pos = resume
                    continue
                if self._wait(win, observed):
                    continue
                size = win.size() - pos
                if size > 0:
                    if status == _BAD and not win.all_zero(pos, pos + size):
                        self._issue(path, pos, size, True, f"bad frame (length {length}, kind {kind}) at the end")
                    else:
                        # Zeros are what some filesystems leave after a crash: a torn tail, not damage.
                        self._issue(path, pos, size, False, "torn tail")
                return


def read_log_file(
    path: str | os.PathLike[str],
    *,
    follow: bool = False,
    poll_interval_s: float = 0.05,
    idle_timeout_s: float | None = None,
) -> Iterator[Record]:
    """The records of one ``.npl`` file (see LogReader for ``follow``)."""
    if Path(path).is_dir():
        raise LogFormatError(f"{path} is a directory; use read_log_dir")
    return iter(LogReader(path, follow=follow, poll_interval_s=poll_interval_s, idle_timeout_s=idle_timeout_s))


def read_log_dir(directory: str | os.PathLike[str]) -> Iterator[Record]:
    """The records of every ``*.npl`` file in ``directory``, in file-name order."""
    list_log_files(directory)  # refuse a missing directory or a file now, not at the first next()
    return iter(LogReader(directory))
