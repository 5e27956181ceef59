"""The simulator's features of the lines an NPC said in play logs.

What a population's players were given to reward (``npcrl.sim.populations``: ``asks_back``,
``mentions_lore``, ...) measured on what a bundle said to them, the same way the simulated
players saw it (``line_features`` with the NPC's earlier lines of the conversation): so a table can
say not only that a round gained engagement but whether it learned what these players like.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from npcrl.agent.persona import Persona
from npcrl.errors import NpcrlError
from npcrl.playlog import LogReader, NpcTurn
from npcrl.sim.features import FEATURES, line_features


@dataclass(frozen=True)
class LineFeatures:
    lines: int
    means: dict[str, float]
    """each feature's mean over the lines (``npcrl.sim.features.FEATURES``), and ``words`` per line"""
    above_zero: dict[str, float]
    """each feature's share of lines where it is above zero"""


def logged_line_features(log_dir: Path, personas: Mapping[str, Persona]) -> LineFeatures:
    """Every feature's mean and share above zero over the NPC lines in ``log_dir``'s conversations,
    each line read with its NPC's earlier lines of the conversation (``personas``: by id, the cards
    they played)."""
    conversations: dict[str, dict[int, NpcTurn]] = {}
    for record in LogReader(log_dir):
        if isinstance(record, NpcTurn):  # a repeated record (a retried write) is one line
            conversations.setdefault(record.conversation_id, {})[record.turn_index] = record
    sums = dict.fromkeys((*FEATURES, "words"), 0.0)
    above = dict.fromkeys(FEATURES, 0)
    lines = 0
    for cid, turns in sorted(conversations.items()):
        earlier: list[str] = []
        for _, turn in sorted(turns.items()):
            persona = personas.get(turn.npc_id)
            if persona is None:
                raise NpcrlError(f"{log_dir}: conversation {cid} is with NPC {turn.npc_id!r}, whose card is not given")
            features = line_features(turn.text, persona, earlier)
            for name in sums:
                sums[name] += features[name]
            for name in above:
                above[name] += features[name] > 0
            earlier.append(turn.text)
            lines += 1

    def per_line(total: float) -> float:
        return total / lines if lines else float("nan")

    return LineFeatures(
        lines,
        {name: per_line(total) for name, total in sums.items()},
        {name: per_line(count) for name, count in above.items()},
    )
