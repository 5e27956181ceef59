"""Seeing what was made durable: which files and directories os.fsync was called on."""

from __future__ import annotations

import os

import pytest


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Make ``os.fsync`` also note the inode of whatever it syncs; returns the (growing) set."""
    synced: set[int] = set()
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced
