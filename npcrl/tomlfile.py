"""Reading the project's TOML files (persona cards, reward specs, player profiles, training configs)
with errors that name the file.

Every TOML reader of the project goes through ``read_toml``, so a hostile or broken file fails
the same way everywhere: with the caller's own error type, never a raw ``RecursionError``,
``MemoryError`` or ``ValueError`` from the parser. The parser recurses once per level of inline
nesting, so a few thousand ``[`` in a row exhaust Python's stack; such a file is refused, and so
is a parsed document nested deeper than any of the project's formats needs (dotted keys nest
without recursion) or a file larger than any of them could sensibly be.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from npcrl.errors import NpcrlError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

MAX_TOML_BYTES = 1 << 20
"""largest file read: the shipped cards, specs, profiles and configs are a few KiB each"""
MAX_TOML_DEPTH = 16
"""deepest nesting of tables and arrays (the top-level table is 1); the formats need at most 3"""


def read_toml(path: Path, error: type[NpcrlError], what: str) -> dict[str, Any]:
    """Parse ``path``; any failure raises ``error`` naming the file (``what`` says what it is)."""
    text = _read_text(path, error, what)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}") from exc
    except RecursionError:
        raise error(f"{path}: invalid {what}: arrays or inline tables nested too deeply to parse") from None
    except MemoryError:
        raise error(f"{path}: invalid {what}: too large to parse") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise error(f"{path}: invalid TOML: {exc}") from None
    depth = _nesting_depth(data, MAX_TOML_DEPTH)
    if depth > MAX_TOML_DEPTH:
        raise error(f"{path}: invalid {what}: nested more than {MAX_TOML_DEPTH} tables or arrays deep")
    return data


def _read_text(path: Path, error: type[NpcrlError], what: str) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_TOML_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a path with a NUL character in it
        raise error(f"{path!r}: cannot read {what}: {exc}") from None
    if len(raw) > MAX_TOML_BYTES:
        raise error(f"{path}: invalid {what}: larger than {MAX_TOML_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text: {exc}") from exc


def _nesting_depth(data: Any, limit: int) -> int:
    """How deep ``data`` nests, counted without recursion and only up to ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in value)
    return deepest
