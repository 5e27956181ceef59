"""The turns a server has answered, by turn id, so that a later event can be recorded against one."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from npcrl.agent.conversation import Conversation

MAX_TURNS = 4096
"""turn ids remembered at once; older ones are forgotten first (a game rates the line it just saw)"""


def turn_id(conversation_id: str, turn_index: int) -> str:
    """A turn's id: ``"<conversation id>:<turn index>"``, both as the play log has them."""
    return f"{conversation_id}:{turn_index}"


@dataclass(frozen=True)
class TurnRef:
    """What an event needs to be recorded against a turn."""

    conversation: Conversation
    turn_index: int


class TurnMap:
    """A bounded, thread-safe map from turn id to ``TurnRef``, least recently registered forgotten first."""

    def __init__(self, capacity: int = MAX_TURNS) -> None:
        self.capacity = capacity
        self._refs: OrderedDict[str, TurnRef] = OrderedDict()
        self._lock = threading.Lock()

    def register(self, key: str, conversation: Conversation, turn_index: int) -> None:
        with self._lock:
            self._refs[key] = TurnRef(conversation, turn_index)
            self._refs.move_to_end(key)
            while len(self._refs) > self.capacity:
                self._refs.popitem(last=False)

    def get(self, key: str) -> TurnRef | None:
        with self._lock:
            return self._refs.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._refs)
