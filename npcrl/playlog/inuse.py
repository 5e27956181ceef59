"""Which log files a writer is still appending to: the writer holds a lock on each open file.

``PlayLogWriter`` takes an exclusive ``flock`` on every file it creates, from creation until it
closes the file (rotation, ``close()``, or the process ending: the OS drops the lock of a killed
writer too). ``npcrl logs purge`` rewrites only files whose lock it can take without waiting, so
it never races a writer. The lock is advisory: other tools ignore it, and it may not reach across
machines on a network filesystem, so purge on the machine that writes the logs (or on a copy).

Without ``fcntl`` (Windows) there is no lock to take; there Windows itself refuses to rename over
a file that a writer holds open, so purge leaves such a file unchanged and reports it as failed.
"""

from __future__ import annotations

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def hold(fd: int) -> None:
    """Mark the file as being written (waits while a purge reads it: a purge holds it briefly)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def try_hold(fd: int) -> bool:
    """Take the lock without waiting; False when a writer holds the file. Released by closing ``fd``."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
