"""One generation on an ``OnnxCausalLM``: from the longest cached prefix of the prompt to a result.

A generation holds one KV pool slot, pinned, from its start to its end. When every slot is
generating it waits in line for one (first come, first served; cancellable); the wait is
reported as ``GenerationResult.queue_s`` and counts in the time to first token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from npcrl.errors import GenerationError
from npcrl.runtime.kvcache import (
    FrozenCache,
    KVCache,
    KVPool,
    SlotCache,
    SlotWait,
    SlotWaitCancelled,
    common_prefix_length,
)
from npcrl.runtime.sampler import SampledToken, Sampler, SamplerConfig
from npcrl.runtime.scheduler import StepScheduler
from npcrl.runtime.streaming import IncrementalDecoder, StopStringMatcher
from npcrl.runtime.tokenizer import BundleTokenizer


class Decoder(Protocol):
    """What a generation needs of its model (an ``OnnxCausalLM``)."""

    tokenizer: BundleTokenizer
    scheduler: StepScheduler
    pool: KVPool | None
    eos_token_ids: frozenset[int]
    max_tokens: int | None
    sampled_tokens: int

    def forward(self, token_ids: Sequence[int], cache: KVCache, all_logits: bool = False) -> np.ndarray: ...

    def new_cache(self) -> KVCache: ...


StopReason = Literal["eos", "stop_string", "max_new_tokens", "cancelled", "context_full"]


class CancelToken:
    """Set from any thread to stop a generation before its next token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


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
    queue_s: float = 0.0
    """time spent waiting in line for a KV slot (part of ``time_to_first_token_s``)"""

    @property
    def decode_tokens_per_s(self) -> float:
        decode_time = self.total_s - self.time_to_first_token_s
        return (len(self.token_ids) - 1) / decode_time if len(self.token_ids) > 1 and decode_time > 0 else 0.0


@dataclass(frozen=True)
class StartFrom:
    """What a generation may start from instead of an empty cache, and since when it is timed."""

    prefix_cache: KVCache | None = None
    """a read-only cache of a proper prefix of the prompt (forked, never changed)"""
    cache: KVCache | None = None
    """a cache to continue in place, rewound to what it shares with the prompt"""
    started_at: float | None = None
    """``time.perf_counter()`` when the request began, if before the generation: time to first
    token counts from there"""


class Generation:
    """An in-progress generation: iterate for ``StreamChunk``s; ``result`` once finished.

    Not thread-safe to iterate from two threads; ``cancel()`` may be called from any thread.
    """

    def __init__(
        self,
        model: Decoder,
        prompt_ids: list[int],
        config: SamplerConfig,
        cancel: CancelToken,
        ignore_eos: bool = False,
        start: StartFrom | None = None,
    ):
        start = start or StartFrom()
        prefix_cache = start.prefix_cache
        if not prompt_ids:
            raise GenerationError("the prompt is empty; at least one token is needed")
        if prefix_cache is not None and (
            len(prefix_cache) >= len(prompt_ids) or prompt_ids[: len(prefix_cache)] != prefix_cache.token_ids
        ):
            raise GenerationError("prefix_cache does not hold a proper prefix of the prompt")
        self.prefix_cache = prefix_cache
        self.cache: KVCache | None = start.cache
        """the cache this generation runs in: the prompt, then every sampled token but the last"""
        self.reused_tokens = 0
        """prompt tokens that came from a cache rather than a prefill"""
        self.model = model
        self.prompt_ids = prompt_ids
        self.config = config
        self.cancel_token = cancel
        self.ignore_eos = ignore_eos
        self.result: GenerationResult | None = None
        self.started_at = start.started_at
        self.queue_s = 0.0
        """time this generation waited for a KV slot"""
        self.on_admitted: Callable[[], None] | None = None
        """called once the generation holds its slot, before its first pass (e.g. to start a time budget)"""
        self._iterator = self._run()

    def _start_cache(self, wait: SlotWait) -> KVCache:
        return start_cache(self.model, self.prompt_ids, self.cache, self.prefix_cache, wait, need_logits=True)

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
        # time to first token includes waiting for a slot and seeding the cache
        start = self.started_at if self.started_at is not None else time.perf_counter()
        wait = SlotWait(cancelled=lambda: self.cancel_token.cancelled)
        try:
            cache = self.cache = self._start_cache(wait)
        except SlotWaitCancelled:
            self.cache, self.queue_s = None, wait.waited_s
            self.result = self._result([], "", "cancelled", start, start)
            return
        self.queue_s = wait.waited_s
        self.reused_tokens = len(cache)
        try:
            if self.on_admitted is not None:
                self.on_admitted()
            model.scheduler.begin_sequence()
            try:
                yield from self._loop(cache, sampler, decoder, stops, start)
            finally:
                model.scheduler.end_sequence()
        finally:
            if isinstance(cache, SlotCache):
                cache.pool.unpin(cache)

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
        self.result = self._result(tokens, "".join(text_parts), stop_reason, start, first_token_at)

    def _result(
        self, tokens: list[SampledToken], text: str, stop_reason: StopReason, start: float, first_token_at: float
    ) -> GenerationResult:
        return GenerationResult(
            prompt_ids=self.prompt_ids,
            token_ids=[t.token_id for t in tokens],
            logprobs=[t.logprob for t in tokens],
            full_logprobs=[t.full_logprob for t in tokens],
            text=text,
            stop_reason=stop_reason,
            time_to_first_token_s=(first_token_at - start) if tokens else 0.0,
            total_s=time.perf_counter() - start,
            sampler=self.config.to_dict(),
            reused_tokens=self.reused_tokens,
            queue_s=self.queue_s,
        )


def _shared(own: KVCache, prompt: list[int], need_logits: bool) -> int:
    """Prompt tokens ``own`` holds that a sequence may start from; with ``need_logits``, one is
    left to feed unless the cache holds the whole prompt and its last logits."""
    shared = common_prefix_length(own.token_ids, prompt)
    if need_logits and not (shared == len(prompt) == len(own) and own.last_logits is not None):
        shared = min(shared, len(prompt) - 1)
    return shared


def start_cache(
    model: Decoder,
    prompt: list[int],
    own: KVCache | None,
    prefix: KVCache | None,
    wait: SlotWait,
    need_logits: bool,
) -> KVCache:
    """The cache to continue ``prompt`` in: ``own`` rewound to what it shares with the prompt, a
    fork of ``prefix``, or a new cache, whichever leaves the least to prefill (``own`` is released
    if not used). Pool caches come back pinned; taking a slot waits in line while all are pinned."""
    least = max(len(prefix) if prefix is not None else 0, 1)
    if own is not None and own.alive and _shared(own, prompt, need_logits) >= least:
        if not isinstance(own, SlotCache):
            own.truncate(_shared(own, prompt, need_logits))
            return own
        if own.pool.claim(own, wait):
            if own.alive and _shared(own, prompt, need_logits) >= least:
                own.truncate(_shared(own, prompt, need_logits))
                return own
            own.pool.unpin(own)
    if own is not None:
        own.release()
    if isinstance(prefix, SlotCache):
        try:
            prefix = prefix.freeze()  # copied through a frozen copy: never two slots pinned at once
        except GenerationError:  # evicted meanwhile: only an optimisation lost
            prefix = None
    if isinstance(prefix, FrozenCache):
        return prefix.pool.seed(prefix, pin=True, wait=wait)
    if prefix is not None and prefix.alive:
        return prefix.fork()
    if model.pool is not None:
        return model.pool.acquire(pin=True, wait=wait)
    return model.new_cache()
