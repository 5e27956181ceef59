"""Incremental generation with an exported bundle on onnxruntime (no torch).

Fused graphs write keys and values in place into preallocated pool slots bound through IO
binding (``npcrl.runtime.kvcache``): no per-step KV copies. Every forward pass of a model goes through
one ``StepScheduler`` (``npcrl.runtime.scheduler``), which runs concurrent decode steps of several NPCs
as one batched pass. ``InferenceSession.run`` releases the GIL, so generation in a worker
thread leaves a game's main thread free. Generations themselves are in ``npcrl.runtime.generation``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

from npcrl.errors import GenerationError
from npcrl.runtime.bundle import Bundle, load_bundle
from npcrl.runtime.generation import (
    CancelToken,
    Generation,
    GenerationResult,
    StartFrom,
    StopReason,
    StreamChunk,
    start_cache,
)
from npcrl.runtime.kvcache import ConcatCache, FrozenCache, KVCache, KVPool, SlotCache, SlotWait
from npcrl.runtime.malloc import limit_malloc_arenas
from npcrl.runtime.prefixstore import PrefixStore
from npcrl.runtime.sampler import SamplerConfig
from npcrl.runtime.scheduler import Job, StepScheduler
from npcrl.runtime.session import (
    LOGITS_TO_KEEP,
    SessionOptions,
    check_graph_interface,
    create_session,
    default_thread_count,
    takes_logits_to_keep,
)
from npcrl.runtime.tokenizer import BundleTokenizer

__all__ = [
    "CancelToken",
    "Generation",
    "GenerationResult",
    "OnnxCausalLM",
    "SessionOptions",
    "StopReason",
    "StreamChunk",
    "default_thread_count",
]


def slot_runs(slots: Sequence[int], split_gap: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` ranges covering the sorted ``slots``: one, or with ``split_gap`` > 0 a new one
    wherever ``split_gap`` or more slots not listed lie between two listed ones."""
    runs = [[slots[0], slots[0]]]
    for slot in slots[1:]:
        if split_gap and slot - runs[-1][1] - 1 >= split_gap:
            runs.append([slot, slot])
        else:
            runs[-1][1] = slot
    return [(lo, hi) for lo, hi in runs]


class OnnxCausalLM:
    """A loaded bundle: one onnxruntime session shared by every conversation that uses it.

    ``InferenceSession.run`` is thread-safe, so several NPCs may call ``forward`` concurrently,
    each with its own ``KVCache``.
    """

    def __init__(self, bundle: Bundle | str | Path, options: SessionOptions | None = None) -> None:
        self.options = options or SessionOptions()
        if self.options.malloc_arenas is not None:
            limit_malloc_arenas(self.options.malloc_arenas)
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle, verify=self.options.verify_hashes)
        self.bundle = bundle
        manifest = bundle.manifest
        self.kv_layout = manifest.kv_cache
        self.vocab_size = manifest.vocab_size
        self.eos_token_ids = frozenset(manifest.special_tokens.eos_token_ids)
        self.max_positions = int(manifest.model.get("max_position_embeddings") or 0) or None
        self.tokenizer = BundleTokenizer.from_bundle(bundle)
        self.session = create_session(bundle.onnx_path, self.options)
        check_graph_interface(self.session, bundle)
        self._kv_dtype = np.dtype(self.kv_layout.dtype)
        self.keeps_logits = takes_logits_to_keep(self.session)
        """the graph can skip the LM head for positions whose logits nobody reads (a prefill's)"""
        self.in_place_kv = manifest.model.get("graph") == "fused"
        """fused (GroupQueryAttention) graphs accept one buffer as past and present: KV pool slots"""
        self.scheduler = StepScheduler(
            self._run_decode_batch if self.in_place_kv and self.options.batch_decode else None,
            gather_s=self.options.gather_ms / 1000,
        )
        self.pool: KVPool | None = None
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}  # pool rows -> their binding
        if self.in_place_kv:
            capacity = self.options.kv_capacity or min(self.max_positions or 2048, 2048)
            self.pool = KVPool(
                self.kv_layout,
                self.options.kv_slots,
                capacity,
                exclusive=self.scheduler.call,
                queue_limit=self.options.kv_queue_limit,
            )
        self.max_tokens = self.pool.max_tokens if self.pool is not None else self.max_positions
        """most tokens one sequence may hold (positions, and the pool's capacity)"""
        if self.pool is not None and self.max_positions is not None:
            self.max_tokens = min(self.pool.max_tokens, self.max_positions)
        self.prefixes = PrefixStore(int(self.options.prefix_cache_mb * 2**20), self.kv_layout.bytes_per_token())
        self.sampled_tokens = 0
        """tokens sampled by every generation on this model (a statistic for benchmarks)"""

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    def new_cache(self) -> KVCache:
        """An empty cache (a pool slot for fused graphs; released when dropped)."""
        if self.pool is not None:
            return self.pool.acquire()
        layout = self.kv_layout
        empty = np.zeros((1, layout.num_kv_heads, 0, layout.head_dim), dtype=self._kv_dtype)
        return ConcatCache([ort.OrtValue.ortvalue_from_numpy(empty) for _ in layout.past_names()], [])

    def forward(self, token_ids: Sequence[int], cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Feed ``token_ids`` after what ``cache`` holds; returns the last position's logits (V,)
        or, with ``all_logits``, every fed position's logits (T, V). ``cache`` is updated in place."""
        if len(token_ids) == 0:
            raise GenerationError("forward() needs at least one token")
        if isinstance(cache, FrozenCache):
            raise GenerationError("a FrozenCache is read-only: fork() it to continue from it")
        if not cache.alive:
            raise GenerationError("this KV cache was evicted or released; start again from a prefix")
        total = len(cache) + len(token_ids)
        if self.max_tokens is not None and total > self.max_tokens:
            raise GenerationError(f"sequence of {total} tokens exceeds the {self.max_tokens} this model can hold")
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise GenerationError(f"token id out of range [0, {self.vocab_size}): {int(ids.min())}..{int(ids.max())}")
        if not isinstance(cache, SlotCache):
            assert isinstance(cache, ConcatCache)
            logits = self.scheduler.call(lambda: self._run_concat(ids, cache, all_logits))
            cache.last_logits = logits[-1].copy()
            return logits if all_logits else logits[-1]
        assert self.pool is not None
        self.pool.hold(cache)  # at once inside a running generation; else in line for a slot
        try:
            parts = []
            start = 0
            while start < len(ids):
                # Alone, prefill in one pass (fastest); beside other generating sequences, in chunks
                # so that their decode steps go on between them.
                others = self.scheduler.active_sequences > 1
                size = self.options.prefill_chunk if others and self.options.prefill_chunk > 0 else len(ids)
                if len(ids) - start - size == 1:
                    # Never leave a one-token tail: quantised (MatMulNBits) graphs take another kernel
                    # for one row, and the prompt's last logits would depend on the chunking.
                    size += 1
                chunk = ids[start : start + size]
                start += len(chunk)
                want_all = all_logits or start == len(ids)  # this chunk's logits are returned
                job = Job(
                    partial(self._run_slot, chunk, cache, all_logits),
                    batch_key=self.pool if len(chunk) == 1 else None,
                    payload=(cache, int(chunk[0])),
                )
                logits = self.scheduler.submit(job)
                if want_all:
                    parts.append(logits)
        finally:
            self.pool.unpin(cache)
        logits = parts[0] if len(parts) == 1 else np.concatenate(parts)
        cache.last_logits = logits[-1].copy()
        return logits if all_logits else logits[-1]

    def _run(self, binding: ort.IOBinding) -> None:
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise GenerationError(f"onnxruntime failed on a forward pass: {exc}") from exc

    def _bind_rows(self, binding: ort.IOBinding, rows: list[np.ndarray]) -> None:
        """Bind pool rows as both past input and present output: the graph writes in place."""
        layout = self.kv_layout
        for past, present, row in zip(layout.past_names(), layout.present_names(), rows, strict=True):
            shape, ptr = list(row.shape), row.ctypes.data
            binding.bind_input(past, "cpu", 0, self._kv_dtype, shape, ptr)
            binding.bind_output(present, "cpu", 0, self._kv_dtype, shape, ptr)

    def _run_rows(self, lo: int, hi: int, ids: np.ndarray, mask: np.ndarray, all_logits: bool = True) -> np.ndarray:
        """A pass over pool rows ``lo..hi``; returns logits ``(rows, T, V)``, or only the last
        position's ``(rows, 1, V)`` without ``all_logits`` where the graph can skip the rest. The
        binding of those rows is made once and kept (the KV pointers never move), so a pass only
        rebinds its ids, mask and a fresh logits buffer: binding 60 KV tensors costs about a
        millisecond."""
        binding = self._bindings.get((lo, hi))
        if binding is None:
            assert self.pool is not None
            binding = self.session.io_binding()
            self._bind_rows(binding, self.pool.rows(lo, hi))
            self._bindings[(lo, hi)] = binding
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        kept = ids.shape[1]
        if self.keeps_logits:
            kept = kept if all_logits else 1
            binding.bind_cpu_input(LOGITS_TO_KEEP, np.asarray([kept], dtype=np.int64))
        logits = np.empty((ids.shape[0], kept, self.vocab_size), dtype=np.float32)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self._run(binding)  # writes into the bound buffers
        return logits

    def _run_slot(self, ids: np.ndarray, cache: SlotCache, all_logits: bool) -> np.ndarray:
        """One sequence's pass in its pool slot (runs inside the scheduler)."""
        assert cache.slot is not None
        mask = np.ones((1, len(cache) + len(ids)), dtype=np.int64)
        logits = self._run_rows(cache.slot, cache.slot, ids[None, :], mask, all_logits)[0]
        cache.token_ids.extend(int(t) for t in ids)
        return logits if all_logits else logits[-1:]

    def _run_decode_batch(self, jobs: list[Job]) -> list[np.ndarray]:
        """One-token steps of several slots as passes over the pool rows between them (one pass,
        or one per run of slots that ``SessionOptions.batch_split_gap`` idle rows do not separate);
        rows in between that are not stepping get a dummy token written at their length, which only
        touches a position past the tokens they hold (runs inside the scheduler)."""
        steps: list[tuple[SlotCache, int]] = [job.payload for job in jobs]
        tokens: dict[int, int] = {}
        for cache, token in steps:
            assert cache.slot is not None  # a stepping cache holds its slot, pinned
            tokens[cache.slot] = token
        logits: dict[int, np.ndarray] = {}
        for lo, hi in slot_runs(sorted(tokens), self.options.batch_split_gap):
            logits.update(self._step_rows(lo, hi, tokens))
        for cache, token in steps:
            cache.token_ids.append(token)
        return [logits[slot] for slot in tokens]  # one slot per job, in the jobs' order

    def _step_rows(self, lo: int, hi: int, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """One batched pass over pool rows ``lo..hi``: each stepping slot's (1, V) logits."""
        assert self.pool is not None
        lengths = self.pool.lengths(lo, hi)
        ids = np.zeros((hi - lo + 1, 1), dtype=np.int64)
        stepping = [slot for slot in range(lo, hi + 1) if slot in tokens]
        for slot in stepping:
            ids[slot - lo, 0] = tokens[slot]
        mask = (np.arange(int(lengths.max()) + 1)[None, :] <= lengths[:, None]).astype(np.int64)
        logits = self._run_rows(lo, hi, ids, mask)  # (rows, 1, V)
        return {slot: logits[slot - lo] for slot in stepping}

    def _run_concat(self, ids: np.ndarray, cache: ConcatCache, all_logits: bool) -> np.ndarray:
        """Traced graphs: past in, new present tensors out."""
        past_len = len(cache)
        total = past_len + len(ids)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids[None, :])
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        binding.bind_output("logits")
        if self.kv_layout.position_ids:
            binding.bind_cpu_input("position_ids", np.arange(past_len, total, dtype=np.int64)[None, :])
        for name, value in zip(self.kv_layout.past_names(), cache.values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in self.kv_layout.present_names():
            binding.bind_output(name)
        self._run(binding)
        outputs = binding.get_outputs()
        cache.values = list(outputs[1:])
        cache.token_ids.extend(int(t) for t in ids)
        logits = outputs[0].numpy()[0]  # (T, V)
        return logits if all_logits else logits[-1:]

    def prefill(self, token_ids: Sequence[int]) -> KVCache:
        """A cache holding ``token_ids`` (e.g. a system prompt), to seed or continue generations."""
        if self.pool is None:
            cache = self.new_cache()
            self.forward(token_ids, cache)
            return cache
        slot_cache = self.pool.acquire(pin=True)  # pinned from the start: not evicted before its pass
        try:
            self.forward(token_ids, slot_cache)
        finally:
            self.pool.unpin(slot_cache)
        return slot_cache

    def extend(
        self, token_ids: Sequence[int], cache: KVCache | None = None, prefix_cache: KVCache | None = None
    ) -> KVCache:
        """A cache holding ``token_ids``: ``cache`` rewound to what it shares with them, else a
        fork of ``prefix_cache`` (a prefix of them), else a new one, then prefilled with the rest
        (``cache`` is released if not used). Its slot stays pinned throughout, so it cannot be
        evicted between being taken and filled; while every slot is generating it waits in line."""
        ids = list(token_ids)
        if prefix_cache is not None and prefix_cache.token_ids != ids[: len(prefix_cache)]:
            raise GenerationError("prefix_cache does not hold a prefix of the tokens to extend to")
        held = start_cache(self, ids, cache, prefix_cache, SlotWait(), need_logits=False)
        try:
            if len(held) < len(ids):
                self.forward(ids[len(held) :], held)
        finally:
            if isinstance(held, SlotCache):
                held.pool.unpin(held)
        return held

    def prefix_cache(self, token_ids: Sequence[int]) -> KVCache:
        """The read-only cache of ``token_ids``, computed once per model and kept in an LRU store
        (``SessionOptions.prefix_cache_mb``): every NPC with the same persona shares it."""

        def compute() -> KVCache:
            if self.pool is None:
                return self.prefill(token_ids)
            cache = self.pool.acquire(pin=True)
            try:
                self.forward(token_ids, cache)
                return cache.freeze()
            finally:
                self.pool.release(cache)  # freed at the unpin below
                self.pool.unpin(cache)

        return self.prefixes.get(token_ids, compute)

    def generate(
        self,
        prompt_ids: Sequence[int],
        config: SamplerConfig | None = None,
        cancel: CancelToken | None = None,
        ignore_eos: bool = False,
        prefix_cache: KVCache | None = None,
        cache: KVCache | None = None,
        started_at: float | None = None,
    ) -> Generation:
        """Start generating after ``prompt_ids``; iterate the result for streamed text.

        ``prefix_cache`` holds a prefix of ``prompt_ids`` already computed (it is forked, not
        changed), so only the rest is prefilled. ``cache`` (e.g. a conversation's so far) is
        continued in place instead, rewound to the longest prefix it shares with the prompt, when
        that covers more of the prompt than ``prefix_cache``; the cache used is
        ``Generation.cache``. ``ignore_eos`` keeps going past EOS (benchmarks that need a fixed
        token count). ``started_at`` (a ``time.perf_counter()`` value) is when the request began, if
        before this call: time to first token counts from there. While every KV slot is generating,
        the generation waits in line for one (``GenerationResult.queue_s``)."""
        return Generation(
            self,
            list(prompt_ids),
            config or SamplerConfig(),
            cancel or CancelToken(),
            ignore_eos,
            StartFrom(prefix_cache, cache, started_at),
        )

    def generate_text(self, prompt_ids: Sequence[int], config: SamplerConfig | None = None) -> GenerationResult:
        """Blocking form of ``generate``."""
        return self.generate(prompt_ids, config).run()
