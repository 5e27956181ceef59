"""The float format the trainer's transformer body runs in, on this CPU.

bfloat16 pays only where the CPU multiplies it natively (x86 AVX512-BF16 or AMX tiles): there the
trainer's passes ran 1.4-1.5x faster than float32 (docs/TRAINING.md). Without those units torch
emulates it, and the same matrix products ran some 90x slower than float32 on an AVX2 CPU
(``bench/bench_precision.py``), which turns a one-hour run into days. ``"auto"`` takes bfloat16
only where it is native; an explicit ``"bf16"`` is honoured, with a warning where it is not.
"""

from __future__ import annotations

import torch

from npcrl.train.config import PRECISIONS


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), as torch sees it.
    False where torch cannot tell (another architecture, or a torch without the probes): float32
    is never the slow choice."""
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


def precision_warning(requested: str) -> str | None:
    """The warning an explicit ``bf16`` on a CPU without bfloat16 units earns (None otherwise)."""
    if requested != "bf16" or native_bf16():
        return None
    return (
        f"model.precision = 'bf16' on a CPU without bfloat16 units ({cpu_name()}): torch emulates it and "
        "the trainer's matrix products run many times slower than in fp32 (docs/TRAINING.md); "
        "'auto' takes bf16 only where the CPU has it"
    )
