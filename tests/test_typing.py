"""The package type-checks: npcrl ships a py.typed marker, so its annotations are a promise to
every game that runs mypy over its own code. The exporters and the demo are checked with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean_on_the_package_the_exporters_and_the_demo() -> None:
    pytest.importorskip("mypy", reason="mypy comes with the dev extra")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "npcrl", "exporters", "game_demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard: a cold check of the whole tree takes about a minute
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_declares_itself_typed() -> None:
    assert (ROOT / "npcrl" / "py.typed").is_file()
