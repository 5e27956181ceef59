"""The file side of a play-log writer: naming, rotation, batched writes, fsyncs and I/O errors.

Only the writer thread of ``PlayLogWriter`` calls into a ``LogFiles``; the counters it keeps are
shared with the caller side under the writer's lock. Every file is new (created exclusively, mode
0600) and held against ``npcrl logs purge`` (``inuse``) until it is closed. An I/O error during a
write abandons the file, which may end in a torn frame, so that later records go to a new file.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import npcrl.playlog.inuse as inuse
from npcrl.durable import fsync_dir, write_all
from npcrl.playlog.framing import FILE_HEADER, FILE_SUFFIX, file_header
from npcrl.privacy.private_files import create_private_file


@dataclass
class WriterCounts:
    """What a writer has done so far; read and written under the writer's lock."""

    records_written: int = 0  # handed to the OS (and fsynced, under "always")
    bytes_written: int = 0  # file headers included
    dropped: int = 0  # refused because the queue was full, or appended while the writer closed
    failed: int = 0  # lost to I/O errors
    errors: int = 0  # I/O errors seen: opens, writes, fsyncs
    files: int = 0  # files created
    last_error: str | None = None


@dataclass(frozen=True)
class FileOptions:
    directory: Path
    prefix: str
    max_file_bytes: int
    sync: str  # a SyncPolicy
    fsync_interval_s: float


class LogFiles:
    """The current log file of one writer and the rotation to the next."""

    def __init__(self, options: FileOptions, counts: WriterCounts, lock: threading.Lock) -> None:
        self.options = options
        self._counts = counts
        self._lock = lock
        self._file: BinaryIO | None = None
        self.path: Path | None = None
        self._file_bytes = FILE_HEADER.size
        self.file_records = 0
        self._seq = 0
        self.unsynced = False
        self._last_fsync = time.monotonic()

    def room(self) -> int:
        """Bytes the current file (or the next one, when none is open) can still take."""
        return self.options.max_file_bytes - self._file_bytes

    def fsync_wait(self) -> float | None:
        """Seconds until an interval fsync is due; None when none is pending."""
        if self.options.sync != "fsync_interval" or not self.unsynced:
            return None
        return max(0.0, self._last_fsync + self.options.fsync_interval_s - time.monotonic())

    def open_next(self) -> None:
        """Start the next file: a new name, the file header, and (unless sync is "flush") an fsync."""
        path, fd = self._create_next()
        file = open(fd, "wb", buffering=0)  # unbuffered: a written batch is in the OS at once
        try:
            inuse.hold(file.fileno())  # until the file is closed: purge leaves it alone
            write_all(file, file_header())
            if self.options.sync != "flush":
                os.fsync(file.fileno())
                fsync_dir(self.options.directory)
        except OSError:
            file.close()
            raise
        self._file, self.path = file, path
        self._file_bytes, self.file_records = FILE_HEADER.size, 0
        self._last_fsync = time.monotonic()
        with self._lock:
            self._counts.files += 1
            self._counts.bytes_written += FILE_HEADER.size

    def _create_next(self) -> tuple[Path, int]:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while True:
            path = self.options.directory / f"{self.options.prefix}-{stamp}-{self._seq:06d}{FILE_SUFFIX}"
            self._seq += 1
            try:
                # O_EXCL: an existing file is never touched. Mode 0600 from the first moment.
                return path, create_private_file(path)
            except FileExistsError:
                continue

    def write(self, frames: list[bytes]) -> None:
        """Write ``frames`` with one call, opening a file first if none is open."""
        if not frames:
            return
        data = b"".join(frames)
        try:
            if self._file is None:
                self.open_next()
            assert self._file is not None
            write_all(self._file, data)
            if self.options.sync == "always":
                os.fsync(self._file.fileno())
        except OSError as exc:
            self._fail(exc, len(frames))
            self._abandon()  # a torn frame may end it: new records go to a new file
            return
        self._file_bytes += len(data)
        self.file_records += len(frames)
        self.unsynced = self.options.sync == "fsync_interval"
        with self._lock:
            self._counts.records_written += len(frames)
            self._counts.bytes_written += len(data)

    def fsync(self) -> None:
        if self._file is not None:
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:
                self._fail(exc, 0)
        self.unsynced = False
        self._last_fsync = time.monotonic()

    def close(self) -> None:
        """Close the current file (fsynced first if it holds unsynced data); the next write opens another."""
        if self._file is None:
            return
        if self.unsynced:
            self.fsync()
        try:
            self._file.close()
        except OSError as exc:
            self._fail(exc, 0)
        self._forget()

    def _abandon(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the write error that brought us here is the one reported
        self._forget()
        self.unsynced = False

    def _forget(self) -> None:
        self._file, self.path = None, None
        self._file_bytes, self.file_records = FILE_HEADER.size, 0

    def _fail(self, exc: OSError, lost: int) -> None:
        with self._lock:
            self._counts.errors += 1
            self._counts.failed += lost
            self._counts.last_error = f"{self.path or self.options.directory}: {exc}"
