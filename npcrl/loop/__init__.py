"""The learning loop: rounds of simulate → train → evaluate → promote, their resumable state, and
the promotion store the game hot-swaps bundles from.

Import the modules themselves: ``npcrl.loop.run`` trains (torch) when a loop runs, while
``npcrl.loop.promotion`` is torch-free and used by games. Importing this package loads neither.

``npcrl.loop`` was once one module; its names (``from npcrl.loop import run_loop``) still import,
from the module that holds each now, with a ``DeprecationWarning``, until npcrl 0.3.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

# old name -> (the module that holds it now, its name there)
OLD_NAMES: dict[str, tuple[str, str]] = {
    "run_loop": ("npcrl.loop.run", "run_loop"),
    "RoundResult": ("npcrl.loop.round", "RoundResult"),
    "Guards": ("npcrl.loop.decision", "Guards"),
    "PROMOTE_WHEN": ("npcrl.loop.decision", "PROMOTE_WHEN"),
    "decide": ("npcrl.loop.decision", "decide"),
    "ENGAGEMENT": ("npcrl.evaluation.metric_names", "ENGAGEMENT"),
    "KL": ("npcrl.evaluation.metric_names", "KL_PER_LINE"),
    "PERPLEXITY": ("npcrl.evaluation.metric_names", "PERPLEXITY"),
    "REPETITION": ("npcrl.evaluation.metric_names", "REPETITION_RATE"),
    "WORDS": ("npcrl.evaluation.metric_names", "WORDS_PER_LINE"),
    "PAIRED_GAIN": ("npcrl.evaluation.metric_names", "PAIRED_GAIN"),
}


def __getattr__(name: str) -> Any:
    """An old name of ``npcrl.loop``, imported only when asked for (``npcrl.loop.run`` and what it needs)."""
    if name not in OLD_NAMES:
        # also how ``from npcrl.loop import promotion`` finds a submodule not imported yet
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = OLD_NAMES[name]
    value = getattr(importlib.import_module(module_name), attribute)
    if not _probed_by_import():
        warnings.warn(
            f"npcrl.loop.{name} moved to {module_name}.{attribute}; import it from there "
            "(the old path goes in npcrl 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
    return value


def _probed_by_import() -> bool:
    """Whether ``__getattr__`` was called by the import system: ``from npcrl.loop import X`` first
    checks that X exists there, then takes it; only the taking warns, once, at the importing line."""
    return sys._getframe(2).f_code.co_filename.startswith("<frozen importlib")
