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
appends to it (``inuse``), so ``npcrl logs purge`` leaves that file alone. The files themselves are
handled by ``npcrl.playlog.log_files``.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from npcrl.errors import LogFormatError
from npcrl.paths import default_key_path
from npcrl.playlog.framing import FILE_HEADER
from npcrl.playlog.holds import Holds
from npcrl.playlog.identity import EventIds
from npcrl.playlog.log_files import FileOptions, LogFiles, WriterCounts
from npcrl.playlog.records import ConversationStart, Record, frame_record
from npcrl.privacy.private_files import make_private_dirs
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


def _check_options(options: FileOptions, queue_size: int) -> None:
    if options.sync not in SYNC_POLICIES:
        raise LogFormatError(f"sync must be one of {', '.join(SYNC_POLICIES)}, got {options.sync!r}")
    if options.max_file_bytes <= FILE_HEADER.size:
        raise LogFormatError(f"max_file_bytes must exceed the {FILE_HEADER.size}-byte file header")
    if not options.fsync_interval_s > 0:
        raise LogFormatError(f"fsync_interval_s must be > 0, got {options.fsync_interval_s}")
    if queue_size < 1:
        raise LogFormatError(f"queue_size must be >= 1, got {queue_size}")
    if not _PREFIX.fullmatch(options.prefix):
        raise LogFormatError(f"prefix must be letters, digits, '_', '.' or '-', got {options.prefix!r}")


def _make_log_dir(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise LogFormatError(f"play-log directory {directory} exists and is not a directory")
    try:
        make_private_dirs(directory)
    except OSError as exc:
        raise LogFormatError(f"cannot create play-log directory {directory} ({exc})") from None


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
        options = FileOptions(Path(directory), prefix, max_file_bytes, sync, fsync_interval_s)
        _check_options(options, queue_size)
        self.directory = options.directory
        _make_log_dir(self.directory)
        self._key = _writer_key(self.directory, pseudonym_key)
        self._queue_size = queue_size
        self._event_ids = EventIds()

        self._queue: deque[bytes | _FlushRequest | object] = deque()
        self._wake = threading.Event()
        self._enqueue, self._woken = self._queue.append, self._wake.is_set  # bound once: append is hot
        self._lock = threading.Lock()  # guards the counts and _closed
        self._closed = False
        self._holds = Holds()  # records on their way (an NPC turn still generating): close() waits for them
        self._counts = WriterCounts()
        self._reported_errors = 0
        self._files = LogFiles(options, self._counts, self._lock)  # only the writer thread uses it once it runs
        try:
            self._files.open_next()  # here, so that an unwritable directory fails at startup, not silently later
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
                self._counts.dropped += 1
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
                self._counts.dropped += len(frames) - room
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

    def hold(self) -> Callable[[], None]:
        """A record is on its way: until the returned release is called, ``close()`` waits for it
        (at most ``holds.HOLD_WAIT_S``) instead of refusing it."""
        return self._holds.hold()

    def close(self) -> None:
        """Wait for held records, write everything queued, close the file and stop the thread. Idempotent."""
        self._holds.wait()
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
                    self._counts.dropped += 1
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
            counts = dataclasses.asdict(self._counts)
            return WriterStats(**counts, current_file=self._files.path, queued=len(self._queue))

    def _raise_new_errors(self) -> None:
        with self._lock:
            new = self._counts.errors - self._reported_errors
            self._reported_errors = self._counts.errors
            failed, last = self._counts.failed, self._counts.last_error
        if new:
            raise LogFormatError(f"play-log writer: {new} I/O error(s); {failed} record(s) lost so far; last: {last}")

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except LogFormatError as exc:
            _log.error("%s", exc)

    # -- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        files = self._files
        while True:
            if self._wake.wait(files.fsync_wait()):
                # Let a burst gather: one write per burst, not a wake-up and a syscall per record.
                time.sleep(_COALESCE_S)
            self._wake.clear()  # before draining, so an append during the drain wakes us again
            stop = self._drain()
            if files.fsync_wait() == 0.0:
                files.fsync()
            if stop:
                break
        files.close()

    def _drain(self) -> bool:
        """Write what is queued; True once the stop marker is reached."""
        queue, files = self._queue, self._files
        pending: list[bytes] = []
        popleft, add = queue.popleft, pending.append  # per-record work here costs the game thread GIL time
        room, size = files.room(), 0
        while queue:
            item = popleft()
            if type(item) is bytes:
                n = len(item)
                if size + n > room and (pending or files.file_records):
                    files.write(pending)
                    files.close()  # the next write opens the next file
                    pending.clear()
                    room, size = files.room(), 0
                add(item)
                size += n
                if size >= _BATCH_BYTES:
                    files.write(pending)
                    pending.clear()
                    room, size = files.room(), 0
                continue
            files.write(pending)
            pending.clear()
            room, size = files.room(), 0
            if item is _STOP:
                return True
            if isinstance(item, _FlushRequest):
                if files.unsynced:
                    files.fsync()
                item.done.set()
        files.write(pending)
        return False
