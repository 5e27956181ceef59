"""Incremental generation with an exported bundle on onnxruntime (no torch).

Fused graphs write keys and values in place into preallocated pool slots bound through IO
binding (``npcrl.kvcache``): no per-step KV copies. Every forward pass of a model goes through
one ``StepScheduler`` (``npcrl.scheduler``), which runs concurrent decode steps of several NPCs
as one batched pass. ``InferenceSession.run`` releases the GIL, so generation in a worker
thread leaves a game's main thread free.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from npcrl.bundle import Bundle, load_bundle
from npcrl.errors import BundleError, GenerationError
from npcrl.kvcache import ConcatCache, FrozenCache, KVCache, KVPool, PrefixStore, SlotCache, common_prefix_length
from npcrl.sampler import SampledToken, Sampler, SamplerConfig
from npcrl.scheduler import Job, StepScheduler
from npcrl.streaming import IncrementalDecoder, StopStringMatcher
from npcrl.tokenizer import BundleTokenizer

StopReason = Literal["eos", "stop_string", "max_new_tokens", "cancelled", "context_full"]


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
    prefill_chunk: int = 32
    """while other sequences generate, prefill in chunks of this many tokens so their steps interleave"""


class CancelToken:
    """Set from any thread to stop a generation before its next token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class OnnxCausalLM:
    """A loaded bundle: one onnxruntime session shared by every conversation that uses it.

    ``InferenceSession.run`` is thread-safe, so several NPCs may call ``forward`` concurrently,
    each with its own ``KVCache``.
    """

    def __init__(self, bundle: Bundle | str | Path, options: SessionOptions | None = None) -> None:
        self.options = options or SessionOptions()
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle, verify=self.options.verify_hashes)
        self.bundle = bundle
        manifest = bundle.manifest
        self.kv_layout = manifest.kv_cache
        self.vocab_size = manifest.vocab_size
        self.eos_token_ids = frozenset(manifest.special_tokens.eos_token_ids)
        self.max_positions = int(manifest.model.get("max_position_embeddings") or 0) or None
        special = manifest.special_tokens
        self.tokenizer = BundleTokenizer.from_file(
            bundle.tokenizer_path,
            manifest.chat_template,
            special.special_token_strings,
            special.special_token_ids,
            bos_token_id=special.bos_token_id,
            eos_token_id=special.eos_token_ids[0] if special.eos_token_ids else None,
        )
        self.session = self._create_session(bundle.onnx_path)
        self._check_graph_interface()
        self._kv_dtype = np.dtype(self.kv_layout.dtype)
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
            self.pool = KVPool(self.kv_layout, self.options.kv_slots, capacity, exclusive=self.scheduler.call)
        self.max_tokens = self.pool.max_tokens if self.pool is not None else self.max_positions
        """most tokens one sequence may hold (positions, and the pool's capacity)"""
        if self.pool is not None and self.max_positions is not None:
            self.max_tokens = min(self.pool.max_tokens, self.max_positions)
        self.prefixes = PrefixStore(int(self.options.prefix_cache_mb * 2**20), self.kv_layout.bytes_per_token())
        self.sampled_tokens = 0
        """tokens sampled by every generation on this model (a statistic for benchmarks)"""

    def _create_session(self, path: Path) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads or default_thread_count()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.allow_spinning else "0")
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: onnxruntime cannot load this graph: {exc}") from exc

    def _check_graph_interface(self) -> None:
        """The graph must take and return exactly what the manifest's KV layout says."""
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        want_in = {"input_ids", "attention_mask", *self.kv_layout.past_names()}
        if self.kv_layout.position_ids:
            want_in.add("position_ids")
        want_out = {"logits", *self.kv_layout.present_names()}
        if inputs != want_in or not want_out <= outputs:
            raise BundleError(
                f"{self.bundle.onnx_path}: graph interface does not match the manifest's kv_cache "
                f"(missing inputs {sorted(want_in - inputs)}, unexpected inputs {sorted(inputs - want_in)}, "
                f"missing outputs {sorted(want_out - outputs)})"
            )

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
        self.pool.pin(cache)
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
                want_all = all_logits or start == len(ids)
                job = Job(
                    lambda chunk=chunk, want_all=want_all: self._run_slot(chunk, cache, want_all),
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

    def _run_rows(self, lo: int, hi: int, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A pass over pool rows ``lo..hi``; returns logits ``(rows, T, V)``. The binding of those
        rows is made once and kept (the KV pointers never move), so a pass only rebinds its ids,
        mask and a fresh logits buffer: binding 60 KV tensors costs about a millisecond."""
        binding = self._bindings.get((lo, hi))
        if binding is None:
            assert self.pool is not None
            binding = self.session.io_binding()
            self._bind_rows(binding, self.pool.rows(lo, hi))
            self._bindings[(lo, hi)] = binding
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        logits = np.empty((ids.shape[0], ids.shape[1], self.vocab_size), dtype=np.float32)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self._run(binding)  # writes into the bound buffers
        return logits

    def _run_slot(self, ids: np.ndarray, cache: SlotCache, all_logits: bool) -> np.ndarray:
        """One sequence's pass in its pool slot (runs inside the scheduler)."""
        assert cache.slot is not None
        mask = np.ones((1, len(cache) + len(ids)), dtype=np.int64)
        logits = self._run_rows(cache.slot, cache.slot, ids[None, :], mask)[0]
        cache.token_ids.extend(int(t) for t in ids)
        return logits if all_logits else logits[-1:]

    def _run_decode_batch(self, jobs: list[Job]) -> list[np.ndarray]:
        """One-token steps of several slots as one pass over the pool rows between them; rows
        in between that are not stepping get a dummy token written at their length, which only
        touches a position past the tokens they hold (runs inside the scheduler)."""
        assert self.pool is not None
        steps: list[tuple[SlotCache, int]] = [job.payload for job in jobs]
        slots = [cache.slot for cache, _ in steps]
        assert all(slot is not None for slot in slots)
        lo, hi = min(slots), max(slots)  # type: ignore[type-var]
        lengths = self.pool.lengths(lo, hi)
        ids = np.zeros((hi - lo + 1, 1), dtype=np.int64)
        for (_, token), slot in zip(steps, slots, strict=True):
            ids[slot - lo, 0] = token
        mask = (np.arange(int(lengths.max()) + 1)[None, :] <= lengths[:, None]).astype(np.int64)
        logits = self._run_rows(lo, hi, ids, mask)  # (rows, 1, V)
        out = []
        for (cache, token), slot in zip(steps, slots, strict=True):
            cache.token_ids.append(token)
            out.append(logits[slot - lo])
        return out

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
        cache = self.new_cache()
        self.forward(token_ids, cache)
        return cache

    def prefix_cache(self, token_ids: Sequence[int]) -> KVCache:
        """The read-only cache of ``token_ids``, computed once per model and kept in an LRU store
        (``SessionOptions.prefix_cache_mb``): every NPC with the same persona shares it."""

        def compute() -> KVCache:
            cache = self.prefill(token_ids)
            if isinstance(cache, SlotCache):
                frozen = cache.freeze()
                cache.release()
                return frozen
            return cache

        return self.prefixes.get(token_ids, compute)

    def generate(
        self,
        prompt_ids: Sequence[int],
        config: SamplerConfig | None = None,
        cancel: CancelToken | None = None,
        ignore_eos: bool = False,
        prefix_cache: KVCache | None = None,
        cache: KVCache | None = None,
    ) -> Generation:
        """Start generating after ``prompt_ids``; iterate the result for streamed text.

        ``prefix_cache`` holds a prefix of ``prompt_ids`` already computed (it is forked, not
        changed), so only the rest is prefilled. ``cache`` (e.g. a conversation's so far) is
        continued in place instead, rewound to the longest prefix it shares with the prompt, when
        that covers more of the prompt than ``prefix_cache``; the cache used is
        ``Generation.cache``. ``ignore_eos`` keeps going past EOS (benchmarks that need a fixed
        token count)."""
        return Generation(
            self, list(prompt_ids), config or SamplerConfig(), cancel or CancelToken(), ignore_eos, prefix_cache, cache
        )

    def generate_text(self, prompt_ids: Sequence[int], config: SamplerConfig | None = None) -> GenerationResult:
        """Blocking form of ``generate``."""
        return self.generate(prompt_ids, config).run()


@dataclass
class StreamChunk:
    """Text made final by one sampled token (may be empty while bytes are pending); the last
    chunk of a generation may carry held-back text and no token."""

    text: str
    token: SampledToken | None


@dataclass
class GenerationResult:
    """What a finished generation produced: exact ids and both log-probs per token for the logs."""

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    """log-prob of each token under the distribution it was drawn from (behaviour policy)"""
    full_logprobs: list[float]
    """log-prob under the temperature-scaled full softmax of the model's logits"""
    text: str
    stop_reason: StopReason
    time_to_first_token_s: float
    total_s: float
    sampler: dict[str, object] = field(default_factory=dict)
    reused_tokens: int = 0
    """prompt tokens whose KV state came from a cache (only the rest was prefilled)"""

    @property
    def decode_tokens_per_s(self) -> float:
        decode_time = self.total_s - self.time_to_first_token_s
        return (len(self.token_ids) - 1) / decode_time if len(self.token_ids) > 1 and decode_time > 0 else 0.0


class Generation:
    """An in-progress generation: iterate for ``StreamChunk``s; ``result`` once finished.

    Not thread-safe to iterate from two threads; ``cancel()`` may be called from any thread.
    """

    def __init__(
        self,
        model: OnnxCausalLM,
        prompt_ids: list[int],
        config: SamplerConfig,
        cancel: CancelToken,
        ignore_eos: bool = False,
        prefix_cache: KVCache | None = None,
        cache: KVCache | None = None,
    ):
        if not prompt_ids:
            raise GenerationError("the prompt is empty; at least one token is needed")
        if prefix_cache is not None and (
            len(prefix_cache) >= len(prompt_ids) or prompt_ids[: len(prefix_cache)] != prefix_cache.token_ids
        ):
            raise GenerationError("prefix_cache does not hold a proper prefix of the prompt")
        self.prefix_cache = prefix_cache
        self.cache: KVCache | None = cache
        """the cache this generation runs in: the prompt, then every sampled token but the last"""
        self.reused_tokens = 0
        """prompt tokens that came from a cache rather than a prefill"""
        self.model = model
        self.prompt_ids = prompt_ids
        self.config = config
        self.cancel_token = cancel
        self.ignore_eos = ignore_eos
        self.result: GenerationResult | None = None
        self._iterator = self._run()

    def _start_cache(self) -> KVCache:
        """The given cache rewound to what it shares with the prompt, a fork of the prefix cache,
        or a new cache: whichever leaves the least to prefill."""
        model, prompt = self.model, self.prompt_ids
        own = self.cache
        shared = 0
        if own is not None and own.alive:
            shared = common_prefix_length(own.token_ids, prompt)
            if not (shared == len(prompt) == len(own) and own.last_logits is not None):
                shared = min(shared, len(prompt) - 1)  # at least one token to feed for logits
        prefix = len(self.prefix_cache) if self.prefix_cache is not None else 0
        if own is not None and own.alive and shared >= prefix and shared > 0:
            own.truncate(shared)
            return own
        if own is not None:
            own.release()
        if self.prefix_cache is not None and self.prefix_cache.alive:
            return self.prefix_cache.fork()
        return model.new_cache()

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def __iter__(self) -> Iterator[StreamChunk]:
        return self._iterator

    def run(self) -> GenerationResult:
        """Drive the generation to its end and return the result."""
        for _ in self._iterator:
            pass
        assert self.result is not None
        return self.result

    def _run(self) -> Iterator[StreamChunk]:
        model, config = self.model, self.config
        sampler = Sampler(config)
        decoder = IncrementalDecoder(model.tokenizer.tokenizer, skip_special_tokens=True)
        stops = StopStringMatcher(config.stop_strings)
        start = time.perf_counter()  # time to first token includes seeding the cache
        cache = self.cache = self._start_cache()
        self.reused_tokens = len(cache)
        pool = model.pool if isinstance(cache, SlotCache) else None
        if pool is not None:
            pool.pin(cache)  # type: ignore[arg-type]
        model.scheduler.begin_sequence()
        try:
            yield from self._loop(cache, sampler, decoder, stops, start)
        finally:
            model.scheduler.end_sequence()
            if pool is not None:
                pool.unpin(cache)  # type: ignore[arg-type]

    def _loop(
        self, cache: KVCache, sampler: Sampler, decoder: IncrementalDecoder, stops: StopStringMatcher, start: float
    ) -> Iterator[StreamChunk]:
        model, config = self.model, self.config
        context = np.asarray(self.prompt_ids, dtype=np.int64)
        tokens: list[SampledToken] = []
        text_parts: list[str] = []
        stop_reason: StopReason = "max_new_tokens"
        first_token_at = start
        feed = self.prompt_ids[len(cache) :]
        while len(tokens) < config.max_new_tokens:
            if self.cancel_token.cancelled:
                stop_reason = "cancelled"
                break
            if model.max_tokens is not None and len(cache) + len(feed) > model.max_tokens:
                stop_reason = "context_full"
                break
            if feed:
                logits = model.forward(feed, cache)
            else:  # the cache holds the whole prompt (prefilled while the player typed)
                assert cache.last_logits is not None
                logits = cache.last_logits
            token = sampler.sample(logits, context)
            model.sampled_tokens += 1
            if not tokens:
                first_token_at = time.perf_counter()
            tokens.append(token)
            context = np.append(context, token.token_id)
            if token.token_id in model.eos_token_ids and not self.ignore_eos:
                stop_reason = "eos"
                break
            shown, stopped = stops.feed(decoder.push(token.token_id))
            if shown:
                text_parts.append(shown)
            yield StreamChunk(shown, token)
            if stopped:
                stop_reason = "stop_string"
                break
            feed = [token.token_id]
        if stop_reason != "stop_string":
            tail, _ = stops.feed(decoder.flush())
            tail += stops.flush()
            if tail:
                text_parts.append(tail)
                yield StreamChunk(tail, None)
        self.result = GenerationResult(
            prompt_ids=self.prompt_ids,
            token_ids=[t.token_id for t in tokens],
            logprobs=[t.logprob for t in tokens],
            full_logprobs=[t.full_logprob for t in tokens],
            text="".join(text_parts),
            stop_reason=stop_reason,
            time_to_first_token_s=(first_token_at - start) if tokens else 0.0,
            total_s=time.perf_counter() - start,
            sampler=config.to_dict(),
            reused_tokens=self.reused_tokens,
        )
