"""The float format the trainer's transformer body runs in, on this CPU.

bfloat16 pays only where the CPU multiplies it natively (x86 AVX512-BF16 or AMX tiles): there the
trainer's passes ran 1.4-1.5x faster than float32 (docs/TRAINING.md). Without those units torch
emulates it, and the same matrix products ran some 90x slower than float32 on an AVX2 CPU
(``bench/bench_precision.py``), which turns a one-hour run into days. ``"auto"`` takes bfloat16
only where it is native; an explicit ``"bf16"`` is honoured, with a warning where it is not. A
run records what it resolved to and a resume keeps it, whatever the CPU it goes on on.
"""

from __future__ import annotations

import os

import torch

from npcrl.train.config import PRECISIONS
from npcrl.train.distributed import Dist

NATIVE_BF16_ENV = "NPCRL_NATIVE_BF16"
"""set to 0 (or 1): what ``native_bf16`` says whatever the CPU, so ``auto`` can reproduce an fp32 run
on a CPU with bfloat16 units (the test suite sets 0: its numbers are then the same on every CPU)"""


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), as torch sees it.
    False where torch cannot tell (another architecture, or a torch without the probes): float32
    is never the slow choice. ``NPCRL_NATIVE_BF16`` (0 or 1) overrides the probe."""
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{NATIVE_BF16_ENV} must be 0 or 1, got {forced!r}")
        return forced == "1"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cpu_name() -> str:
    """What torch calls this CPU's vector unit (``AVX2``, ``AVX512``, ...), for messages."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def resolve_precision(requested: str) -> str:
    """``fp32`` or ``bf16``: what ``model.precision`` means on this CPU (``auto``: bf16 where native)."""
    if requested not in PRECISIONS:
        raise ValueError(f"model.precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return "bf16" if native_bf16() else "fp32"
    return requested


def agreed_precision(requested: str, dist: Dist) -> str:
    """``requested`` resolved on every process's CPU: bf16 only where all of them resolve to it
    (the processes of one run must compute alike). Every process must call it."""
    resolved = dist.all_gather_objects(resolve_precision(requested))
    return "bf16" if all(p == "bf16" for p in resolved) else "fp32"


def precision_warning(requested: str, precision: str) -> str | None:
    """The warning a run earns that trains in ``precision`` bf16 on a CPU without bfloat16 units
    (None otherwise): asked for explicitly, or kept from where a resumed run started."""
    if precision != "bf16" or native_bf16():
        return None
    why = (
        "model.precision = 'bf16'"
        if requested == "bf16"
        else f"model.precision = {requested!r} resolved to bf16 where this run started, and a resumed run keeps it"
    )
    return (
        f"{why} on a CPU without bfloat16 units ({cpu_name()}): torch emulates it and "
        "the trainer's matrix products run many times slower than in fp32 (docs/TRAINING.md); "
        "'auto' takes bf16 only where the CPU has it"
        + ("" if requested == "bf16" else ", so a new run started here trains in fp32")
    )
