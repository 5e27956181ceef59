"""The machine a piece of work ran on, as far as its numbers go.

The same seeds on the same bundle play other lines on another CPU: onnxruntime and torch pick
their kernels by the vector units they find (8-bit products with VNNI or without, bfloat16 in
hardware or emulated), the kernels round differently, and a near-tie now and then picks another
token (docs/RESULTS.md, "Bases differ between machines"). Two evaluations compared pairwise must
therefore run on the same kind of machine, or the paired gain mixes the bundles' difference with
the machines'. A loop round records each stage's machine (``npcrl.loop.state.RoundStages``) and
says when a comparison's two sides ran on different ones. Torch-free and cheap: it reads
``/proc/cpuinfo`` (Linux) and a package's version, nothing else.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

NUMERIC_UNITS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
"""the x86 units whose presence changes which kernels onnxruntime or torch run (``/proc/cpuinfo`` names)"""

_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_fields(path: Path) -> dict[str, str]:
    """The first processor's fields of a ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: they are alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def this_machine(cpuinfo: Path = _CPUINFO) -> dict[str, Any]:
    """This machine as a JSON record: the CPU's name, the units of ``NUMERIC_UNITS`` it has, its
    architecture, cores, and the onnxruntime version (its kernels change between versions too)."""
    fields = _cpuinfo_fields(cpuinfo)
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or "unknown",
        "architecture": platform.machine(),
        "units": [unit for unit in NUMERIC_UNITS if unit in flags],
        "cores": os.cpu_count(),
        "onnxruntime": _version("onnxruntime"),
    }


def numerics(record: dict[str, Any]) -> tuple[Any, ...]:
    """What of a machine record decides the numbers a model computes there (not its name or cores)."""
    return (record.get("architecture"), tuple(record.get("units") or ()), record.get("onnxruntime"))


def describe(record: dict[str, Any]) -> str:
    """A machine record in a few words, for messages."""
    units = " ".join(record.get("units") or ()) or "no listed vector units"
    return f"{record.get('cpu', 'unknown')} ({record.get('architecture')}, {units}; onnxruntime {record.get('onnxruntime')})"


def mixed_machines(sides: dict[str, list[dict[str, Any]]]) -> str | None:
    """The sentence a comparison earns whose sides (name -> the machines it ran on) did not all run
    on one kind of machine; None when they did, or when a side's machines are unknown (recorded
    before machines were)."""
    if any(not machines for machines in sides.values()):
        return None
    kinds = {numerics(machine) for machines in sides.values() for machine in machines}
    if len(kinds) <= 1:
        return None
    ran = "; ".join(f"{name} on {', '.join(describe(m) for m in machines)}" for name, machines in sides.items())
    return (
        f"not all on one kind of machine ({ran}): kernels round differently there, so the paired "
        "gain mixes the bundles' difference with the machines'"
    )


def merged(machines: list[dict[str, Any]], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """``machines`` with ``machine`` added unless an equal record is there (a stage resumed elsewhere)."""
    return machines if machine in machines else [*machines, machine]
