"""Durable writes: the one place that knows how to put a file or a directory on disk so that a crash
leaves either the old or the new version, whole — never a torn one, never neither.

Used by everything that must survive a kill: play logs, the bundle store, bundles, checkpoints,
training reports, loop state, purge rewrites, the pseudonym key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
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


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk (a file written by another library, e.g. safetensors)."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``, deepest first, then ``root`` itself."""
    for directory, _, names in os.walk(root, topdown=False):
        for name in names:
            fsync_file(Path(directory) / name)
        fsync_dir(Path(directory))


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``, all or nothing.

    A temporary file beside ``path`` (same directory, so the rename cannot cross filesystems) is
    written, fsynced, given ``mode`` (when set) before it is visible, renamed over ``path``, and the
    directory is fsynced so the rename itself survives a power cut. A failure removes the
    temporary file and leaves ``path`` as it was."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            if mode is not None and os.name == "posix":
                os.fchmod(file.fileno(), mode)
            write_all(file, payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_dir(path.parent)


def set_aside_path(final: Path) -> Path:
    """Where ``replace_dir`` keeps the old directory while the new one moves in."""
    return final.with_name(f".{final.name}.old")


def replace_dir(staging: Path, final: Path) -> None:
    """Move the complete directory ``staging`` to ``final``, replacing what is there.

    ``staging`` must be on the same filesystem (make it beside ``final``). Its files are fsynced;
    the old ``final`` is renamed aside and deleted only once the new one is in place, so a kill
    between the two renames leaves it whole at ``set_aside_path(final)`` for
    ``restore_set_aside``."""
    fsync_tree(staging)
    aside = set_aside_path(final)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(staging, final)
        fsync_dir(final.parent)
        shutil.rmtree(aside)
    else:
        os.replace(staging, final)
        fsync_dir(final.parent)


def restore_set_aside(final: Path) -> bool:
    """Put back the directory a process killed inside ``replace_dir`` moved aside, if ``final`` is
    missing; True if it did."""
    aside = set_aside_path(final)
    if final.exists() or not aside.is_dir():
        return False
    try:
        os.replace(aside, final)
    except FileNotFoundError:  # another process (e.g. another rank of a run) restored it first
        return False
    fsync_dir(final.parent)
    return True
