"""The game's state and rules for one frame: movement, who is in reach, starting and ending
conversations, hot swaps between conversations, the stats overlay. No pygame: the app turns input
into ``Action``s and draws what this module holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from game_demo.rules.actions import Act, Action
from game_demo.rules.dialogue import Dialogue
from game_demo.rules.npcs import Npc
from game_demo.rules.world import Player, World, distance, move, nearest_npc

TALK_RADIUS = 60.0
"""how close (centre to centre, pixels) the player must be to start talking"""
LEAVE_RADIUS = 110.0
"""walking further than this from the NPC ends the talk as a walk-away; the gap between the two
radii keeps a player who shuffles at the edge from ending the talk by accident"""
MAX_FRAME_DT = 0.1
"""a longer frame (a stall, a dragged window) moves the player as if it took this long"""
SCROLL_STEP = 3


class SwapperLike(Protocol):
    def set_idle(self, idle: bool) -> None: ...
    def take_ready(self) -> tuple[str, Any] | None: ...
    @property
    def status(self) -> str: ...


class StatsLike(Protocol):
    def request(self) -> bool: ...


class WarmerLike(Protocol):
    def start(self, agents: Sequence[Any]) -> None: ...


class Game:
    def __init__(
        self,
        world: World,
        npcs: list[Npc],
        *,
        bundle_id: str,
        player_id: str = "player",
        swapper: SwapperLike | None = None,
        stats: StatsLike | None = None,
        warmer: WarmerLike | None = None,
    ) -> None:
        self.world = world
        self.npcs = npcs
        self.player = Player(*world.player_start)
        self.player_id = player_id
        self.bundle_id = bundle_id
        self.swapper = swapper
        self.stats = stats
        self.warmer = warmer
        self.dialogue: Dialogue | None = None
        self.partner: Npc | None = None
        self.taken_quests: set[str] = set()
        self.stats_visible = False
        self.quit_requested = False
        self.time = 0.0
        """seconds of game time (the sum of frame times), for animations and notices"""
        self.swaps = 0
        self.in_flight: list[Any] = []
        """NPC lines cut off by the player leaving, still finishing in their threads: the app waits
        for them before closing the play log, so their turns are logged, not lost"""

    # ------------------------------------------------------------------ queries

    @property
    def typing(self) -> bool:
        return self.dialogue is not None and self.dialogue.typing

    @property
    def in_dialogue(self) -> bool:
        return self.dialogue is not None

    def npc_in_reach(self) -> Npc | None:
        spot = nearest_npc(self.player.pos, self.world.npcs, TALK_RADIUS)
        return next((npc for npc in self.npcs if npc.spot is spot), None)

    # ------------------------------------------------------------------ input

    def apply(self, action: Action) -> None:
        """One player action, in the order the events arrived (so Enter-then-typing works in one frame)."""
        act, dialogue = action.act, self.dialogue
        if act is Act.QUIT:
            self.quit_requested = True
        elif act is Act.TOGGLE_STATS:
            self.stats_visible = not self.stats_visible
            if self.stats_visible and self.stats is not None:
                self.stats.request()  # fresh numbers each time the overlay opens
        elif act is Act.TALK:
            if dialogue is None:
                self.start_talk()
            else:
                dialogue.begin_typing()  # Enter inside a conversation opens the reply box
        elif act is Act.LEAVE:
            if dialogue is not None:
                self.end_talk(walked_off=False)
            else:
                self.stats_visible = False
        elif dialogue is not None:
            self._apply_dialogue(action, dialogue)

    def _apply_dialogue(self, action: Action, dialogue: Dialogue) -> None:
        act = action.act
        if act is Act.START_TYPING:
            dialogue.begin_typing()
        elif act is Act.TYPE:
            dialogue.type_text(action.text)
        elif act is Act.BACKSPACE:
            dialogue.backspace()
        elif act is Act.SUBMIT:
            dialogue.submit()
        elif act is Act.CANCEL_TYPING:
            dialogue.cancel_typing()
        elif act is Act.QUICK_REPLY:
            dialogue.quick_reply(action.index)
        elif act is Act.RATE_UP:
            dialogue.rate(positive=True)
        elif act is Act.RATE_DOWN:
            dialogue.rate(positive=False)
        elif act is Act.ACCEPT_QUEST:
            dialogue.accept_quest()
        elif act is Act.SCROLL:
            dialogue.scroll.scroll(action.index * SCROLL_STEP)

    def start_talk(self) -> bool:
        npc = self.npc_in_reach()
        if npc is None or self.dialogue is not None:
            return False
        conversation = npc.agent.start_conversation(self.player_id)
        self.dialogue = Dialogue(
            conversation, npc.id, npc.name, npc.quick_replies, npc.quests, taken_quests=self.taken_quests
        )
        self.dialogue.update(self.time)
        self.partner = npc
        return True

    def end_talk(self, walked_off: bool) -> None:
        if self.dialogue is not None:
            self.dialogue.leave(walked_off)
            if self.dialogue.abandoned is not None:
                self.in_flight.append(self.dialogue.abandoned)
        self.dialogue = None
        self.partner = None

    def shutdown(self) -> None:
        """The game is closing: end an open conversation as ``game_closed`` (not a walk-away: closing
        the game says nothing about the NPC's line), so the log does not show it as a crash."""
        if self.dialogue is not None:
            self.dialogue.close("game_closed")
            if self.dialogue.abandoned is not None:
                self.in_flight.append(self.dialogue.abandoned)
        self.dialogue = None
        self.partner = None

    # ------------------------------------------------------------------ per frame

    def update(self, dt: float, move_x: float, move_y: float) -> None:
        dt = min(max(dt, 0.0), MAX_FRAME_DT)
        self.time += dt
        if self.in_flight:
            self.in_flight = [pending for pending in self.in_flight if not pending.done]
        if self.dialogue is not None:
            self.dialogue.update(self.time)
        move(self.player, move_x, move_y, dt, self.world)
        if self.partner is not None and distance(self.player.pos, self.partner.pos) > LEAVE_RADIUS:
            self.end_talk(walked_off=True)
        if self.swapper is not None:
            self._hot_swap(self.swapper)

    def _hot_swap(self, swapper: SwapperLike) -> None:
        idle = self.dialogue is None
        swapper.set_idle(idle)
        if not idle:
            return  # a conversation keeps its model to the end; swap only between conversations
        ready = swapper.take_ready()
        if ready is None:
            return
        bundle_id, model = ready
        if bundle_id == self.bundle_id:
            return
        for npc in self.npcs:
            npc.agent.swap_model(model)
        self.bundle_id = bundle_id
        self.swaps += 1
        if self.warmer is not None:
            self.warmer.start([npc.agent for npc in self.npcs])
