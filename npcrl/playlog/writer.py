"""The play-log writer: ``append`` never blocks the game loop.

The caller's thread validates, encodes and frames each record (a few microseconds; a bad record
raises right there, at the call) and pushes the frame onto a queue; one background thread writes
whatever has queued up with one ``write`` per batch. When the queue holds ``queue_size`` frames,
further appends are dropped and counted in ``stats.dropped``: losing a log line is better than a
stalled frame. An append never waits for I/O or for the writer thread (the only lock it can take
guards a counter, and is never held across I/O). The cap is checked without a lock, so concurrent
appenders may overshoot it by a few frames.

Sync policies, and what a crash can lose:
- ``"flush"``: records reach the OS about 2 ms after they are appended (the writer thread waits
  that long after waking so that a burst becomes one write). A killed process loses only the
  frames still queued; an OS crash or power cut can also lose what the OS had not yet written back.
- ``"fsync_interval"``: as ``"flush"``, plus an fsync at most every ``fsync_interval_s`` while
  unsynced data exists, and on ``flush()`` and ``close()``: a power cut loses at most about that
  interval.
- ``"always"``: an fsync after every batch; ``flush()`` returns only once all earlier appends are
  on disk. Batches group concurrent appends, so this costs one fsync per wake-up, not per record.
A write cut short leaves a torn frame at the end of a file, which the reader ignores. Every writer
starts new files (opened with mode "x") and never appends to or truncates an existing one, so a
crashed writer's torn tail is never followed by new records.

Every engagement event without an ``event_id`` gets one at append (``identity.EventIds``), so the
same event read twice (a log file copied, two files concatenated) is recognisably one event.

Privacy (docs/PRIVACY.md): ``ConversationStart.player_id`` is replaced in the caller's thread by its
pseudonym (``npcrl.privacy.pseudonym``, keyed by ``pseudonym_key`` or the key file at
``npcrl.paths.default_key_path()``), so no raw player id reaches the disk. Files are created 0600
and the directories the writer creates 0700, and the writer holds a lock on each file while it
appends to it (``inuse``), so ``npcrl logs purge`` leaves that file alone.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import npcrl.playlog.inuse as inuse
from npcrl.durable import fsync_dir, write_all
from npcrl.errors import LogFormatError
from npcrl.paths import default_key_path
from npcrl.playlog.framing import FILE_HEADER, FILE_SUFFIX, file_header
from npcrl.playlog.identity import EventIds
from npcrl.playlog.records import ConversationStart, Record, frame_record
from npcrl.privacy.private_files import create_private_file, make_private_dirs
from npcrl.privacy.pseudonym import PseudonymKeyError, check_key, is_pseudonym, load_or_create_key, pseudonym

SyncPolicy = Literal["flush", "fsync_interval", "always"]
SYNC_POLICIES: tuple[str, ...] = ("flush", "fsync_interval", "always")
_COALESCE_S = 0.002  # how long the writer lets a burst gather after waking
_BATCH_BYTES = 1 << 20  # one write call at most; bounds the join copy the writer thread makes
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterStats:
    records_written: int  # handed to the OS (and fsynced, under "always")
    bytes_written: int  # file headers included
    dropped: int  # refused because the queue was full, or appended while the writer closed
    failed: int  # lost to I/O errors
    errors: int  # I/O errors seen: opens, writes, fsyncs
    files: int  # files created
    current_file: Path | None
    queued: int
    last_error: str | None


class _FlushRequest:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


def _writer_key(directory: Path, key: bytes | None) -> bytes:
    """The key given, else the one in the default key file (created on first use), which must not
    lie inside the log directory: a copy of the logs must not carry the key along."""
    if key is not None:
        return check_key(key)
    path = default_key_path()
    if path.resolve().is_relative_to(directory.resolve()):
        raise PseudonymKeyError(
            f"{path}: the pseudonym key file is inside the play-log directory {directory};"
            " keep it elsewhere (NPCRL_KEY_FILE), or whoever copies the logs gets the key too"
        )
    return load_or_create_key(path)


class PlayLogWriter:
    """Appends records to ``{prefix}-{UTC time}-{seq:06d}.npl`` files in ``directory``.

    A file is closed and a new one started before a record would take it past ``max_file_bytes``
    (a single larger record gets a file of its own). Thread-safe: any number of threads may append.
    ``pseudonym_key`` (at least 16 bytes) keys the player-id pseudonyms; by default the key file at
    ``npcrl.paths.default_key_path()`` does, created on first use.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_file_bytes: int = 64 * 1024 * 1024,
        sync: SyncPolicy = "flush",
        fsync_interval_s: float = 1.0,
        queue_size: int = 100_000,
        prefix: str = "play",
        pseudonym_key: bytes | None = None,
    ) -> None:
        if sync not in SYNC_POLICIES:
            raise LogFormatError(f"sync must be one of {', '.join(SYNC_POLICIES)}, got {sync!r}")
        if max_file_bytes <= FILE_HEADER.size:
            raise LogFormatError(f"max_file_bytes must exceed the {FILE_HEADER.size}-byte file header")
        if not fsync_interval_s > 0:
            raise LogFormatError(f"fsync_interval_s must be > 0, got {fsync_interval_s}")
        if queue_size < 1:
            raise LogFormatError(f"queue_size must be >= 1, got {queue_size}")
        if not _PREFIX.fullmatch(prefix):
            raise LogFormatError(f"prefix must be letters, digits, '_', '.' or '-', got {prefix!r}")
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise LogFormatError(f"play-log directory {self.directory} exists and is not a directory")
        try:
            make_private_dirs(self.directory)
        except OSError as exc:
            raise LogFormatError(f"cannot create play-log directory {self.directory} ({exc})") from None
        self._key = _writer_key(self.directory, pseudonym_key)
        self._max_file_bytes = max_file_bytes
        self._sync = sync
        self._fsync_interval_s = fsync_interval_s
        self._queue_size = queue_size
        self._prefix = prefix
        self._event_ids = EventIds()

        self._queue: deque[bytes | _FlushRequest | object] = deque()
        self._wake = threading.Event()
        self._enqueue, self._woken = self._queue.append, self._wake.is_set  # bound once: append is hot
        self._lock = threading.Lock()  # guards the counters below and _closed
        self._closed = False
        self._records_written = 0
        self._bytes_written = 0
        self._dropped = 0
        self._failed = 0
        self._errors = 0
        self._reported_errors = 0
        self._files = 0
        self._last_error: str | None = None

        # Only the writer thread touches these once it runs.
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._file_bytes = FILE_HEADER.size
        self._file_records = 0
        self._seq = 0
        self._unsynced = False
        self._last_fsync = time.monotonic()

        try:
            self._open_next()  # here, so that an unwritable directory fails at startup, not silently later
        except OSError as exc:
            raise LogFormatError(f"cannot create a play log in {self.directory} ({exc})") from None
        self._thread = threading.Thread(target=self._run, name=f"npcrl-playlog-{prefix}", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # -- caller side -------------------------------------------------------------------------

    def append(self, record: Record) -> None:
        """Queue one record; never waits. Raises LogFormatError for an invalid record (a non-finite
        number included) or a closed writer. An engagement event without an id gets one."""
        if self._closed:
            raise LogFormatError("play-log writer is closed")
        frame = self._frame(record)
        if len(self._queue) >= self._queue_size:
            with self._lock:
                self._dropped += 1
            return
        self._enqueue(frame)
        if not self._woken():
            self._wake.set()

    def append_many(self, records: Iterable[Record]) -> None:
        """Queue records in order; all are validated before any is queued. A full queue keeps the earliest."""
        if self._closed:
            raise LogFormatError("play-log writer is closed")
        frames = [self._frame(record) for record in records]
        room = max(0, self._queue_size - len(self._queue))
        if room < len(frames):
            with self._lock:
                self._dropped += len(frames) - room
            frames = frames[:room]
        if frames:
            self._queue.extend(frames)
            if not self._wake.is_set():
                self._wake.set()

    def _frame(self, record: Record) -> bytes:
        # Validation (finite numbers included) raises here, in the caller's thread, before anything is queued.
        self._event_ids.assign(record)
        if (
            type(record) is ConversationStart
            and isinstance(record.player_id, str)
            and not is_pseudonym(record.player_id)
        ):
            # A copy: the caller's record keeps the id it knows the player by.
            record = dataclasses.replace(record, player_id=pseudonym(record.player_id, self._key))
        return frame_record(record)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record appended before this call is written (and fsynced unless sync is
        "flush"). False if ``timeout_s`` ran out first. Raises LogFormatError if I/O errors lost
        records since the last flush or close. Blocks: not for the game loop."""
        request = _FlushRequest()
        if not self._closed:
            self._queue.append(request)
            self._wake.set()
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not request.done.wait(0.05):
                if not self._thread.is_alive():
                    if not self._closed:
                        raise LogFormatError("play-log writer thread died (see its traceback)")
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        self._raise_new_errors()
        return True

    def close(self) -> None:
        """Write everything queued, close the file and stop the thread. Idempotent."""
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            self._queue.append(_STOP)
            self._wake.set()
            atexit.unregister(self._close_at_exit)
        self._thread.join()
        # Appends that raced with close landed behind the stop marker.
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, bytes):
                with self._lock:
                    self._dropped += 1
            elif isinstance(item, _FlushRequest):
                item.done.set()
        self._raise_new_errors()

    def __enter__(self) -> PlayLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(
                records_written=self._records_written,
                bytes_written=self._bytes_written,
                dropped=self._dropped,
                failed=self._failed,
                errors=self._errors,
                files=self._files,
                current_file=self._path,
                queued=len(self._queue),
                last_error=self._last_error,
            )

    def _raise_new_errors(self) -> None:
        with self._lock:
            new = self._errors - self._reported_errors
            self._reported_errors = self._errors
            failed, last = self._failed, self._last_error
        if new:
            raise LogFormatError(f"play-log writer: {new} I/O error(s); {failed} record(s) lost so far; last: {last}")

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except LogFormatError as exc:
            _log.error("%s", exc)

    # -- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self._wake.wait(self._fsync_wait()):
                # Let a burst gather: one write per burst, not a wake-up and a syscall per record.
                time.sleep(_COALESCE_S)
            self._wake.clear()  # before draining, so an append during the drain wakes us again
            stop = self._drain()
            if self._fsync_wait() == 0.0:
                self._fsync()
            if stop:
                break
        self._close_file()

    def _fsync_wait(self) -> float | None:
        """Seconds until an interval fsync is due; None when none is pending."""
        if self._sync != "fsync_interval" or not self._unsynced:
            return None
        return max(0.0, self._last_fsync + self._fsync_interval_s - time.monotonic())

    def _drain(self) -> bool:
        """Write what is queued; True once the stop marker is reached."""
        queue = self._queue
        pending: list[bytes] = []
        popleft, add = queue.popleft, pending.append  # per-record work here costs the game thread GIL time
        room = self._max_file_bytes - self._file_bytes
        size = 0
        while queue:
            item = popleft()
            if type(item) is bytes:
                n = len(item)
                if size + n > room and (pending or self._file_records):
                    self._write(pending)
                    self._close_file()  # the next write opens the next file
                    pending.clear()
                    room, size = self._max_file_bytes - self._file_bytes, 0
                add(item)
                size += n
                if size >= _BATCH_BYTES:
                    self._write(pending)
                    pending.clear()
                    room, size = self._max_file_bytes - self._file_bytes, 0
                continue
            self._write(pending)
            pending.clear()
            room, size = self._max_file_bytes - self._file_bytes, 0
            if item is _STOP:
                return True
            if isinstance(item, _FlushRequest):
                if self._unsynced:
                    self._fsync()
                item.done.set()
        self._write(pending)
        return False

    def _open_next(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while True:
            path = self.directory / f"{self._prefix}-{stamp}-{self._seq:06d}{FILE_SUFFIX}"
            self._seq += 1
            try:
                # O_EXCL: an existing file is never touched. Mode 0600 from the first moment.
                fd = create_private_file(path)
            except FileExistsError:
                continue
            break
        file = open(fd, "wb", buffering=0)  # unbuffered: a written batch is in the OS at once
        try:
            inuse.hold(file.fileno())  # until the file is closed: purge leaves it alone
            write_all(file, file_header())
            if self._sync != "flush":
                os.fsync(file.fileno())
                fsync_dir(self.directory)
        except OSError:
            file.close()
            raise
        self._file, self._path = file, path
        self._file_bytes, self._file_records = FILE_HEADER.size, 0
        self._last_fsync = time.monotonic()
        with self._lock:
            self._files += 1
            self._bytes_written += FILE_HEADER.size

    def _write(self, frames: list[bytes]) -> None:
        if not frames:
            return
        data = b"".join(frames)
        try:
            if self._file is None:
                self._open_next()
            assert self._file is not None
            write_all(self._file, data)
            if self._sync == "always":
                os.fsync(self._file.fileno())
        except OSError as exc:
            self._fail(exc, len(frames))
            self._abandon_file()  # a torn frame may end it: new records go to a new file
            return
        self._file_bytes += len(data)
        self._file_records += len(frames)
        self._unsynced = self._sync == "fsync_interval"
        with self._lock:
            self._records_written += len(frames)
            self._bytes_written += len(data)

    def _fsync(self) -> None:
        if self._file is not None:
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:
                self._fail(exc, 0)
        self._unsynced = False
        self._last_fsync = time.monotonic()

    def _close_file(self) -> None:
        if self._file is None:
            return
        if self._unsynced:
            self._fsync()
        try:
            self._file.close()
        except OSError as exc:
            self._fail(exc, 0)
        self._file, self._path = None, None
        self._file_bytes, self._file_records = FILE_HEADER.size, 0

    def _abandon_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the write error that brought us here is the one reported
        self._file, self._path = None, None
        self._file_bytes, self._file_records = FILE_HEADER.size, 0
        self._unsynced = False

    def _fail(self, exc: OSError, lost: int) -> None:
        with self._lock:
            self._errors += 1
            self._failed += lost
            self._last_error = f"{self._path or self.directory}: {exc}"
