"""The bundle store's two record formats: the ``CURRENT`` pointer and ``HISTORY`` lines.

Both hold the same JSON object, ``{"bundle_dir": ..., "bundle_id": ..., "promoted_at": ...}``.
Parsing is strict (types, an absolute path the OS can take, a finite time) because a game acts on
what it reads: a bad pointer raises ``StoreError``, a bad history line is skipped and reported.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from npcrl.errors import BundleError

# CURRENT is one small object; anything larger is not a pointer this module wrote.
POINTER_MAX_BYTES = 64 * 1024
# A history line longer than this is skipped unread (a pointer-sized record, with room to spare).
LINE_MAX_BYTES = POINTER_MAX_BYTES
_FIELDS = ("bundle_dir", "bundle_id", "promoted_at")


class StoreError(BundleError):
    """A bundle store cannot be used: not a directory, unreadable, a corrupt pointer, a held lock."""


@dataclass(frozen=True)
class Promotion:
    bundle_dir: Path
    bundle_id: str
    promoted_at: float


@dataclass(frozen=True)
class HistoryRead:
    promotions: list[Promotion]
    """readable entries, oldest first"""
    problems: list[str] = field(default_factory=list)
    """one message per skipped line, naming file and line number"""


def _text_field(data: dict[str, object], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or "\0" in value:
        raise StoreError(f"{where}: field {key!r} = {value!r:.200} must be a non-empty string without NUL")
    return value


def _promoted_at(data: dict[str, object], where: str) -> float:
    value = data.get("promoted_at")
    # bool is an int to Python, and JSON allows NaN/Infinity: neither is a time.
    try:
        seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer too large for a float
        seconds = math.nan
    if not math.isfinite(seconds):
        raise StoreError(f"{where}: field 'promoted_at' = {value!r:.200} must be a finite number")
    return seconds


def _bundle_dir(data: dict[str, object], where: str) -> Path:
    text = _text_field(data, "bundle_dir", where)
    try:
        os.fsencode(text)  # a lone surrogate would make every later stat() of the path raise
    except UnicodeError as exc:
        raise StoreError(f"{where}: field 'bundle_dir' = {text!r:.200} is not a valid file name") from exc
    path = Path(text)
    if not path.is_absolute():
        raise StoreError(f"{where}: field 'bundle_dir' = {text!r:.200} must be an absolute path")
    return path


def parse_promotion(raw: bytes | str, where: str) -> Promotion:
    """One record; ``StoreError`` naming ``where`` and the field when it is not a valid promotion."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise StoreError(f"{where}: not a JSON promotion record: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in _FIELDS if key not in data]
    if missing:
        raise StoreError(f"{where}: required field {missing[0]!r} is missing")
    return Promotion(_bundle_dir(data, where), _text_field(data, "bundle_id", where), _promoted_at(data, where))


def parse_history(raw: bytes, where: str) -> HistoryRead:
    """Every readable line of a ``HISTORY`` file; unreadable ones become problems, never errors."""
    promotions: list[Promotion] = []
    problems: list[str] = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        if len(line) > LINE_MAX_BYTES:
            problems.append(f"{where}:{number}: line of {len(line)} bytes is longer than {LINE_MAX_BYTES}")
            continue
        try:
            promotions.append(parse_promotion(line, f"{where}:{number}"))
        except StoreError as exc:
            problems.append(str(exc))
    return HistoryRead(promotions, problems)


def _as_json(promotion: Promotion) -> dict[str, object]:
    return {
        "bundle_dir": str(promotion.bundle_dir),
        "bundle_id": promotion.bundle_id,
        "promoted_at": promotion.promoted_at,
    }


def format_pointer(promotion: Promotion) -> str:
    return json.dumps(_as_json(promotion), indent=2) + "\n"


def format_history(promotions: list[Promotion]) -> str:
    return "".join(json.dumps(_as_json(p)) + "\n" for p in promotions)
