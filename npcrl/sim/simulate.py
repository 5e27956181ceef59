"""Headless play: simulated players talk to NPCs through the agent API and leave real play logs.

Each conversation runs the way a game runs one: ``Conversation.respond`` for each player line,
then ``rate`` / ``accept_quest`` / ``walk_away`` / ``end`` as the player's profile reacts to the
line it was shown (``NpcLine.text``: the model's line, or the fallback line that replaced it).
The agent logs every turn with its token ids and log-probs and records ``reply`` events itself,
so the logs are ordinary play logs that ``npcrl rewards`` and ``npcrl train`` read.

Time is simulated: nothing sleeps. The player's answer delay is drawn from the profile and
becomes the value of the ``reply`` event that the agent records when the next line is sent (see
``_SimulatedConversation``). A run is reproducible from ``seed``: conversation k's profile, its
random stream and its sampler seed depend only on (seed, k), so the first 6 conversations of a
12-conversation run equal a 6-conversation run. Conversation ids and wall-clock times differ
between runs; a turn that runs past the agent's time budget (a very busy machine) ends in a
fallback line and may make two runs differ.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from npcrl.agent import AgentConfig, Conversation, NpcAgent, with_sampler
from npcrl.persona import Persona
from npcrl.playlog import PlayLogWriter
from npcrl.runtime import OnnxCausalLM
from npcrl.sim.features import FEATURES, best_quest, line_features
from npcrl.sim.profiles import PlayerProfile, Reaction

_SEED_MASK = (1 << 63) - 1


def derive_seed(seed: int, index: int, purpose: str) -> int:
    """A seed for one purpose of conversation ``index``, stable across runs and platforms."""
    digest = hashlib.sha256(f"npcrl-sim/{seed}/{index}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK


class _SimulatedConversation(Conversation):
    """A ``Conversation`` whose ``reply`` events carry the simulated answer delay.

    The agent records ``reply`` itself when the next player line arrives, valued by the wall-clock
    time since the NPC's last line; without sleeping that would be microseconds. This subclass
    changes only that value, to ``reply_latency_s``; the event's kind, turn, data and place in the
    log stay the agent's own, so a simulated log has exactly the records a game's would.
    """

    reply_latency_s: float | None = None

    def record(self, kind: str, value: float | None = None, *, turn_index: int | None = None, **data: Any) -> None:
        if kind == "reply" and self.reply_latency_s is not None:
            value, self.reply_latency_s = self.reply_latency_s, None
        super().record(kind, value, turn_index=turn_index, **data)


@dataclass(frozen=True)
class SimulatedTurn:
    """One NPC line and the player's reaction to it."""

    player_text: str
    npc_text: str
    fallback: bool
    """the line shown was a fallback or filtered line, not the model's"""
    features: Mapping[str, float]
    reaction: Reaction
    quest: str | None
    """the quest accepted after this line, if any"""


@dataclass(frozen=True)
class SimulatedConversation:
    """One finished conversation (passed to ``on_conversation``)."""

    index: int
    conversation_id: str
    persona_id: str
    profile: str
    turns: tuple[SimulatedTurn, ...]
    end_reason: str
    """"walked_away" or "done" (the player's patience, ``max_turns``, ran out)"""


@dataclass
class ProfileCounts:
    conversations: int = 0
    turns: int = 0
    walk_aways: int = 0
    ratings_positive: int = 0
    ratings_negative: int = 0
    quests_accepted: int = 0


@dataclass
class SimulationSummary:
    conversations: int = 0
    turns: int = 0
    """NPC lines shown"""
    fallback_turns: int = 0
    """lines that were fallback or filtered lines (untrainable)"""
    walk_aways: int = 0
    ratings_positive: int = 0
    ratings_negative: int = 0
    quests_accepted: int = 0
    mean_features: dict[str, float] = field(default_factory=dict)
    """each feature's mean over every NPC line shown (``words``: mean words per line)"""
    per_profile: dict[str, ProfileCounts] = field(default_factory=dict)
    simulated_reply_seconds: float = 0.0
    """sum of the players' simulated answer delays"""
    seconds: float = 0.0
    """wall-clock seconds the simulation took"""

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "turns": self.turns,
            "fallback_turns": self.fallback_turns,
            "walk_aways": self.walk_aways,
            "ratings_positive": self.ratings_positive,
            "ratings_negative": self.ratings_negative,
            "quests_accepted": self.quests_accepted,
            "mean_features": dict(self.mean_features),
            "per_profile": {name: vars(counts).copy() for name, counts in self.per_profile.items()},
            "simulated_reply_seconds": self.simulated_reply_seconds,
            "seconds": self.seconds,
        }


def _as_list(items: Mapping[str, Any] | Sequence[Any], what: str) -> list[Any]:
    values = list(items.values()) if isinstance(items, Mapping) else list(items)
    if not values:
        raise ValueError(f"simulate needs at least one {what}")
    return values


def play_conversation(
    agent: NpcAgent, profile: PlayerProfile, rng: random.Random, index: int = 0
) -> SimulatedConversation:
    """One conversation between ``agent`` and a player of ``profile``, drawing from ``rng``."""
    persona = agent.persona
    conversation = _SimulatedConversation(agent, player_id=f"sim-{profile.name}")
    shown: list[str] = []
    turns: list[SimulatedTurn] = []
    accepted: set[str] = set()
    end_reason = "done"
    for turn in range(profile.max_turns):
        player_text = profile.player_line(persona, turn, rng)
        line = conversation.respond(player_text)  # records the reply to the previous line
        features = line_features(line.text, persona, shown)
        shown.append(line.text)
        reaction = profile.react(features, rng)
        quest = best_quest(line.text, persona) if reaction.quest_accepted else None
        if quest in accepted:  # a player takes each quest once
            quest = None
        if quest is not None:
            accepted.add(quest)
        turns.append(SimulatedTurn(player_text, line.text, line.fallback or line.filtered, features, reaction, quest))
        if reaction.rating is not None:
            conversation.rate(reaction.rating > 0, turn_index=line.turn_index)
        if quest is not None:
            conversation.accept_quest(quest, turn_index=line.turn_index)
        if reaction.walk_away:
            conversation.walk_away()
            end_reason = "walked_away"
            break
        conversation.reply_latency_s = reaction.reply_latency_s
    else:
        conversation.end("done")
    return SimulatedConversation(
        index, conversation.conversation_id, persona.id, profile.name, tuple(turns), end_reason
    )


def simulate(
    model: OnnxCausalLM,
    personas: Mapping[str, Persona] | Sequence[Persona],
    profiles: Mapping[str, PlayerProfile] | Sequence[PlayerProfile],
    log_writer: PlayLogWriter | None,
    conversations: int,
    seed: int,
    agent_config: AgentConfig | None = None,
    on_conversation: Callable[[SimulatedConversation], None] | None = None,
    system_prompts: Mapping[str, str] | None = None,
) -> SimulationSummary:
    """Play ``conversations`` headless conversations and log them to ``log_writer`` (flushed at the
    end, not closed).

    Conversation k talks to persona ``k % len(personas)`` (one ``NpcAgent`` per persona on the
    shared ``model``) with a player profile drawn from a seeded generator; the NPC samples with
    ``agent_config`` (default ``AgentConfig()``) under a sampler seed derived from (seed, k).
    ``system_prompts`` optionally replaces a persona's system prompt by persona id (a model with a
    short context, as in tests). ``on_conversation`` is called after each conversation.
    """
    if isinstance(conversations, bool) or not isinstance(conversations, int) or conversations < 0:
        raise ValueError(f"conversations must be an int >= 0, got {conversations!r}")
    persona_list: list[Persona] = _as_list(personas, "persona")
    profile_list: list[PlayerProfile] = _as_list(profiles, "player profile")
    base = agent_config or AgentConfig()
    prompts = system_prompts or {}
    unknown = sorted(set(prompts) - {p.id for p in persona_list})
    if unknown:
        raise ValueError(f"system_prompts names persona(s) {', '.join(map(repr, unknown))} that are not simulated")
    agents = [
        NpcAgent(model, p, log_writer=log_writer, config=base, system_prompt=prompts.get(p.id)) for p in persona_list
    ]
    started = time.perf_counter()
    summary = SimulationSummary(per_profile={p.name: ProfileCounts() for p in profile_list})
    feature_sums = dict.fromkeys((*FEATURES, "words"), 0.0)
    for k in range(conversations):
        agent = agents[k % len(agents)]
        profile = profile_list[random.Random(derive_seed(seed, k, "profile")).randrange(len(profile_list))]
        # Conversations run one after another, so the agent's config can change between them.
        agent.config = with_sampler(base, seed=derive_seed(seed, k, "sampler"))
        result = play_conversation(agent, profile, random.Random(derive_seed(seed, k, "player")), k)
        _count(summary, summary.per_profile[profile.name], result, feature_sums)
        if on_conversation is not None:
            on_conversation(result)
    if summary.turns:
        summary.mean_features = {name: total / summary.turns for name, total in feature_sums.items()}
    if log_writer is not None:
        log_writer.flush()
    summary.seconds = time.perf_counter() - started
    return summary


def _count(
    summary: SimulationSummary, counts: ProfileCounts, result: SimulatedConversation, feature_sums: dict[str, float]
) -> None:
    walked = result.end_reason == "walked_away"
    positive = sum(1 for t in result.turns if t.reaction.rating is not None and t.reaction.rating > 0)
    negative = sum(1 for t in result.turns if t.reaction.rating is not None and t.reaction.rating < 0)
    quests = sum(1 for t in result.turns if t.quest is not None)
    for target in (summary, counts):
        target.conversations += 1
        target.turns += len(result.turns)
        target.walk_aways += int(walked)
        target.ratings_positive += positive
        target.ratings_negative += negative
        target.quests_accepted += quests
    summary.fallback_turns += sum(1 for t in result.turns if t.fallback)
    # The last line gets no answer: the player left or was done.
    summary.simulated_reply_seconds += sum(t.reaction.reply_latency_s for t in result.turns[:-1])
    for t in result.turns:
        for name in feature_sums:
            feature_sums[name] += t.features[name]
