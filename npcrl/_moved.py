"""Old import paths of modules that moved into the stage packages, kept for one release.

``import npcrl.bundle`` still works and gives a module that forwards every attribute to
``npcrl.runtime.bundle``, with a ``DeprecationWarning`` that names the new path. Nothing inside
npcrl imports an old path; remove this module (and its hook in ``npcrl/__init__.py``) in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

# old module name -> the module that holds its names now
MOVED: dict[str, str] = {
    "npcrl.bundle": "npcrl.runtime.bundle",
    "npcrl.bundle_migrate": "npcrl.runtime.bundle_migrate",
    "npcrl.canary": "npcrl.agent.canary",
    "npcrl.engagement": "npcrl.reward.engagement",
    "npcrl.evaluation.cli": "npcrl.cli.eval",
    "npcrl.generation": "npcrl.runtime.generation",
    "npcrl.kvcache": "npcrl.runtime.kvcache",
    "npcrl.loop_state": "npcrl.loop.state",
    "npcrl.malloc": "npcrl.runtime.malloc",
    "npcrl.manifest_fields": "npcrl.runtime.manifest_fields",
    "npcrl.onnx_refs": "npcrl.runtime.onnx_refs",
    "npcrl.output_filter": "npcrl.agent.output_filter",
    "npcrl.persona": "npcrl.agent.persona",
    "npcrl.playlog.cli": "npcrl.cli.logs",
    "npcrl.postprocess": "npcrl.agent.postprocess",
    "npcrl.prefixstore": "npcrl.runtime.prefixstore",
    "npcrl.privacy.player_text": "npcrl.agent.player_text",
    "npcrl.promotion": "npcrl.loop.promotion",
    "npcrl.promotion_records": "npcrl.loop.promotion_records",
    "npcrl.rewards": "npcrl.reward.spec",
    "npcrl.safety": "npcrl.agent.safety",
    "npcrl.sampler": "npcrl.runtime.sampler",
    "npcrl.scheduler": "npcrl.runtime.scheduler",
    "npcrl.sim.cli": "npcrl.cli.sim",
    "npcrl.slotqueue": "npcrl.runtime.slotqueue",
    "npcrl.streaming": "npcrl.runtime.streaming",
    "npcrl.textnorm": "npcrl.agent.textnorm",
    "npcrl.tokenizer": "npcrl.runtime.tokenizer",
    "npcrl.wordmatch": "npcrl.agent.wordmatch",
}


class _ForwardingModule(types.ModuleType):
    """Stands at an old path; reads and writes go to the module at the new path."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"Moved to {new}; this name is deprecated.")
        object.__setattr__(self, "_npcrl_target", importlib.import_module(new))

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_npcrl_target"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__"):
            object.__setattr__(self, name, value)
        else:
            setattr(object.__getattribute__(self, "_npcrl_target"), name, value)

    def __dir__(self) -> list[str]:
        return dir(object.__getattribute__(self, "_npcrl_target"))


class _MovedLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (the old path goes in npcrl 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _ForwardingModule(spec.name, new)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader())


def install() -> None:
    """Let the old paths import (idempotent)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
