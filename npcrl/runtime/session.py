"""The onnxruntime session of a bundle: how it is set up (``SessionOptions``), and the check that
its graph takes and returns what the bundle's manifest says."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from npcrl.errors import BundleError
from npcrl.runtime.bundle import Bundle
from npcrl.validate import check_bool, check_number, check_optional

LOGITS_TO_KEEP = "logits_to_keep"
"""optional graph input (int64, shape [1]): the LM head runs for only the last k fed positions
(``exporters/logits_to_keep.py``); graphs exported before it lack it and return every position"""


def takes_logits_to_keep(session: ort.InferenceSession) -> bool:
    """Whether the session's graph declares the optional ``LOGITS_TO_KEEP`` input."""
    return any(i.name == LOGITS_TO_KEEP for i in session.get_inputs())


def default_thread_count() -> int:
    """Threads for one session: the cores this process may use, at most 4 (decode is bandwidth bound)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


@dataclass
class SessionOptions:
    """How the onnxruntime session is set up."""

    intra_op_threads: int | None = None
    """threads one forward pass may use (None: ``default_thread_count()``)"""
    allow_spinning: bool = True
    """let idle ORT threads busy-wait: faster decode, but burns a core a game's main loop may want"""
    verify_hashes: bool = True
    """re-hash bundle files on load (refuses tampered bundles; about 1 s per 500 MB)"""
    kv_slots: int = 8
    """fused graphs: sequences whose KV state is kept at once (conversations); LRU-evicted beyond"""
    kv_capacity: int | None = None
    """fused graphs: positions per slot (None: the model's positions, at most 2048)"""
    prefix_cache_mb: float = 256.0
    """memory for read-only prefix caches (persona system turns), LRU-evicted beyond"""
    batch_decode: bool = True
    """run concurrent one-token decode steps of several sequences as one batched pass"""
    gather_ms: float = 3.0
    """how long a pass waits for the other generating sequences' steps to join its batch"""
    batch_split_gap: int = 0
    """fused graphs: a batched pass runs the contiguous pool rows from its lowest stepping slot to
    its highest, the idle ones between included; with N > 0 it is split into separate passes
    wherever N or more idle rows lie between two stepping slots (an idle row costs about what a
    stepping one does; a pass has a fixed cost of about one row). 0: always one pass; splitting at 2
    was measured within noise of it on two cores (docs/BENCHMARKS.md)"""
    prefill_chunk: int = 32
    """while other sequences generate, prefill in chunks of this many tokens so their steps interleave"""
    kv_queue_limit: int = 1024
    """fused graphs: most sequences that may wait at once for a KV slot while all ``kv_slots`` are
    generating (they queue first come, first served); one more is refused with a GenerationError"""
    malloc_arenas: int | None = 2
    """glibc only, process-wide: cap malloc arenas so that memory freed by NPC turns' worker
    threads is reused instead of creeping up (``npcrl.runtime.malloc``); None leaves glibc's default"""

    def __post_init__(self) -> None:
        # ConfigValueError is a ValueError naming the field and value; upper bounds are far above use.
        check_optional("intra_op_threads", self.intra_op_threads, 0, 1024, integer=True)
        for flag in ("allow_spinning", "verify_hashes", "batch_decode"):
            check_bool(flag, getattr(self, flag))
        check_number("kv_slots", self.kv_slots, 1, 4096, integer=True)
        check_optional("kv_capacity", self.kv_capacity, 1, 1 << 20, integer=True)
        check_number("prefix_cache_mb", self.prefix_cache_mb, 0.0, float(1 << 20))
        check_number("gather_ms", self.gather_ms, 0.0, 10_000.0)
        check_number("prefill_chunk", self.prefill_chunk, 0, 1 << 20, integer=True)
        check_number("batch_split_gap", self.batch_split_gap, 0, 4096, integer=True)
        check_number("kv_queue_limit", self.kv_queue_limit, 0, 1 << 20, integer=True)
        check_optional("malloc_arenas", self.malloc_arenas, 1, 1024, integer=True)


def create_session(path: Path, options: SessionOptions) -> ort.InferenceSession:
    """A CPU session for the graph at ``path``: ``intra_op_threads`` threads for one pass, none
    across passes (the scheduler runs one at a time), spinning as ``allow_spinning`` says."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads or default_thread_count()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BundleError(f"{path}: onnxruntime cannot load this graph: {exc}") from exc


def check_graph_interface(session: ort.InferenceSession, bundle: Bundle) -> None:
    """The graph must take and return exactly what the manifest says: the tensor names of its KV
    layout, 2 past inputs per layer, and wherever the graph declares a size statically, the KV
    heads, head size, KV dtype and vocabulary (a wrong number would size KV buffers wrongly or
    let sampling index past the logits)."""
    where = f"{bundle.onnx_path}: graph interface does not match the manifest"
    layout = bundle.manifest.kv_cache
    vocab_size = bundle.manifest.vocab_size
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    past_like = len(set(inputs) - {"input_ids", "attention_mask", "position_ids", LOGITS_TO_KEEP})
    if past_like != 2 * layout.num_layers:
        raise BundleError(
            f"{where}: the graph has {past_like} past key/value inputs, but field 'kv_cache.num_layers' = "
            f"{layout.num_layers} means {2 * layout.num_layers}"
        )
    want_in = {"input_ids", "attention_mask", *layout.past_names()}
    if layout.position_ids:
        want_in.add("position_ids")
    if LOGITS_TO_KEEP in inputs:
        want_in.add(LOGITS_TO_KEEP)
    want_out = {"logits", *layout.present_names()}
    if set(inputs) != want_in or not want_out <= set(outputs):
        raise BundleError(
            f"{where}'s kv_cache (missing inputs {sorted(want_in - set(inputs))}, unexpected inputs "
            f"{sorted(set(inputs) - want_in)}, missing outputs {sorted(want_out - set(outputs))})"
        )
    kv_type = {"float32": "tensor(float)", "float16": "tensor(float16)"}[layout.dtype]
    sizes = {1: ("kv_cache.num_kv_heads", layout.num_kv_heads), 3: ("kv_cache.head_dim", layout.head_dim)}
    for arg in [*(inputs[n] for n in layout.past_names()), *(outputs[n] for n in layout.present_names())]:
        if arg.type != kv_type:
            raise BundleError(f"{where}: {arg.name} is {arg.type}, but field 'kv_cache.dtype' = {layout.dtype!r}")
        if arg.shape and len(arg.shape) != 4:
            raise BundleError(f"{where}: {arg.name} has {len(arg.shape)} axes, expected 4 {layout.axes}")
        for axis, (name, value) in sizes.items():
            if arg.shape and isinstance(arg.shape[axis], int) and arg.shape[axis] != value:
                raise BundleError(
                    f"{where}: {arg.name} has {arg.shape[axis]} on axis {axis}, but field '{name}' = {value}"
                )
    logits = outputs["logits"].shape
    if logits and isinstance(logits[-1], int) and logits[-1] != vocab_size:
        raise BundleError(
            f"{where}: logits have {logits[-1]} entries per position, but field 'vocab_size' = {vocab_size}"
        )
