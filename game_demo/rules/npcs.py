"""The village's NPCs: which persona stands where, what the player can quickly say to each, and
how their npcrl agents are made (one shared model, one agent per NPC)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from game_demo.rules.dialogue import ConversationLike
from game_demo.rules.quests import Quest, quests_from_goals
from game_demo.rules.world import NpcSpot, World
from npcrl import NpcAgent, OnnxCausalLM, Persona, PlayLogWriter

QUICK_REPLIES: dict[str, tuple[str, str, str]] = {
    "blacksmith": ("Can you fix my sword?", "Is there work for me?", "Any news from the north road?"),
    "innkeeper": ("A room for the night, please.", "Heard any gossip?", "Is there work for me here?"),
    "guard": ("I'm only passing through.", "Any trouble on the roads?", "Can I help the watch?"),
    "miller": ("A sack of flour, please.", "Why is the wheel so slow?", "Is there work for me?"),
}
DEFAULT_QUICK_REPLIES = ("Hello there!", "Is there work for me?", "What news?")


class AgentLike(Protocol):
    """What the game uses of an ``npcrl.agent.npc_agent.NpcAgent``."""

    def start_conversation(self, player_id: str = "player") -> ConversationLike: ...
    def swap_model(self, model: Any) -> None: ...
    def warm_up(self) -> Any: ...


AgentFactory = Callable[[OnnxCausalLM, Persona, PlayLogWriter], NpcAgent]


def default_agent_factory(model: OnnxCausalLM, persona: Persona, writer: PlayLogWriter) -> NpcAgent:
    return NpcAgent(model, persona, log_writer=writer)


@dataclass
class Npc:
    spot: NpcSpot
    name: str
    role: str
    agent: AgentLike
    quests: tuple[Quest, ...]
    quick_replies: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.spot.persona_id

    @property
    def pos(self) -> tuple[float, float]:
        return (self.spot.x, self.spot.y)


def make_npc(spot: NpcSpot, persona: Persona, agent: AgentLike) -> Npc:
    return Npc(
        spot=spot,
        name=persona.name,
        role=persona.role,
        agent=agent,
        quests=tuple(quests_from_goals(persona.id, persona.goals)),
        quick_replies=QUICK_REPLIES.get(persona.id, DEFAULT_QUICK_REPLIES),
    )


def build_npcs(
    world: World,
    personas: Mapping[str, Persona],
    model: OnnxCausalLM,
    writer: PlayLogWriter,
    factory: AgentFactory = default_agent_factory,
) -> list[Npc]:
    """An NPC at every spot of ``world`` whose persona exists; all of them share ``model``."""
    missing = [spot.persona_id for spot in world.npcs if spot.persona_id not in personas]
    if missing:
        raise KeyError(f"no persona card for NPC spot(s) {', '.join(missing)}; have {', '.join(sorted(personas))}")
    return [
        make_npc(spot, personas[spot.persona_id], factory(model, personas[spot.persona_id], writer))
        for spot in world.npcs
    ]
