"""Import one of the project's scripts (``bench/``, ``scripts/``) by path, as its tests need it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, relative: str) -> ModuleType:
    """The script at ``ROOT / relative`` as module ``name`` (registered in ``sys.modules``: a script's
    dataclasses look their module up while being built)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
