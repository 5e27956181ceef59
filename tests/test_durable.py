"""The durable-write helper: a file or directory is replaced whole or not at all, with its mode
from the start, and everything it wrote is fsynced."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
from fsync_recorder import record_fsyncs

import npcrl.durable as durable
from npcrl.durable import (
    atomic_file,
    atomic_write,
    create_new_file,
    fsync_tree,
    replace_dir,
    restore_set_aside,
    set_aside_path,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


class Boom(Exception):
    pass


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_atomic_write_writes_bytes_and_str_as_utf8(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.bin", b"\x00\xffraw")
    atomic_write(tmp_path / "b.txt", "Grüße 🐉\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xffraw"
    assert (tmp_path / "b.txt").read_bytes() == "Grüße 🐉\n".encode()
    assert entries(tmp_path) == ["a.bin", "b.txt"]


def test_atomic_write_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old and much longer than the new content")
    atomic_write(target, "new")
    assert target.read_text() == "new"
    assert entries(tmp_path) == ["state.json"]


def fail_the_write(monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_fail(file: BinaryIO, data: bytes | memoryview) -> None:
        file.write(bytes(data[: len(data) // 2]))
        raise OSError("no space left on device")

    monkeypatch.setattr(durable, "write_all", half_then_fail)


def fail_the_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)


def fail_the_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)


@pytest.mark.parametrize("fail", [fail_the_write, fail_the_fsync, fail_the_rename], ids=["write", "fsync", "rename"])
def test_a_failure_at_any_step_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Callable[[pytest.MonkeyPatch], None]
) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    fail(monkeypatch)
    with pytest.raises(OSError):
        atomic_write(target, "a new version of the state")
    assert target.read_text() == "old"
    assert entries(tmp_path) == ["state.json"]


def test_an_exception_inside_atomic_file_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "big.npl"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_file(target) as file:
        file.write(b"part of a large rewrite")
        raise Boom
    assert target.read_bytes() == b"old"
    assert entries(tmp_path) == ["big.npl"]


def test_atomic_file_streams_into_place_through_a_named_temporary(tmp_path: Path) -> None:
    target, temp = tmp_path / "log.npl", tmp_path / "log.npl.rewrite-tmp"
    with atomic_file(target, temp=temp) as file:
        for chunk in (b"one ", b"two ", b"three"):
            file.write(chunk)
        assert entries(tmp_path) == ["log.npl.rewrite-tmp"]
    assert target.read_bytes() == b"one two three"
    assert entries(tmp_path) == ["log.npl"]


def test_a_named_temporary_that_exists_is_never_reused(tmp_path: Path) -> None:
    temp = tmp_path / "leftover.tmp"
    temp.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError), atomic_file(tmp_path / "out", temp=temp):
        pass
    assert temp.read_bytes() == b"someone else's"
    assert not (tmp_path / "out").exists()


def test_without_replace_an_existing_file_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "key"
    with atomic_file(target, replace=False) as file:
        file.write(b"first")
    with pytest.raises(FileExistsError), atomic_file(target, replace=False) as file:
        file.write(b"second")
    assert target.read_bytes() == b"first"
    assert entries(tmp_path) == ["key"]


@posix_only
def test_the_mode_is_set_before_the_file_is_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "secret"
    modes_at_rename: list[int] = []
    real_replace = os.replace

    def recording_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        modes_at_rename.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    old_umask = os.umask(0o077)  # the mode is exact, whatever the umask
    try:
        atomic_write(target, b"x", mode=0o640)
    finally:
        os.umask(old_umask)
    assert modes_at_rename == [0o640]
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


@posix_only
def test_without_a_mode_the_file_gets_what_open_would_give_it(tmp_path: Path) -> None:
    atomic_write(tmp_path / "manifest.json", "{}")
    (tmp_path / "plain.json").write_text("{}")
    expected = 0o666 & ~current_umask()
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == expected


@posix_only
def test_a_new_file_with_a_mode_is_never_wider_even_briefly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[int] = []
    real_open = os.open

    def recording_open(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        created.append(mode)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", recording_open)
    os.close(create_new_file(tmp_path / "f", 0o644))
    assert created == [0o600]
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def make_tree(root: Path, content: str) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "top.txt").write_text(content)
    (root / "sub" / "mid.txt").write_text(content)
    (root / "sub" / "deeper" / "low.txt").write_text(content)


def test_replace_dir_moves_a_tree_into_a_new_place(tmp_path: Path) -> None:
    staging, final = tmp_path / "staging", tmp_path / "final"
    make_tree(staging, "new")
    replace_dir(staging, final)
    assert (final / "sub" / "deeper" / "low.txt").read_text() == "new"
    assert entries(tmp_path) == ["final"]


def test_replace_dir_replaces_an_existing_tree_and_drops_the_old(tmp_path: Path) -> None:
    staging, final = tmp_path / "staging", tmp_path / "final"
    make_tree(final, "old")
    (final / "only-in-old.txt").write_text("old")
    make_tree(staging, "new")
    replace_dir(staging, final)
    assert (final / "top.txt").read_text() == "new"
    assert not (final / "only-in-old.txt").exists()
    assert entries(tmp_path) == ["final"]


def test_a_swap_cut_off_between_the_renames_is_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging, final = tmp_path / "staging", tmp_path / "final"
    make_tree(final, "old")
    make_tree(staging, "new")
    real_replace = os.replace
    calls: list[object] = []

    def killed_after_the_first_rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise Boom  # the process dies with the old tree set aside and the new one not yet in
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_the_first_rename)
    with pytest.raises(Boom):
        replace_dir(staging, final)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not final.exists() and set_aside_path(final).is_dir()

    assert restore_set_aside(final) is True
    assert (final / "sub" / "deeper" / "low.txt").read_text() == "old"
    assert not set_aside_path(final).exists()
    assert restore_set_aside(final) is False  # nothing left to put back


def test_restore_leaves_a_complete_directory_alone(tmp_path: Path) -> None:
    final = tmp_path / "final"
    make_tree(final, "current")
    make_tree(set_aside_path(final), "stale")
    assert restore_set_aside(final) is False
    assert (final / "top.txt").read_text() == "current"


def test_fsync_tree_covers_every_nested_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tree"
    make_tree(root, "x")
    synced = record_fsyncs(monkeypatch)
    fsync_tree(root)
    everything = [root, *root.rglob("*")]
    assert {p.stat().st_ino for p in everything if p.is_file()} <= synced
    if os.name == "posix":
        assert {p.stat().st_ino for p in everything if p.is_dir()} <= synced
