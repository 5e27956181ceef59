"""Promoted bundles: which bundle a game should run, switched atomically, with rollback.

A bundle store is a directory of bundles plus ``CURRENT`` (a small JSON file naming the promoted
bundle directory and its id) and ``HISTORY`` (earlier promotions, newest last). ``promote`` writes
a new ``CURRENT`` beside the old one and renames it into place, so a reader sees either the old or
the new pointer, never half of one; the previous bundle stays on disk for ``rollback``.

A game polls ``current_bundle`` between conversations and swaps models when the id changes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from npcrl.bundle import load_bundle
from npcrl.errors import BundleError

CURRENT = "CURRENT"
HISTORY = "HISTORY"


@dataclass(frozen=True)
class Promotion:
    bundle_dir: Path
    bundle_id: str
    promoted_at: float


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_pointer(path: Path) -> Promotion:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Promotion(Path(data["bundle_dir"]), str(data["bundle_id"]), float(data["promoted_at"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable promotion pointer: {exc}") from exc


def current_bundle(store: str | os.PathLike[str]) -> Promotion | None:
    """The promoted bundle of ``store``, or None when nothing was promoted yet."""
    path = Path(store) / CURRENT
    if not path.is_file():
        return None
    return _read_pointer(path)


def history(store: str | os.PathLike[str]) -> list[Promotion]:
    path = Path(store) / HISTORY
    if not path.is_file():
        return []
    promotions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            promotions.append(Promotion(Path(data["bundle_dir"]), str(data["bundle_id"]), float(data["promoted_at"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}:{number}: unreadable promotion record: {exc}") from exc
    return promotions


def promote(store: str | os.PathLike[str], bundle_dir: str | os.PathLike[str]) -> Promotion:
    """Verify ``bundle_dir`` and make it the store's current bundle (atomic pointer switch)."""
    root = Path(store)
    root.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(bundle_dir)  # never promote a bundle a game would refuse
    promotion = Promotion(Path(bundle_dir).resolve(), bundle.bundle_id, time.time())
    previous = current_bundle(root)
    if previous is not None:
        with open(root / HISTORY, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_as_json(previous)) + "\n")
    _write_atomic(root / CURRENT, json.dumps(_as_json(promotion), indent=2) + "\n")
    return promotion


def rollback(store: str | os.PathLike[str]) -> Promotion:
    """Re-promote the bundle that was current before the present one."""
    root = Path(store)
    earlier = history(root)
    if not earlier:
        raise BundleError(f"{root}: no earlier promotion to roll back to")
    previous = earlier[-1]
    load_bundle(previous.bundle_dir)
    restored = Promotion(previous.bundle_dir, previous.bundle_id, time.time())
    _write_atomic(root / CURRENT, json.dumps(_as_json(restored), indent=2) + "\n")
    _write_atomic(root / HISTORY, "".join(json.dumps(_as_json(p)) + "\n" for p in earlier[:-1]))
    return restored


def _as_json(promotion: Promotion) -> dict[str, object]:
    return {
        "bundle_dir": str(promotion.bundle_dir),
        "bundle_id": promotion.bundle_id,
        "promoted_at": promotion.promoted_at,
    }
