"""Promoted bundles: which bundle a game should run, switched atomically, with rollback and repair.

A bundle store is a directory holding ``CURRENT`` (a small JSON file naming the promoted bundle
directory and its id), ``HISTORY`` (earlier promotions, one JSON object a line, newest last) and
``LOCK``. Every change (``promote``, ``rollback``, ``repair``) holds an inter-process lock on
``LOCK`` for its whole read-modify-write, so concurrent promoters never lose a history entry, and
writes each file beside itself and renames it into place, so a reader sees the old or the new
file, never half of one. Readers (``current_bundle``, ``history``) take no lock: a game polling
the store never waits on, or blocks, a promotion.

A game polls ``current_bundle`` between conversations and swaps models when the id changes. A
corrupt ``CURRENT``, or one naming a bundle that is gone, raises ``StoreError`` (a
``BundleError``) telling the operator to run ``npcrl promote --repair STORE``. It does not fall
back to ``HISTORY`` on its own: a running game then keeps the model it has (the last good one it
saw) instead of silently rolling back to an older one, and a starting game falls back to its
default bundle. ``repair`` rebuilds ``CURRENT`` from the newest ``HISTORY`` entry whose bundle
still verifies. Unreadable ``HISTORY`` lines are skipped and reported, never fatal.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from npcrl.durable import atomic_write
from npcrl.errors import BundleError
from npcrl.loop.promotion_records import (
    POINTER_MAX_BYTES,
    HistoryRead,
    Promotion,
    StoreError,
    format_history,
    format_pointer,
    parse_history,
    parse_promotion,
)
from npcrl.runtime.bundle import MANIFEST_NAME, load_bundle

__all__ = [
    "CURRENT",
    "HISTORY",
    "LOCK",
    "HistoryRead",
    "Promotion",
    "RepairResult",
    "StoreError",
    "current_bundle",
    "history",
    "promote",
    "read_history",
    "repair",
    "rollback",
]

log = logging.getLogger("npcrl.loop.promotion")

CURRENT = "CURRENT"
HISTORY = "HISTORY"
LOCK = "LOCK"
# A promotion holds the lock for a few file writes; repair verifies bundles under it (about 1 s
# per 500 MB each). Far above both, so a timeout means a stuck holder, not a busy store.
LOCK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RepairResult:
    current: Promotion | None
    """the store's promotion after the repair (None: nothing was ever promoted)"""
    restored: bool
    """True when ``CURRENT`` was rewritten from ``HISTORY``"""
    problems: list[str] = field(default_factory=list)
    """what was found wrong and dropped: the pointer, unreadable lines, bundles that no longer verify"""


def _repair_hint(root: Path) -> str:
    return f"run `npcrl promote --repair {root}` to restore the last good promotion from {HISTORY}"


def _store_root(store: str | os.PathLike[str], *, create: bool) -> Path:
    """The store directory; a path that exists but is no directory, or cannot be made, is refused."""
    root = Path(store).expanduser()
    try:
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: bundle store path is not a directory")
        if create:
            root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{root}: bundle store cannot be used: {exc.strerror or exc}") from exc
    return root


def _read_bytes(path: Path, limit: int | None = None) -> bytes | None:
    """The file's bytes (at most ``limit`` + 1 of them), or None when it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read(-1 if limit is None else limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def _read_pointer(root: Path) -> Promotion | None:
    """``CURRENT`` parsed, or None when absent; ``StoreError`` naming the file when malformed."""
    path = root / CURRENT
    data = _read_bytes(path, POINTER_MAX_BYTES)
    if data is None:
        return None
    if len(data) > POINTER_MAX_BYTES:
        raise StoreError(f"{path}: unreadable promotion pointer: larger than {POINTER_MAX_BYTES} bytes")
    return parse_promotion(data, f"{path}: unreadable promotion pointer")


def _bundle_present(bundle_dir: Path) -> bool:
    try:
        return (bundle_dir / MANIFEST_NAME).is_file()
    except OSError:
        return False


def current_bundle(store: str | os.PathLike[str]) -> Promotion | None:
    """The promoted bundle of ``store``, or None when nothing was promoted yet. Takes no lock.

    Raises ``StoreError`` when the store path is not a directory or cannot be read, when
    ``CURRENT`` is corrupt, and when the bundle it names is gone (only the manifest's presence is
    checked here: a game polls this, and the loader verifies the files).
    """
    root = _store_root(store, create=False)
    try:
        promotion = _read_pointer(root)
    except StoreError as exc:
        raise StoreError(f"{exc}; {_repair_hint(root)}") from exc
    if promotion is not None and not _bundle_present(promotion.bundle_dir):
        raise StoreError(
            f"{root / CURRENT}: field 'bundle_dir' names bundle {promotion.bundle_id} at "
            f"{str(promotion.bundle_dir)!r}, which is gone ({MANIFEST_NAME} is missing); {_repair_hint(root)}"
        )
    return promotion


def read_history(store: str | os.PathLike[str]) -> HistoryRead:
    """``HISTORY`` of ``store``: the readable promotions (oldest first) and one problem per skipped line."""
    root = _store_root(store, create=False)
    path = root / HISTORY
    return parse_history(_read_bytes(path) or b"", str(path))


def history(store: str | os.PathLike[str]) -> list[Promotion]:
    """Earlier promotions, oldest first; unreadable lines are skipped and logged. Takes no lock."""
    read = read_history(store)
    for problem in read.problems:
        log.warning("skipping %s", problem)
    return read.promotions


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` whole: a reader sees the old or the new file, never half."""
    try:
        atomic_write(path, text)
    except OSError as exc:
        raise StoreError(f"{path}: cannot be written: {exc.strerror or exc}") from exc


@contextmanager
def _locked(root: Path, timeout_s: float) -> Iterator[None]:
    """Hold the store's inter-process lock (released by the OS if the holder dies)."""
    lock = FileLock(str(root / LOCK), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout as exc:
        raise StoreError(
            f"{root / LOCK}: another promote, rollback or repair has held the store lock for over {timeout_s:g} s"
        ) from exc
    except OSError as exc:
        raise StoreError(f"{root / LOCK}: cannot lock the bundle store: {exc.strerror or exc}") from exc
    try:
        yield
    finally:
        lock.release()


def _locked_history(root: Path) -> list[Promotion]:
    read = parse_history(_read_bytes(root / HISTORY) or b"", str(root / HISTORY))
    for problem in read.problems:
        log.warning("dropping %s", problem)
    return read.promotions


def _verified_bundle_id(bundle_dir: str | os.PathLike[str]) -> str:
    path = Path(bundle_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise BundleError(f"{path}: is a file, not a bundle directory")
    return load_bundle(path).bundle_id


def promote(
    store: str | os.PathLike[str], bundle_dir: str | os.PathLike[str], *, lock_timeout_s: float = LOCK_TIMEOUT_S
) -> Promotion:
    """Verify ``bundle_dir`` and make it the store's current bundle (atomic pointer switch).

    A corrupt ``CURRENT`` does not block a promotion: it is replaced (and logged), so promoting a
    good bundle is one way out of a broken store.
    """
    bundle_id = _verified_bundle_id(bundle_dir)  # never promote a bundle a game would refuse
    root = _store_root(store, create=True)
    with _locked(root, lock_timeout_s):
        try:
            previous = _read_pointer(root)
        except StoreError as exc:
            log.warning("replacing a corrupt pointer: %s", exc)
            previous = None
        earlier = _locked_history(root)
        # A promotion cut off between its two writes left ``previous`` last in HISTORY already.
        if previous is not None and (not earlier or earlier[-1] != previous):
            _write_atomic(root / HISTORY, format_history([*earlier, previous]))
        promotion = Promotion(Path(bundle_dir).expanduser().resolve(), bundle_id, time.time())
        _write_atomic(root / CURRENT, format_pointer(promotion))
    return promotion


def rollback(store: str | os.PathLike[str], *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> Promotion:
    """Re-promote the bundle that was current before the present one (it must still verify)."""
    root = _store_root(store, create=False)
    if not root.is_dir():
        raise StoreError(f"{root}: no bundle store here to roll back")
    with _locked(root, lock_timeout_s):
        earlier = _locked_history(root)
        if not earlier:
            raise StoreError(f"{root}: no earlier promotion to roll back to")
        previous = earlier[-1]
        problem = _verification_problem(previous)
        if problem is not None:
            raise StoreError(f"{root}: cannot roll back: {problem}; the store is unchanged")
        restored = Promotion(previous.bundle_dir, previous.bundle_id, time.time())
        _write_atomic(root / CURRENT, format_pointer(restored))
        _write_atomic(root / HISTORY, format_history(earlier[:-1]))
    return restored


def _verification_problem(promotion: Promotion) -> str | None:
    """Why ``promotion``'s bundle cannot be run any more, or None when it verifies with the same id."""
    where = f"bundle {promotion.bundle_id} at {str(promotion.bundle_dir)!r}"
    try:
        bundle = load_bundle(promotion.bundle_dir)
    except (BundleError, OSError, ValueError) as exc:
        return f"{where} no longer verifies: {exc}"
    if bundle.bundle_id != promotion.bundle_id:
        return f"{where} now holds bundle {bundle.bundle_id}"
    return None


def _pointer_state(root: Path) -> tuple[Promotion | None, str | None]:
    """``CURRENT`` (None when absent or unreadable) and why it cannot stand (None when sound or absent)."""
    try:
        pointer = _read_pointer(root)
    except StoreError as exc:
        return None, str(exc)
    return pointer, None if pointer is None else _verification_problem(pointer)


def repair(store: str | os.PathLike[str], *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> RepairResult:
    """Make ``store`` sound again: drop unreadable ``HISTORY`` lines and, when ``CURRENT`` is corrupt,
    missing or names a bundle that no longer verifies, rebuild it from the newest ``HISTORY`` entry
    whose bundle still verifies (newer, broken entries are dropped). Raises ``StoreError`` when no
    entry is left to restore.
    """
    root = _store_root(store, create=False)
    if not root.is_dir():
        raise StoreError(f"{root}: no bundle store here to repair")
    with _locked(root, lock_timeout_s):
        read = parse_history(_read_bytes(root / HISTORY) or b"", str(root / HISTORY))
        problems = list(read.problems)
        pointer, pointer_problem = _pointer_state(root)
        if pointer is None and pointer_problem is None and read.promotions:
            pointer_problem = f"{root / CURRENT} is missing"
        if pointer_problem is None:  # sound, or nothing was ever promoted
            if problems:
                _write_atomic(root / HISTORY, format_history(read.promotions))
            return RepairResult(pointer, restored=False, problems=problems)
        problems.append(pointer_problem)
        return _restore_from_history(root, read.promotions, problems, pointer_problem)


def _restore_from_history(
    root: Path, earlier: list[Promotion], problems: list[str], pointer_problem: str
) -> RepairResult:
    for index in range(len(earlier) - 1, -1, -1):
        problem = _verification_problem(earlier[index])
        if problem is not None:
            problems.append(f"{root / HISTORY}: {problem}")
            continue
        restored = Promotion(earlier[index].bundle_dir, earlier[index].bundle_id, time.time())
        _write_atomic(root / CURRENT, format_pointer(restored))
        _write_atomic(root / HISTORY, format_history(earlier[:index]))
        return RepairResult(restored, restored=True, problems=problems)
    raise StoreError(
        f"{pointer_problem}; none of the {len(earlier)} {HISTORY} entries names a bundle that still "
        f"verifies; promote one with `npcrl promote {root} BUNDLE`"
    )
