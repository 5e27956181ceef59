"""Incremental generation with an exported bundle on onnxruntime (no torch).

The KV cache lives in onnxruntime ``OrtValue``s bound through IO binding: each step's
``present.*`` outputs are fed back as the next step's ``past.*`` inputs without a round trip
through numpy, which was the main cost of a naive decode loop. ``InferenceSession.run`` releases
the GIL, so generation in a worker thread leaves a game's main thread free.
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
from npcrl.sampler import SampledToken, Sampler, SamplerConfig
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


class KVCache:
    """The past key/values of one sequence, held as OrtValues, plus the tokens they cover."""

    def __init__(self, values: list[ort.OrtValue], token_ids: list[int]) -> None:
        self.values = values
        self.token_ids = token_ids

    def __len__(self) -> int:
        return len(self.token_ids)

    def fork(self) -> KVCache:
        """An independent copy that shares the tensors: ``forward`` never writes into its inputs, it
        replaces ``values`` with new outputs, so a prefix cache can seed any number of sequences."""
        return KVCache(list(self.values), list(self.token_ids))


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
        layout = self.kv_layout
        empty = np.zeros((1, layout.num_kv_heads, 0, layout.head_dim), dtype=self._kv_dtype)
        return KVCache([ort.OrtValue.ortvalue_from_numpy(empty) for _ in layout.past_names()], [])

    def forward(self, token_ids: Sequence[int], cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Feed ``token_ids`` after what ``cache`` holds; returns the last position's logits (V,)
        or, with ``all_logits``, every fed position's logits (T, V). ``cache`` is updated in place."""
        if len(token_ids) == 0:
            raise GenerationError("forward() needs at least one token")
        past_len = len(cache)
        total = past_len + len(token_ids)
        if self.max_positions is not None and total > self.max_positions:
            raise GenerationError(f"sequence of {total} tokens exceeds the model's {self.max_positions} positions")
        ids = np.asarray(token_ids, dtype=np.int64)[None, :]
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise GenerationError(f"token id out of range [0, {self.vocab_size}): {int(ids.min())}..{int(ids.max())}")
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self.kv_layout.position_ids:
            binding.bind_cpu_input("position_ids", np.arange(past_len, total, dtype=np.int64)[None, :])
        for name, value in zip(self.kv_layout.past_names(), cache.values, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits")
        for name in self.kv_layout.present_names():
            binding.bind_output(name)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise GenerationError(f"onnxruntime failed on a forward pass: {exc}") from exc
        outputs = binding.get_outputs()
        cache.values = list(outputs[1:])
        cache.token_ids.extend(int(t) for t in token_ids)
        logits = outputs[0].numpy()[0]  # (T, V)
        return logits if all_logits else logits[-1]

    def prefill(self, token_ids: Sequence[int]) -> KVCache:
        """The KV cache of ``token_ids`` (e.g. a persona's system prompt), to seed later generations."""
        cache = self.new_cache()
        self.forward(token_ids, cache)
        return cache

    def generate(
        self,
        prompt_ids: Sequence[int],
        config: SamplerConfig | None = None,
        cancel: CancelToken | None = None,
        ignore_eos: bool = False,
        prefix_cache: KVCache | None = None,
    ) -> Generation:
        """Start generating after ``prompt_ids``; iterate the result for streamed text.

        ``prefix_cache`` holds a prefix of ``prompt_ids`` already computed (it is forked, not
        changed), so only the rest is prefilled. ``ignore_eos`` keeps going past EOS (benchmarks
        that need a fixed token count)."""
        return Generation(
            self, list(prompt_ids), config or SamplerConfig(), cancel or CancelToken(), ignore_eos, prefix_cache
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
    ):
        if not prompt_ids:
            raise GenerationError("the prompt is empty; at least one token is needed")
        if prefix_cache is not None and (
            len(prefix_cache) >= len(prompt_ids) or prompt_ids[: len(prefix_cache)] != prefix_cache.token_ids
        ):
            raise GenerationError("prefix_cache does not hold a proper prefix of the prompt")
        self.prefix_cache = prefix_cache
        self.prompt_cache: KVCache | None = None
        """the KV cache of exactly the prompt, kept after the prefill so callers can extend it"""
        self.model = model
        self.prompt_ids = prompt_ids
        self.config = config
        self.cancel_token = cancel
        self.ignore_eos = ignore_eos
        self.result: GenerationResult | None = None
        self._iterator = self._run()

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
        cache = self.prefix_cache.fork() if self.prefix_cache is not None else model.new_cache()
        context = np.asarray(self.prompt_ids, dtype=np.int64)
        tokens: list[SampledToken] = []
        text_parts: list[str] = []
        stop_reason: StopReason = "max_new_tokens"
        start = time.perf_counter()
        first_token_at = start
        feed = self.prompt_ids[len(cache) :]
        while len(tokens) < config.max_new_tokens:
            if self.cancel_token.cancelled:
                stop_reason = "cancelled"
                break
            if model.max_positions is not None and len(cache) + len(feed) > model.max_positions:
                stop_reason = "context_full"
                break
            logits = model.forward(feed, cache)
            token = sampler.sample(logits, context)
            if not tokens:
                first_token_at = time.perf_counter()
                self.prompt_cache = cache.fork()
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
        )
