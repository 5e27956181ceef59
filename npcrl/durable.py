"""Durable writes: the one place that knows how to put a file or a directory on disk so that a crash
leaves either the old or the new version, whole — never a torn one, never neither.

Used by everything that must survive a kill: play logs, the bundle store, bundles, checkpoints,
training reports, loop state, purge rewrites, the pseudonym key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


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


def create_new_file(path: Path, mode: int | None = None) -> int:
    """Create ``path``, which must not exist (FileExistsError), open for writing; returns the
    descriptor. With ``mode`` the file has exactly that mode from its first moment (whatever the
    umask); without, the mode ``open`` would give it (0666 less the umask)."""
    fd = os.open(path, _NEW_FILE_FLAGS, 0o666 if mode is None else mode & 0o600)
    if mode is not None and os.name == "posix":
        try:
            # Created at most owner-only above, so nobody else can open it before it has this mode.
            os.fchmod(fd, mode)
        except OSError:
            os.close(fd)
            raise
    return fd


def _create_temp(path: Path, mode: int | None, temp: Path | None) -> tuple[int, Path]:
    if temp is not None:
        return create_new_file(temp, mode), temp
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return create_new_file(candidate, mode), candidate
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    *,
    mode: int | None = None,
    replace: bool = True,
    temp: str | os.PathLike[str] | None = None,
) -> Iterator[BinaryIO]:
    """Write a new version of ``path`` through the binary file this yields, all or nothing.

    The file is a temporary one beside ``path`` (same directory, so the rename cannot cross
    filesystems; ``temp`` names it, for callers that clean up a crash's leftovers by name, and it
    must not exist). ``mode`` is set when it is created, so the file never appears with another.
    When the ``with`` block ends normally the file is fsynced, renamed over ``path`` (or, with
    ``replace=False``, linked to it: FileExistsError if ``path`` exists, which is then kept), and
    the directory is fsynced so the rename itself survives a power cut. An exception removes the
    temporary file and leaves ``path`` as it was."""
    path = Path(path)
    fd, temp_path = _create_temp(path, mode, None if temp is None else Path(temp))
    try:
        with open(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temp_path, path)
        else:
            os.link(temp_path, path)  # unlike a rename, a link never replaces an existing file
            temp_path.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp_path.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int | None = None,
    temp: str | os.PathLike[str] | None = None,
) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8), all or nothing: ``atomic_file``
    for content that is already in memory."""
    with atomic_file(path, mode=mode, temp=temp) as file:
        write_all(file, data.encode("utf-8") if isinstance(data, str) else data)


def set_aside(output: Path) -> Path | None:
    """Move a cut-off run's partial ``output`` (a file or directory) out of the way, never deleting
    it: to ``<name>.interrupted-<k>`` beside it, the first k free. Returns where it went (None when
    there was nothing)."""
    if not output.exists():
        return None
    k = 1
    while (aside := output.with_name(f"{output.name}.interrupted-{k}")).exists():
        k += 1
    os.replace(output, aside)
    fsync_dir(output.parent)  # the move survives a crash that follows it
    return aside


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
