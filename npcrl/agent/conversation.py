"""One conversation between an NPC and a player: its turns, its memory, its engagement events.

A turn runs either blocking (``respond``) or off the game thread (``respond_async`` → poll each
frame → ``result``). A turn never raises into the game: if the model fails or runs past its time
budget, or the output filter rejects the line, the NPC says one of its persona's fallback lines
and the turn is logged with ``fallback`` / ``filtered`` set, so the trainer can leave it out.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

from npcrl.agent.config import MAX_CONVERSATION_ID
from npcrl.agent.consistency import RESAMPLED
from npcrl.agent.lines import Retry, contradicts_card, final_text, make_line, resample, stream_into
from npcrl.agent.memory import ConversationMemory
from npcrl.agent.pending import NpcLine, PendingLine
from npcrl.agent.player_text import PlayerTextStorage
from npcrl.agent.prompt import FittedPrompt, Message, fit_prompt, prompt_stem
from npcrl.agent.safety import delimit_player_text, sanitize_player_text
from npcrl.agent.speaker import Speaker, hold_sink
from npcrl.agent.turn_record import turn_record
from npcrl.agent.workers import start_worker
from npcrl.errors import NpcrlError
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, Record
from npcrl.runtime.generation import Generation, GenerationResult
from npcrl.runtime.kvcache import KVCache

log = logging.getLogger("npcrl.agent.conversation")

Generated = tuple[GenerationResult | None, str | None, list[int], Generation | None, float]
"""(result, error, prompt as logged, generation, time waited for the persona prefix)"""


def check_conversation_id(conversation_id: object) -> None:
    if conversation_id is not None and (
        not isinstance(conversation_id, str) or not 0 < len(conversation_id) <= MAX_CONVERSATION_ID
    ):
        raise ValueError(
            f"conversation_id must be a non-empty str of at most {MAX_CONVERSATION_ID} characters, "
            f"got {conversation_id!r}"
        )


class Conversation:
    """One conversation between an NPC and a player. Methods are meant for the game thread; the
    generation itself runs in a worker thread for ``respond_async``.

    A context manager: ``with agent.conversation() as talk:`` ends it on leaving the block, however
    the block is left, and a line still generating then is cancelled; its KV slot is given back
    as soon as that turn's worker stops."""

    def __init__(self, agent: Speaker, player_id: str, conversation_id: str | None = None) -> None:
        check_conversation_id(conversation_id)
        self.agent = agent
        self.model = agent.model  # fixed for the whole conversation, even if the agent swaps
        self.player_id = player_id
        self.conversation_id = conversation_id or uuid.uuid4().hex
        self.exchanges: list[tuple[str, str]] = []  # (delimited player text, NPC line) kept as memory
        self._first_shown = 0  # the oldest exchange the last turn's prompt showed (only moves on)
        self._storage = PlayerTextStorage(agent.config.player_text_storage)
        self.lines: list[NpcLine] = []
        self.ended = False
        self._pending: PendingLine | None = None
        self._last_line_at: float | None = None
        self.memory = ConversationMemory(self.model, self._persona_prefix, agent.npc_id)
        """the KV cache of the conversation so far, kept for the next turn"""
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

    def __enter__(self) -> Conversation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pending is not None and not self._pending.done:
            self._pending.cancel()
        self.end("ended" if exc_type is None else "error")

    @property
    def greeting(self) -> str:
        return self.agent.persona.greeting

    # ------------------------------------------------------------------ turns

    def respond(self, player_text: str) -> NpcLine:
        """Blocking: the NPC's answer to ``player_text``."""
        pending, work = self._start_turn(player_text)
        work()
        return pending.result()

    def respond_async(self, player_text: str) -> PendingLine:
        """Start the NPC's answer in a worker thread and return at once."""
        pending, work = self._start_turn(player_text)
        self._worker = start_worker(work, f"npcrl-{self.agent.npc_id}-turn")
        return pending

    def _start_turn(self, player_text: str) -> tuple[PendingLine, Callable[[], None]]:
        """The new turn's ``PendingLine`` and the work that answers it (run by the caller)."""
        if self.ended:
            raise RuntimeError(f"conversation {self.conversation_id} has ended")
        if self._pending is not None and not self._pending.done:
            raise RuntimeError("the NPC is still answering; cancel() the pending line first")
        now = time.monotonic()
        clean = self._clean(player_text)
        if self.lines and self._last_line_at is not None:
            # The player answered the NPC's last line: that is engagement with it.
            self.record("reply", value=now - self._last_line_at, **self._storage.reply_data(clean))
        pending = self._pending = PendingLine()
        turn_index = len(self.lines)
        release = hold_sink(self.agent.log_writer)  # a writer closing meanwhile waits for this turn's record
        return pending, lambda: self._run_turn(pending, turn_index, player_text, clean, release)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until this conversation's workers (the turn, its cache update, a typing prefill)
        have finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in (self._worker, self.memory.worker):
            if worker is not None:
                worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if worker.is_alive():
                    return False
        return True

    def build_prompt(self, clean_player_text: str) -> list[int]:
        """Chat-template prompt within the token budget: persona + as many recent exchanges as fit."""
        return self._prompt(clean_player_text).ids

    def _prompt(self, clean_player_text: str) -> FittedPrompt:
        """The prompt a turn on ``clean_player_text`` would get now. Exchanges an earlier turn
        dropped stay dropped: the prompt grows from the same start (its cache stays usable)."""
        config = self.agent.config
        limit = min(config.prompt_token_budget, self.model.max_positions or config.prompt_token_budget)
        budget = limit - config.sampler.max_new_tokens
        current, margin = delimit_player_text(clean_player_text), min(config.history_drop_margin, budget // 2)
        encode = self.model.tokenizer.encode_chat
        return fit_prompt(encode, self.agent.system_prompt, self.exchanges, current, budget, self._first_shown, margin)

    def _stored_prompt(self, messages: list[Message], prompt: list[int]) -> list[int]:
        """The prompt as the play log keeps it (``player_text_storage``): the same messages as the
        model's prompt ``messages``, each player line and NPC line in its stored form."""
        if self._storage.raw or not prompt:
            return prompt
        return self.model.tokenizer.encode_chat([self._storage.stored_message(m) for m in messages])

    def _run_turn(
        self, pending: PendingLine, turn_index: int, raw_player_text: str, clean: str, logged_hook: Callable[[], None]
    ) -> None:
        """A whole turn in its worker; nothing raised here ever leaves the thread: a failure becomes
        a fallback line, a logged turn whose ``filter_reason`` names the cause, and a log message.
        ``logged_hook`` runs once the turn's record is logged (or cannot be)."""
        started = time.perf_counter()
        kept = logged = False
        try:
            line, prompt, generation, rejected = self._answer(pending, turn_index, clean, started)
            self._keep_line(line, clean)
            kept = True
            self._log_turn(line, raw_player_text, prompt, rejected)
            logged = True
            logged_hook()
            self._after_line(pending, line, generation)
        except Exception as exc:  # a turn must never take the game (or its thread) down
            log.exception("NPC %s: turn %d failed; answering with a fallback line", self.agent.npc_id, turn_index)
            if not pending.done:
                line = self._line(turn_index, None, f"{type(exc).__name__}: {exc}", started, 0.0)
                try:
                    if not kept:
                        self._keep_line(line, clean)
                    if not logged:
                        self._log_turn(line, raw_player_text, [])
                except Exception:
                    log.exception("NPC %s: could not log the fallback of turn %d", self.agent.npc_id, turn_index)
                pending.finish(line)
        finally:
            logged_hook()
            if not pending.done:  # interrupted by a BaseException: still never leave a game waiting
                pending.finish(self._line(turn_index, None, "interrupted", started, 0.0))

    def _answer(
        self, pending: PendingLine, turn_index: int, clean: str, started: float
    ) -> tuple[NpcLine, list[int], Generation | None, list[NpcLine]]:
        """The turn's line, its prompt as logged, the generation whose cache the memory keeps, and
        every sample's line that contradicted the persona card, in the order drawn.

        A line that contradicts the card is sampled again, at most ``consistency_retries`` times
        and while the turn's time budget lasts; the line is then the last sample's, so the logged
        ids and log-probs are always those of the sample the line came from. The contradicting
        samples are logged too, for training (docs/TRAINING.md)."""
        result, error, prompt, generation, waited = self._generate(pending, clean, started)
        line = first = self._line(turn_index, result, error, started, waited)
        rejected = [line] if contradicts_card(line) else []
        budget = self.agent.config.time_budget_s
        # the budget runs from when the first sample held its KV slot (see ``stream_into``)
        deadline = None if budget is None or result is None else started + waited + result.queue_s + budget
        for attempt in range(1, (self.agent.config.consistency_retries or 0) + 1):
            left = None if deadline is None else deadline - time.perf_counter()
            if not contradicts_card(line) or generation is None or (left is not None and left <= 0):
                break
            retry = Retry(generation, attempt, left, started, self._persona_prefix(generation.prompt_ids))
            generation, result, error = resample(self.agent, self.model, pending, retry)
            waited += result.queue_s if result is not None else 0.0
            line = self._line(turn_index, result, error, started, waited)
            rejected += [line] if contradicts_card(line) else []
        if line is not first and not (line.fallback or line.filtered):
            line = replace(line, filter_reason=f"{RESAMPLED}{first.filter_reason}")
        return line, prompt, generation, rejected

    def _generate(self, pending: PendingLine, clean: str, started: float) -> Generated:
        config = self.agent.config
        prompt: list[int] = []
        messages: list[Message] = []
        generation: Generation | None = None
        waited = 0.0
        history = self.memory.take(config.time_budget_s)  # after the previous turn's cache extension
        try:
            messages, prompt, self._first_shown = self._prompt(clean)
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
            stream_into(generation, pending, config.time_budget_s, self.model.tokenizer.strip_special_tokens)
            # rendered after the line, off the time to first token; only the log needs it
            return generation.result, None, self._stored_prompt(messages, prompt), generation, waited
        except Exception as exc:  # the model failed: a fallback line, the cause in the log
            log.exception("NPC %s failed to generate; answering with a fallback line", self.agent.npc_id)
            if generation is None:
                self.memory.store(history)  # no generation took it over: the next turn may still use it
            stored = self._stored_prompt(messages, prompt)
            return None, f"{type(exc).__name__}: {exc}", stored, generation, waited

    def _line(
        self, turn_index: int, result: GenerationResult | None, error: str | None, started: float, waited: float
    ) -> NpcLine:
        special = self.model.tokenizer.special_token_strings
        return make_line(
            final_text(self.agent, special, result, error, turn_index), turn_index, result, started, waited
        )

    def _keep_line(self, line: NpcLine, clean: str) -> None:
        with self._lock:
            self.lines.append(line)
            if not line.fallback and not line.filtered:
                self.exchanges.append((delimit_player_text(clean), line.text))
            self._last_line_at = time.monotonic()

    def _log_turn(
        self, line: NpcLine, raw_player_text: str, prompt: list[int], rejected: Sequence[NpcLine] = ()
    ) -> None:
        """Log the turn (``npcrl.agent.turn_record``); ``prompt`` is already the stored one."""
        agent = self.agent
        self._log(
            turn_record(
                self.conversation_id,
                agent.npc_id,
                self.model,
                agent.config,
                self._storage,
                line,
                raw_player_text,
                prompt,
                rejected,
            )
        )

    def _after_line(self, pending: PendingLine, line: NpcLine, generation: Generation | None) -> None:
        """Show the line, then (while the player reads it) extend the cache for the next turn."""
        reuse = self.agent.config.reuse_persona_prefix
        cache = generation.cache if generation is not None else None
        if line.fallback or line.filtered or cache is None or not reuse:
            # the line is not part of the memory, but the prompt's KV up to it still is
            self.memory.store(cache if reuse else None)
            pending.finish(line)
            return
        self.memory.begin_update()
        pending.finish(line)
        # the KV state of the conversation so far, up to where the player's next words will go
        self.memory.advance(cache, lambda: prompt_stem(self.build_prompt))

    def _persona_prefix(self, prompt: list[int]) -> KVCache | None:
        if not self.agent.config.reuse_persona_prefix:
            return None
        prefix = self.agent.prefix_cache(self.model)
        if prefix is not None and len(prefix) < len(prompt) and prompt[: len(prefix)] == prefix.token_ids:
            return prefix
        return None  # the template tokenised the system turn differently in context

    def player_typing(self, text: str) -> None:
        """The player has typed ``text`` so far: prefill, in a worker thread, the whole prompt the
        NPC would get if the player sent it now. If the player does send it, the answer starts
        without any prefill; if they type on, the cache is rewound to what still matches. Call it
        on every key; it never blocks, and while a prefill runs only the latest text is kept."""
        if self.ended or not self.agent.config.reuse_persona_prefix:
            return
        if self._pending is not None and not self._pending.done:
            return
        self.memory.typed(text, lambda typed: self.build_prompt(self._clean(typed)))

    def _clean(self, player_text: str) -> str:
        return sanitize_player_text(
            player_text, self.model.tokenizer.special_token_strings, self.agent.config.max_player_chars
        )

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
        """End the conversation (idempotent) and give its KV slot back now; a turn still running
        gives its own back when it finishes."""
        with self._lock:
            if self.ended:
                return
            self.ended = True
        self.memory.close()
        self._log(ConversationEnd(conversation_id=self.conversation_id, reason=reason, time=time.time()))

    def _log(self, record: Record) -> None:
        if self.agent.log_writer is None:
            return
        try:
            self.agent.log_writer.append(record)
        except NpcrlError:  # e.g. the writer was closed while a turn finished: the game goes on
            log.exception("play log refused a %s record", type(record).__name__)
