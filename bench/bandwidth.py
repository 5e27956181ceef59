"""The physical limit of decoding: bytes that must be read per token, and the machine's bandwidth.

A decode step multiplies one token's activations by every weight matrix, so it reads all the
weights once (embedding tables excepted: a Gather reads one row), plus the KV cache of the
context for attention. On a CPU with a few cores that read, not the arithmetic, bounds tokens/s.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np


def graph_weight_bytes(onnx_path: Path) -> dict[str, int]:
    """``{"weights": bytes a decode step reads, "gathered_tables": bytes of Gather-only tables}``."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    gathered: set[str] = set()
    used_elsewhere: set[str] = set()
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if node.op_type in ("Gather", "GatherBlockQuantized") and i == 0:
                gathered.add(name)
            else:
                used_elsewhere.add(name)
    weights = tables = 0
    for init in model.graph.initializer:
        size = len(init.raw_data)
        for entry in init.external_data:
            if entry.key == "length":
                size = int(entry.value)
        if size == 0 and not init.external_data:  # typed fields instead of raw_data
            size = onnx.numpy_helper.to_array(init).nbytes
        if init.name in gathered and init.name not in used_elsewhere:
            tables += size
            rows = init.dims[0] if init.dims else 1
            weights += size // max(1, rows)  # one row per token
        else:
            weights += size
    return {"weights": weights, "gathered_tables": tables}


def memory_bandwidth_gbs(megabytes: int = 256, repeats: int = 5, threads: int | None = None) -> float:
    """Read bandwidth in GB/s: the best of ``repeats`` sums over an array far larger than the
    caches, split over ``threads`` (default: every core, as a decode pass uses them; numpy
    releases the GIL while it reduces). One core alone reaches only part of it."""
    data = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(data, threads or os.cpu_count() or 1)
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=part.sum) for part in parts]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9
