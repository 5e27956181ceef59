"""What the player asked for this frame, independent of which key or device asked for it.

``controls`` turns pygame events into these; the game logic consumes them without pygame, and a
test can feed them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Act(Enum):
    TALK = "talk"
    """start a conversation with the NPC in reach"""
    LEAVE = "leave"
    START_TYPING = "start_typing"
    TYPE = "type"
    """``text`` goes into the reply box"""
    BACKSPACE = "backspace"
    SUBMIT = "submit"
    CANCEL_TYPING = "cancel_typing"
    QUICK_REPLY = "quick_reply"
    """``index`` 0-2"""
    RATE_UP = "rate_up"
    RATE_DOWN = "rate_down"
    ACCEPT_QUEST = "accept_quest"
    SCROLL = "scroll"
    """``index`` lines, positive = older"""
    TOGGLE_STATS = "toggle_stats"
    QUIT = "quit"


@dataclass(frozen=True)
class Action:
    act: Act
    text: str = ""
    index: int = 0
