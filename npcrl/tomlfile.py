"""Reading the project's TOML files (persona cards, reward specs) with errors that name the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from npcrl.errors import NpcrlError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib


def read_toml(path: Path, error: type[NpcrlError], what: str) -> dict[str, Any]:
    """Parse ``path``; any failure raises ``error`` naming the file (``what`` says what it is)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}") from exc
