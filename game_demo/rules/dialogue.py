"""One conversation as the player sees it: the transcript, the streaming NPC line, the reply box,
quick replies, ratings and quest offers. A state machine over npcrl's ``Conversation`` with no
pygame in it; the game loop calls ``update`` once per frame and never blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from game_demo.rules.quests import Quest, offered_quest
from game_demo.rules.scroll import ScrollWindow

MAX_DRAFT_CHARS = 200
"""the reply box stops taking characters here (npcrl cuts player text at 300 anyway)"""
NOTICE_SECONDS = 2.5
VISIBLE_LINES = 7
"""transcript lines the dialogue panel shows at once"""


class LineLike(Protocol):
    """What the dialogue reads from an ``npcrl.agent.npc_agent.NpcLine``."""

    @property
    def text(self) -> str: ...
    @property
    def turn_index(self) -> int: ...


class PendingLike(Protocol):
    """What the dialogue uses of an ``npcrl.agent.npc_agent.PendingLine``."""

    @property
    def started(self) -> bool: ...
    @property
    def done(self) -> bool: ...
    def poll(self) -> str: ...
    def cancel(self) -> None: ...
    def result(self, timeout: float | None = None) -> LineLike: ...


class ConversationLike(Protocol):
    """What the dialogue uses of an ``npcrl.agent.npc_agent.Conversation``."""

    @property
    def greeting(self) -> str: ...
    def respond_async(self, player_text: str) -> PendingLike: ...
    def player_typing(self, text: str) -> None: ...
    def rate(self, positive: bool) -> None: ...
    def accept_quest(self, quest: str) -> None: ...
    def walk_away(self) -> None: ...
    def end(self, reason: str = "ended") -> None: ...


class Phase(Enum):
    LISTENING = "listening"
    """the NPC waits for the player"""
    THINKING = "thinking"
    """the NPC's line was asked for and no text has arrived yet"""
    SPEAKING = "speaking"
    """the NPC's line is streaming in"""
    ENDED = "ended"


@dataclass
class Entry:
    """One line of the transcript."""

    speaker: str
    """"npc" or "player\""""
    text: str
    turn_index: int | None = None
    """the NPC turn this line is (None for the greeting and for player lines)"""
    streaming: bool = False
    revised: bool = False
    """the final line differs from what streamed in (trimmed, filtered or a fallback)"""


class Dialogue:
    def __init__(
        self,
        conversation: ConversationLike,
        npc_id: str,
        npc_name: str,
        quick_replies: Sequence[str] = (),
        quests: Sequence[Quest] = (),
        taken_quests: set[str] | None = None,
        visible_lines: int = VISIBLE_LINES,
    ) -> None:
        self.conversation = conversation
        self.npc_id = npc_id
        self.npc_name = npc_name
        self.quick_replies = tuple(quick_replies[:3])
        self.quests = tuple(quests)
        # Shared with the game, so a quest taken in one talk is not offered again in the next.
        self.taken_quests = taken_quests if taken_quests is not None else set()
        self.entries: list[Entry] = [Entry("npc", conversation.greeting)]
        self.phase = Phase.LISTENING
        self.typing = False
        self.draft = ""
        self.offered: Quest | None = None
        self.end_reason: str | None = None
        self.scroll = ScrollWindow(visible_lines)
        """the transcript view; the renderer tells it how many wrapped lines there are"""
        self._pending: PendingLike | None = None
        self.abandoned: PendingLike | None = None
        """a line cut off by leaving: it still finishes (and is logged) in its worker thread"""
        self._last_turn: int | None = None
        self._rated: set[int] = set()
        self._notice: tuple[str, float] | None = None
        self._now = 0.0

    # ------------------------------------------------------------------ per frame

    def update(self, now: float) -> None:
        """Take the NPC's newly streamed text; finish the line once the worker is done. Never blocks."""
        self._now = now
        if self._notice is not None and now >= self._notice[1]:
            self._notice = None
        pending = self._pending
        if pending is None:
            return
        entry = self.entries[-1]
        new = pending.poll()
        if new:
            entry.text += new
        if self.phase is Phase.THINKING and (new or pending.started):
            self.phase = Phase.SPEAKING
        if pending.done:
            self._finish(pending.result(timeout=0), entry)

    def _finish(self, line: LineLike, entry: Entry) -> None:
        streamed = entry.text.strip()
        entry.text = line.text  # the line npcrl settled on is what the player keeps reading
        entry.revised = line.text.strip() != streamed
        entry.streaming = False
        entry.turn_index = line.turn_index
        self._pending = None
        self._last_turn = line.turn_index
        self.phase = Phase.LISTENING
        offer = offered_quest(line.text, self.quests, self.taken_quests)
        if offer is not None:
            self.offered = offer

    # ------------------------------------------------------------------ player actions

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def npc_busy(self) -> bool:
        return self.phase in (Phase.THINKING, Phase.SPEAKING)

    @property
    def notice(self) -> str | None:
        return self._notice[0] if self._notice is not None else None

    def say(self, message: str) -> None:
        self._notice = (message, self._now + NOTICE_SECONDS)

    def send(self, text: str) -> bool:
        """Say ``text`` to the NPC; False (with a notice) if the NPC is still talking or text is empty."""
        text = text.strip()
        if self.ended or not text:
            return False
        if self.npc_busy:
            self.say(f"{self.npc_name} is still talking.")
            return False
        self.entries.append(Entry("player", text))
        self._pending = self.conversation.respond_async(text)
        self.entries.append(Entry("npc", "", streaming=True))
        self.phase = Phase.THINKING
        return True

    def quick_reply(self, index: int) -> bool:
        if not 0 <= index < len(self.quick_replies):
            return False
        return self.send(self.quick_replies[index])

    def begin_typing(self) -> None:
        if not self.ended:
            self.typing = True

    def type_text(self, text: str) -> None:
        if self.typing:
            # Control characters would reach the log and the model; npcrl strips them too, but the
            # reply box should not show them in the first place.
            clean = "".join(ch for ch in text if ch.isprintable())
            self.draft = (self.draft + clean)[:MAX_DRAFT_CHARS]
            self._draft_changed()

    def backspace(self) -> None:
        if self.typing:
            self.draft = self.draft[:-1]
            self._draft_changed()

    def _draft_changed(self) -> None:
        # The NPC prefills the prompt as it would be sent now, so Enter gets an answer at once.
        if self.draft.strip() and not self.npc_busy:
            self.conversation.player_typing(self.draft)

    def cancel_typing(self) -> None:
        self.typing = False
        self.draft = ""

    def submit(self) -> bool:
        """Enter in the reply box: send the draft; an empty draft just closes the box."""
        if not self.draft.strip():
            self.cancel_typing()
            return False
        if self.send(self.draft):
            self.cancel_typing()
            return True
        return False  # the NPC is still talking: keep the draft for the player to send later

    def rate(self, positive: bool) -> bool:
        """Rate the NPC's latest finished line, once per line."""
        if self.ended or self._last_turn is None:
            self.say("Nothing to rate yet.")
            return False
        if self._busy_refusal():
            return False
        if self._last_turn in self._rated:
            self.say("You already rated that line.")
            return False
        self.conversation.rate(positive)
        self._rated.add(self._last_turn)
        self.say("You liked that line." if positive else "You disliked that line.")
        return True

    def accept_quest(self) -> Quest | None:
        if self.ended or self.offered is None or self._last_turn is None:
            self.say(f"{self.npc_name} has not offered a quest.")
            return None
        if self._busy_refusal():
            return None
        quest = self.offered
        self.conversation.accept_quest(quest.name)
        self.taken_quests.add(quest.name)
        self.offered = None
        self.say(f"Quest accepted: {quest.name}")
        return quest

    def _busy_refusal(self) -> bool:
        """npcrl attaches an event to the conversation's newest line, and while the NPC speaks that
        can become the line the player has not read yet; so events wait for the line to end."""
        if self.npc_busy:
            self.say(f"Wait for {self.npc_name} to finish.")
            return True
        return False

    def leave(self, walked_off: bool) -> str:
        """End the conversation. Walking off is always ``walk_away`` (the player left the NPC); Esc
        is ``walk_away`` only if it cut the NPC off mid-line, else a plain end at a natural pause."""
        if self.ended:
            return self.end_reason or "ended"
        if walked_off or self.npc_busy:
            self.conversation.walk_away()  # also cancels a line still generating
            return self._close("walked_away")
        self.conversation.end("player_left")
        return self._close("player_left")

    def close(self, reason: str) -> str:
        """End without a player signal (the game is closing): cancel a line in progress, log ``reason``."""
        if self.ended:
            return self.end_reason or "ended"
        if self._pending is not None and not self._pending.done:
            self._pending.cancel()
        self.conversation.end(reason)
        return self._close(reason)

    def _close(self, reason: str) -> str:
        if self._pending is not None and not self._pending.done:
            self.abandoned = self._pending
        self._pending = None
        self.typing = False
        self.phase = Phase.ENDED
        self.end_reason = reason
        return reason
