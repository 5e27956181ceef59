"""NPC agents: what a game drops in to let NPCs talk, and to record how players react.

One ``OnnxCausalLM`` is shared by every NPC; each NPC is an ``NpcAgent`` with a persona; each
talk between an NPC and a player is a ``Conversation``. A turn runs either blocking
(``respond``) or off the game thread (``respond_async`` → poll each frame → ``result``). Every
turn and every engagement event goes to the play log when a ``PlayLogWriter`` is given.

A turn never raises into the game: if the model fails or runs past its time budget, or the output
filter rejects the line, the NPC says one of its persona's fallback lines and the turn is logged
with ``fallback`` / ``filtered`` set, so the trainer can leave it out.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from npcrl.agent.persona import Persona
from npcrl.agent.player_text import RESPONSE_WITHHELD, PlayerTextStorage, check_storage_mode
from npcrl.agent.postprocess import postprocess_line
from npcrl.agent.safety import OutputFilter, delimit_player_text, sanitize_player_text
from npcrl.errors import NpcrlError
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, Record
from npcrl.runtime.kvcache import KVCache, common_prefix_length
from npcrl.runtime.model import CancelToken, Generation, GenerationResult, OnnxCausalLM
from npcrl.runtime.sampler import SamplerConfig
from npcrl.validate import ConfigValueError, check_bool, check_number, check_optional

log = logging.getLogger("npcrl.agent.npc_agent")

# Turn workers still running. A daemon thread killed inside onnxruntime at interpreter exit aborts
# the process, so exit waits for them (a turn is bounded by its time budget).
_WORKERS: set[threading.Thread] = set()
_WORKERS_LOCK = threading.Lock()


def _join_workers(timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with _WORKERS_LOCK:
        workers = list(_WORKERS)
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))


atexit.register(_join_workers)

# Stop as soon as the model starts a new chat turn or speaks for the player.
DEFAULT_STOPS = ("<|im_start|>", "\nPlayer:", "\nTraveller:", "\nTraveler:", "\nUser:", "\nYou:")
BUILTIN_EVENTS = ("reply", "rating", "walk_away", "quest_accepted", "trade")
MAX_CONVERSATION_ID = 128


@dataclass(frozen=True)
class AgentConfig:
    """How an NPC speaks. Defaults are the settings that gave in-character lines on SmolLM2-135M."""

    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(
            temperature=0.7, top_p=0.9, repetition_penalty=1.1, max_new_tokens=60, stop_strings=DEFAULT_STOPS
        )
    )
    """sampling settings of every NPC turn (logged with each turn)"""
    prompt_token_budget: int = 1024
    """max prompt tokens: the persona is always kept, the oldest exchanges are dropped first"""
    time_budget_s: float | None = 20.0
    """a turn still generating after this many seconds is cancelled and answered with a fallback;
    None: no limit (headless play, where a wall-clock limit makes results depend on machine load)"""
    max_line_chars: int = 280
    """length cap of a displayed NPC line"""
    max_player_chars: int = 300
    """player input is cut to this many characters"""
    reuse_persona_prefix: bool = True
    """start every turn from cached KV: the persona's system turn and user header (computed once per
    persona and bundle) and, within a conversation, everything up to the player's new line"""
    player_text_storage: str = "scrubbed"
    """what of the player's words the play log keeps: "scrubbed" (personal data masked), "none" (no
    player words at all) or "raw" (as typed); the model always sees them as typed (docs/PRIVACY.md)"""

    def __post_init__(self) -> None:
        # ConfigValueError is a ValueError naming the field and value; upper bounds are far above use.
        if not isinstance(self.sampler, SamplerConfig):
            raise ConfigValueError("sampler", self.sampler, "a SamplerConfig")
        check_number("prompt_token_budget", self.prompt_token_budget, 2, 1 << 20, integer=True)
        if self.prompt_token_budget <= self.sampler.max_new_tokens:
            raise ValueError(
                f"prompt_token_budget={self.prompt_token_budget} must exceed sampler.max_new_tokens="
                f"{self.sampler.max_new_tokens}"
            )
        check_optional("time_budget_s", self.time_budget_s, 0.0, 86_400.0, low_open=True)
        check_number("max_line_chars", self.max_line_chars, 1, 100_000, integer=True)
        check_number("max_player_chars", self.max_player_chars, 1, 100_000, integer=True)
        check_bool("reuse_persona_prefix", self.reuse_persona_prefix)
        check_storage_mode("player_text_storage", self.player_text_storage)


@dataclass(frozen=True)
class NpcLine:
    """A finished NPC turn as the game shows it."""

    turn_index: int
    text: str
    filtered: bool
    fallback: bool
    filter_reason: str | None
    latency_s: float
    time_to_first_token_s: float
    stop_reason: str
    generation: GenerationResult | None = None
    queue_s: float = 0.0
    """time the turn waited before its own work: for a KV slot while others generated, and for the
    persona's prefix (included in ``time_to_first_token_s``)"""


class PendingLine:
    """An NPC turn generating in a worker thread. Poll it from the game loop; it never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streamed: list[str] = []
        self._polled = 0
        self._done = threading.Event()
        self._line: NpcLine | None = None
        self.cancel_token = CancelToken()

    def _push(self, piece: str) -> None:
        with self._lock:
            self._streamed.append(piece)

    def _finish(self, line: NpcLine) -> None:
        self._line = line
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def started(self) -> bool:
        """True once the first text arrived (a game shows a 'thinking' indicator until then)."""
        with self._lock:
            return bool(self._streamed) or self.done

    def poll(self) -> str:
        """Streamed text that arrived since the previous poll (raw model text, special tokens removed)."""
        with self._lock:
            new = "".join(self._streamed[self._polled :])
            self._polled = len(self._streamed)
        return new

    @property
    def streamed_text(self) -> str:
        with self._lock:
            return "".join(self._streamed)

    def cancel(self) -> None:
        """Stop generating; the turn ends with a fallback line (the player left, or the game needs the CPU)."""
        self.cancel_token.cancel()

    def result(self, timeout: float | None = None) -> NpcLine:
        """The finished line; blocks up to ``timeout`` (use ``done`` in a game loop)."""
        if not self._done.wait(timeout):
            raise TimeoutError("the NPC line is not finished yet")
        assert self._line is not None
        return self._line


class RecordSink(Protocol):
    """Where an agent logs: a ``PlayLogWriter``, or anything that takes records the same way."""

    def append(self, record: Record) -> None: ...


class NpcAgent:
    """One NPC: a persona speaking through a shared model."""

    def __init__(
        self,
        model: OnnxCausalLM,
        persona: Persona,
        *,
        log_writer: RecordSink | None = None,
        config: AgentConfig | None = None,
        npc_id: str | None = None,
        output_filter: OutputFilter | None = None,
        system_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.persona = persona
        self.log_writer = log_writer
        self.config = config or AgentConfig()
        self.npc_id = npc_id or persona.id
        self.output_filter = output_filter or OutputFilter(refuse_topics=persona.refuse_topics)
        self.system_prompt = system_prompt if system_prompt is not None else persona.system_prompt()
        self._system_ids: tuple[str, str, list[int]] | None = None  # (bundle id, system prompt, its ids)

    def prefix_cache(self, model: OnnxCausalLM) -> KVCache | None:
        """The KV cache every prompt of this NPC starts with on ``model``: the system turn and the
        header of the player's first line. Computed once per persona and bundle and kept in the
        model's LRU prefix store, so NPCs with the same persona share it. It is most of a first
        turn's prompt (about 600 of 640 tokens for the shipped cards)."""
        key = (model.bundle_id, self.system_prompt)
        memo = self._system_ids
        if memo is None or memo[:2] != key:
            memo = self._system_ids = (*key, self._prefix_ids(model))
        return model.prefix_cache(memo[2])

    def _prefix_ids(self, model: OnnxCausalLM) -> list[int]:
        """What every first-turn prompt starts with: the system turn and the user header."""
        system = {"role": "system", "content": self.system_prompt}
        stem = prompt_stem(
            lambda text: model.tokenizer.encode_chat([system, {"role": "user", "content": delimit_player_text(text)}])
        )
        return stem or model.tokenizer.encode_chat([system])[:1]

    def start_conversation(self, player_id: str = "player", conversation_id: str | None = None) -> Conversation:
        """A new conversation; ``conversation_id`` (default: a random uuid) names it in the log and
        must be unique there: records are grouped by it."""
        return Conversation(self, player_id, conversation_id)

    def warm_up(self) -> None:
        """Compute the persona prefix now (seconds on a small CPU) rather than on the first turn;
        call it from a loading screen or a background thread, again after ``swap_model``."""
        if self.config.reuse_persona_prefix:
            self.prefix_cache(self.model)

    def swap_model(self, model: OnnxCausalLM) -> None:
        """Use another bundle from the next conversation on (hot swap between conversations)."""
        self.model = model


class Conversation:
    """One conversation between an NPC and a player. Methods are meant for the game thread; the
    generation itself runs in a worker thread for ``respond_async``."""

    def __init__(self, agent: NpcAgent, player_id: str, conversation_id: str | None = None) -> None:
        if conversation_id is not None and (
            not isinstance(conversation_id, str) or not 0 < len(conversation_id) <= MAX_CONVERSATION_ID
        ):
            raise ValueError(
                f"conversation_id must be a non-empty str of at most {MAX_CONVERSATION_ID} characters, "
                f"got {conversation_id!r}"
            )
        self.agent = agent
        self.model = agent.model  # fixed for the whole conversation, even if the agent swaps
        self.player_id = player_id
        self.conversation_id = conversation_id or uuid.uuid4().hex
        self.exchanges: list[tuple[str, str]] = []  # (delimited player text, NPC line) kept as memory
        self._storage = PlayerTextStorage(agent.config.player_text_storage)
        self.lines: list[NpcLine] = []
        self.ended = False
        self._pending: PendingLine | None = None
        self._last_line_at: float | None = None
        # KV cache of the conversation so far (prompt + the NPC's shown line), so the next turn only
        # prefills the player's new line; computed in the worker after each turn.
        self._history_cache: KVCache | None = None
        self._history_ready = threading.Event()
        self._history_ready.set()
        self._typed = ""  # the player's draft, for prefilling while they type
        self._typing_worker = False
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._log(
            ConversationStart(
                conversation_id=self.conversation_id,
                npc_id=agent.npc_id,
                player_id=player_id,
                persona_name=agent.persona.name,
                persona_hash=agent.persona.persona_hash,
                bundle_id=self.model.bundle_id,
                sampler=agent.config.sampler.to_dict(),
                time=time.time(),
            )
        )

    @property
    def greeting(self) -> str:
        return self.agent.persona.greeting

    # ------------------------------------------------------------------ turns

    def respond(self, player_text: str) -> NpcLine:
        """Blocking: the NPC's answer to ``player_text``."""
        return self.respond_async(player_text, _thread=False).result()

    def respond_async(self, player_text: str, _thread: bool = True) -> PendingLine:
        """Start the NPC's answer in a worker thread and return at once."""
        if self.ended:
            raise RuntimeError(f"conversation {self.conversation_id} has ended")
        if self._pending is not None and not self._pending.done:
            raise RuntimeError("the NPC is still answering; cancel() the pending line first")
        now = time.monotonic()
        clean = self._clean(player_text)
        if self.lines and self._last_line_at is not None:
            # The player answered the NPC's last line: that is engagement with it.
            self.record("reply", value=now - self._last_line_at, **self._storage.reply_data(clean))
        pending = PendingLine()
        self._pending = pending
        turn_index = len(self.lines)
        work = lambda: self._run_turn(pending, turn_index, player_text, clean)  # noqa: E731
        if _thread:
            self._start_worker(work, "turn")
        else:
            work()
        return pending

    def _start_worker(self, work: Any, job: str) -> None:
        worker = threading.Thread(target=self._tracked, args=(work,), name=f"npcrl-{self.agent.npc_id}-{job}")
        worker.daemon = True
        with _WORKERS_LOCK:
            _WORKERS.add(worker)
        self._worker = worker
        worker.start()

    @staticmethod
    def _tracked(work: Any) -> None:
        try:
            work()
        finally:
            with _WORKERS_LOCK:
                _WORKERS.discard(threading.current_thread())

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until this conversation's worker (the turn and its cache update) has finished."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def build_prompt(self, clean_player_text: str) -> list[int]:
        """Chat-template prompt within the token budget: persona + as many recent exchanges as fit."""
        return self._prompt(clean_player_text)[1]

    def _prompt(self, clean_player_text: str) -> tuple[list[dict[str, str]], list[int]]:
        config = self.agent.config
        limit = min(config.prompt_token_budget, self.model.max_positions or config.prompt_token_budget)
        budget = limit - config.sampler.max_new_tokens
        history = list(self.exchanges)
        while True:
            messages = self._messages(history, delimit_player_text(clean_player_text))
            ids = self.model.tokenizer.encode_chat(messages)
            if len(ids) <= budget or not history:
                return messages, ids
            history.pop(0)  # oldest exchange first; the persona always stays

    def _messages(self, history: list[tuple[str, str]], current: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.agent.system_prompt}]
        for player, npc in history:
            messages += [{"role": "user", "content": player}, {"role": "assistant", "content": npc}]
        return [*messages, {"role": "user", "content": current}]

    def _stored_prompt(self, messages: list[dict[str, str]], prompt: list[int]) -> list[int]:
        """The prompt as the play log keeps it (``player_text_storage``): the same messages as the
        model's prompt ``messages``, each player line and NPC line in its stored form."""
        if self._storage.raw or not prompt:
            return prompt
        return self.model.tokenizer.encode_chat([self._storage.stored_message(m) for m in messages])

    def _run_turn(self, pending: PendingLine, turn_index: int, raw_player_text: str, clean: str) -> None:
        """A whole turn in its worker; nothing raised here ever leaves the thread: a failure becomes
        a fallback line, a logged turn whose ``filter_reason`` names the cause, and a log message."""
        started = time.perf_counter()
        kept = logged = False
        try:
            result, error, prompt, generation, waited = self._generate(pending, clean, started)
            line = self._make_line(turn_index, result, error, started, waited)
            self._keep_line(line, clean)
            kept = True
            self._log_turn(line, raw_player_text, prompt)
            logged = True
            self._after_line(pending, line, generation)
        except Exception as exc:  # a turn must never take the game (or its thread) down
            log.exception("NPC %s: turn %d failed; answering with a fallback line", self.agent.npc_id, turn_index)
            if not pending.done:
                line = self._make_line(turn_index, None, f"{type(exc).__name__}: {exc}", started, 0.0)
                try:
                    if not kept:
                        self._keep_line(line, clean)
                    if not logged:
                        self._log_turn(line, raw_player_text, [])
                except Exception:
                    log.exception("NPC %s: could not log the fallback of turn %d", self.agent.npc_id, turn_index)
                pending._finish(line)
        finally:
            if not pending.done:  # interrupted by a BaseException: still never leave a game waiting
                pending._finish(self._make_line(turn_index, None, "interrupted", started, 0.0))

    def _generate(
        self, pending: PendingLine, clean: str, started: float
    ) -> tuple[GenerationResult | None, str | None, list[int], Generation | None, float]:
        """(result, error, prompt as logged, generation, time waited for the persona prefix)."""
        config = self.agent.config
        prompt: list[int] = []
        messages: list[dict[str, str]] = []
        generation: Generation | None = None
        waited = 0.0
        self._history_ready.wait(config.time_budget_s)  # the previous turn's cache extension
        try:
            messages, prompt = self._prompt(clean)
            history, self._history_cache = self._history_cache, None  # the generation owns it now
            asked = time.perf_counter()
            prefix = self._persona_prefix(prompt)  # another NPC may be computing it: wait for that
            waited = time.perf_counter() - asked
            generation = self.model.generate(
                prompt,
                config.sampler,
                cancel=pending.cancel_token,
                prefix_cache=prefix,
                cache=history if config.reuse_persona_prefix else None,
                started_at=started,
            )
            self._stream(generation, pending)
            # rendered after the line, off the time to first token; only the log needs it
            return generation.result, None, self._stored_prompt(messages, prompt), generation, waited
        except Exception as exc:  # the model failed: a fallback line, the cause in the log
            log.exception("NPC %s failed to generate; answering with a fallback line", self.agent.npc_id)
            stored = self._stored_prompt(messages, prompt)
            return None, f"{type(exc).__name__}: {exc}", stored, generation, waited

    def _stream(self, generation: Generation, pending: PendingLine) -> None:
        """Run ``generation``, pushing its text to ``pending``. The time budget starts once the
        generation holds its KV slot: waiting in line behind other NPCs is not the turn's fault."""
        budget = self.agent.config.time_budget_s
        watchdogs: list[threading.Timer] = []

        def arm() -> None:
            if budget is not None:
                watchdog = threading.Timer(budget, pending.cancel_token.cancel)
                watchdog.daemon = True
                watchdogs.append(watchdog)
                watchdog.start()

        generation.on_admitted = arm
        try:
            for chunk in generation:
                if chunk.text:
                    pending._push(self.model.tokenizer.strip_special_tokens(chunk.text))
        finally:
            for watchdog in watchdogs:
                watchdog.cancel()

    def _make_line(
        self, turn_index: int, result: GenerationResult | None, error: str | None, started: float, waited: float
    ) -> NpcLine:
        text, filtered, fallback, reason = self._final_text(result, error, turn_index)
        return NpcLine(
            turn_index=turn_index,
            text=text,
            filtered=filtered,
            fallback=fallback,
            filter_reason=reason,
            latency_s=time.perf_counter() - started,
            time_to_first_token_s=result.time_to_first_token_s if result else 0.0,
            stop_reason=result.stop_reason if result else "error",
            generation=result,
            queue_s=waited + (result.queue_s if result else 0.0),
        )

    def _keep_line(self, line: NpcLine, clean: str) -> None:
        with self._lock:
            self.lines.append(line)
            if not line.fallback and not line.filtered:
                self.exchanges.append((delimit_player_text(clean), line.text))
            self._last_line_at = time.monotonic()

    def _log_turn(self, line: NpcLine, raw_player_text: str, prompt: list[int]) -> None:
        """Log the turn as ``player_text_storage`` allows; ``prompt`` is already the stored one."""
        agent, config, result, storage = self.agent, self.agent.config, line.generation, self._storage
        reason = line.filter_reason
        sampled = self.model.tokenizer.decode(result.token_ids) if result is not None else ""
        if result is not None and storage.withholds_response(sampled, line.text):
            # the sample decodes to personal data: its ids cannot be logged, so neither can it be trained on
            result, reason = None, reason or RESPONSE_WITHHELD
        self._log(
            NpcTurn(
                conversation_id=self.conversation_id,
                turn_index=line.turn_index,
                npc_id=agent.npc_id,
                bundle_id=self.model.bundle_id,
                player_text=storage.player_text(raw_player_text, config.max_player_chars * 4),
                prompt_ids=list(prompt),
                response_ids=list(result.token_ids) if result else [],
                logprobs=list(result.logprobs) if result else [],
                full_logprobs=list(result.full_logprobs) if result else [],
                text=storage.npc_text(line.text),
                stop_reason=line.stop_reason,
                sampler=config.sampler.to_dict(),
                latency_s=line.latency_s,
                time_to_first_token_s=line.time_to_first_token_s,
                filtered=line.filtered,
                fallback=line.fallback,
                time=time.time(),
                filter_reason=reason,
                queue_s=line.queue_s,
            )
        )

    def _after_line(self, pending: PendingLine, line: NpcLine, generation: Generation | None) -> None:
        """Show the line, then (while the player reads it) extend the cache for the next turn."""
        reuse = self.agent.config.reuse_persona_prefix
        cache = generation.cache if generation is not None else None
        if line.fallback or line.filtered or cache is None or not reuse:
            # the line is not part of the memory, but the prompt's KV up to it still is
            self._store_cache(cache if reuse else None)
            pending._finish(line)
            return
        self._history_ready.clear()
        pending._finish(line)
        try:
            # The KV state of the conversation so far, up to where the player's next words will go,
            # so the next turn prefills only those words.
            self._history_cache = cache
            self._prefill_ahead(self._next_prompt_stem())
        finally:
            self._history_ready.set()

    def _store_cache(self, cache: KVCache | None) -> None:
        """Keep ``cache`` for the next turn, or give its slot back if the conversation has ended."""
        with self._lock:
            if not self.ended:
                self._history_cache, cache = cache, None
        if cache is not None:
            cache.release()

    def _persona_prefix(self, prompt: list[int]) -> KVCache | None:
        if not self.agent.config.reuse_persona_prefix:
            return None
        prefix = self.agent.prefix_cache(self.model)
        if prefix is not None and len(prefix) < len(prompt) and prompt[: len(prefix)] == prefix.token_ids:
            return prefix
        return None  # the template tokenised the system turn differently in context

    def _next_prompt_stem(self) -> list[int]:
        """Token ids every next prompt starts with, whatever the player says."""
        return prompt_stem(self.build_prompt)

    def _prefill_ahead(self, stem: list[int]) -> None:
        """Bring the conversation's cache to hold ``stem`` (rewinding what differs), off the game
        thread. Only an optimisation: on any failure the next turn starts from the persona prefix."""
        cache, self._history_cache = self._history_cache, None  # end() meanwhile will not free it under us
        if self.ended or not stem:
            self._store_cache(cache)
            return
        try:
            cache = self.model.extend(stem, cache, self._persona_prefix(stem + [0]))
        except Exception:
            log.exception("could not extend the conversation cache of NPC %s", self.agent.npc_id)
            if cache is not None:
                cache.release()
            cache = None
        self._store_cache(cache)

    def player_typing(self, text: str) -> None:
        """The player has typed ``text`` so far: prefill, in a worker thread, the whole prompt the
        NPC would get if the player sent it now. If the player does send it, the answer starts
        without any prefill; if they type on, the cache is rewound to what still matches. Call it
        on every key; it never blocks, and while a prefill runs only the latest text is kept."""
        if self.ended or not self.agent.config.reuse_persona_prefix:
            return
        if self._pending is not None and not self._pending.done:
            return
        with self._lock:
            self._typed = text
            if self._typing_worker:
                return  # the running worker picks the latest text up when it finishes
            self._typing_worker = True
            self._history_ready.clear()

        def work() -> None:
            done: str | None = None
            try:
                while True:
                    with self._lock:
                        typed = self._typed
                        if typed == done or self.ended:
                            self._typing_worker = False
                            return
                    self._prefill_ahead(self.build_prompt(self._clean(typed)))
                    done = typed
            except Exception:  # only an optimisation: never let it escape the worker thread
                log.exception("NPC %s: prefilling the typed text failed", self.agent.npc_id)
            finally:
                with self._lock:
                    self._typing_worker = False
                self._history_ready.set()

        self._start_worker(work, "typing")

    def _clean(self, player_text: str) -> str:
        return sanitize_player_text(
            player_text, self.model.tokenizer.special_token_strings, self.agent.config.max_player_chars
        )

    def _final_text(
        self, result: GenerationResult | None, error: str | None, turn_index: int
    ) -> tuple[str, bool, bool, str | None]:
        """(displayed text, filtered, fallback, reason)."""
        persona = self.agent.persona
        if result is None:
            return persona.fallback_line(turn_index), False, True, f"error:{error}"
        if result.stop_reason == "cancelled":
            return persona.fallback_line(turn_index), False, True, "cancelled_or_time_budget"
        text = postprocess_line(
            result.text,
            npc_name=persona.name,
            special_tokens=self.model.tokenizer.special_token_strings,
            max_chars=self.agent.config.max_line_chars,
        )
        if not text:
            return persona.fallback_line(turn_index), False, True, "empty_after_postprocess"
        verdict = self.agent.output_filter.check(text)
        if not verdict.allowed:
            return persona.fallback_line(turn_index), True, False, verdict.reason
        return text, False, False, None

    # ------------------------------------------------------------------ engagement

    def record(self, kind: str, value: float | None = None, *, turn_index: int | None = None, **data: Any) -> None:
        """Record an engagement event (built-in or a game's own kind) against an NPC line: the latest
        finished one, or ``turn_index`` (the line the player actually saw, if a newer one is coming)."""
        if not kind or not isinstance(kind, str):
            raise ValueError(f"event kind must be a non-empty string, got {kind!r}")
        if not self.lines:
            raise RuntimeError("no NPC line yet: events attach to the turn they follow")
        if turn_index is not None and not any(line.turn_index == turn_index for line in self.lines):
            raise ValueError(f"turn_index {turn_index} is not a finished line of this conversation")
        self._log(
            EngagementEvent(
                conversation_id=self.conversation_id,
                turn_index=self.lines[-1].turn_index if turn_index is None else turn_index,
                kind=kind,
                value=None if value is None else float(value),
                time=time.time(),
                data=data,
            )
        )

    def rate(self, positive: bool, *, turn_index: int | None = None) -> None:
        self.record("rating", 1.0 if positive else -1.0, turn_index=turn_index)

    def accept_quest(self, quest: str, *, turn_index: int | None = None) -> None:
        self.record("quest_accepted", 1.0, turn_index=turn_index, quest=quest)

    def trade(self, amount: float, item: str | None = None, *, turn_index: int | None = None) -> None:
        self.record("trade", amount, turn_index=turn_index, **({"item": item} if item else {}))

    def walk_away(self) -> None:
        """The player left mid-conversation: an event on the last line, then the end."""
        if self._pending is not None and not self._pending.done:
            self._pending.cancel()
        if self.lines:
            self.record("walk_away", 1.0)
        self.end("walked_away")

    def end(self, reason: str = "ended") -> None:
        with self._lock:
            if self.ended:
                return
            self.ended = True
            cache, self._history_cache = self._history_cache, None
        if cache is not None:
            # free its slot now (about 46 KB per token for SmolLM2); a worker that holds the cache
            # took it out of _history_cache first and frees it itself when it sees the end
            cache.release()
        self._log(ConversationEnd(conversation_id=self.conversation_id, reason=reason, time=time.time()))

    def _log(self, record: Any) -> None:
        if self.agent.log_writer is None:
            return
        try:
            self.agent.log_writer.append(record)
        except NpcrlError:  # e.g. the writer was closed while a turn finished: the game goes on
            log.exception("play log refused a %s record", type(record).__name__)


def prompt_stem(prompt_for: Callable[[str], list[int]]) -> list[int]:
    """The tokens a prompt has before the player's words: the prompts for two different lines, up
    to one token before where they part (that token may still merge with the player's first word)."""
    a, b = prompt_for("Hello there"), prompt_for("What now")
    return a[: max(0, common_prefix_length(a, b) - 1)]


def with_sampler(config: AgentConfig, **changes: Any) -> AgentConfig:
    """A copy of ``config`` with sampler fields changed (e.g. ``seed=1`` for reproducible tests)."""
    return replace(config, sampler=replace(config.sampler, **changes))
