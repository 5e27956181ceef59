"""What the game may import: npcrl only through its public face (``from npcrl import X``), and
pygame only in the view, so the rules and services run and are tested headless."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

GAME_DIR = Path(__file__).resolve().parents[2] / "game_demo"
HEADLESS_PACKAGES = ("rules", "services")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path``, at module level or inside a function."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def sources(folder: Path) -> list[Path]:
    found = sorted(folder.rglob("*.py"))
    assert found, f"no sources under {folder}"
    return found


def test_the_game_imports_npcrl_only_through_its_public_names():
    internal = [
        f"{path.relative_to(GAME_DIR.parent)}:{line} imports {module}"
        for path in sources(GAME_DIR)
        for line, module in imported_modules(path)
        if module.startswith("npcrl.")
    ]
    assert not internal, "use `from npcrl import X`:\n" + "\n".join(internal)


def test_rules_and_services_never_import_pygame_or_the_view():
    drawn = [
        f"{path.relative_to(GAME_DIR.parent)}:{line} imports {module}"
        for package in HEADLESS_PACKAGES
        for path in sources(GAME_DIR / package)
        for line, module in imported_modules(path)
        if module.split(".")[0] == "pygame" or module.startswith("game_demo.view")
    ]
    assert not drawn, "\n".join(drawn)
