"""Durable writes: the two steps every crash-safe file in the project relies on (play logs, the
bundle store, checkpoints, purge rewrites, the pseudonym key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


def write_all(file: BinaryIO, data: bytes | memoryview) -> None:
    """Write every byte of ``data``: a raw (unbuffered) file may take only part of one write."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError("write returned 0 bytes")
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a new or renamed file) durable. POSIX only: Windows cannot
    open a directory, and its rename is journaled with the file."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
