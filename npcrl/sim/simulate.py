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
12-conversation run equal a 6-conversation run. Conversation ids depend on (bundle, seed, k) too
(``simulated_conversation_id``), so the trainer's holdout split of a rerun's logs is the same; a
directory that already holds this bundle's and seed's conversations is refused. Wall-clock times
differ between runs; a turn that runs past the agent's time budget (a very busy machine) ends in
a fallback line and may make two runs differ.

``concurrency`` plays several conversations at once, in worker threads with NPC agents of their
own; the model's scheduler batches their decode steps into one pass (four NPCs generating at once
gave 1.6x the throughput of one). Results do not depend on it: conversation k's seeds are the
same, a batched step gives the same tokens as a solo one, and the records reach the log, the
summary and ``on_conversation`` in conversation order, as in a serial run.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from npcrl.agent.npc_agent import AgentConfig, Conversation, NpcAgent, with_sampler
from npcrl.agent.persona import Persona
from npcrl.playlog import ConversationStart, LogReader, PlayLogWriter, list_log_files
from npcrl.runtime.model import OnnxCausalLM
from npcrl.sim.draws import PLAYER_ID_PREFIX, derive_seed, drawn_profile, simulated_conversation_id
from npcrl.sim.features import FEATURES, best_quest, line_features
from npcrl.sim.ordered import RecordBuffer, max_concurrency, play_concurrently
from npcrl.sim.profiles import PlayerProfile, Reaction

log = logging.getLogger(__name__)


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
    """What the players of one profile did (``SimulationSummary``: all players)."""

    conversations: int = 0
    turns: int = 0
    """NPC lines shown"""
    walk_aways: int = 0
    ratings_positive: int = 0
    ratings_negative: int = 0
    quests_accepted: int = 0

    def count(self, result: SimulatedConversation) -> None:
        """Add one finished conversation."""
        ratings = [t.reaction.rating for t in result.turns if t.reaction.rating is not None]
        self.conversations += 1
        self.turns += len(result.turns)
        self.walk_aways += int(result.end_reason == "walked_away")
        self.ratings_positive += sum(1 for rating in ratings if rating > 0)
        self.ratings_negative += sum(1 for rating in ratings if rating < 0)
        self.quests_accepted += sum(1 for t in result.turns if t.quest is not None)


@dataclass
class SimulationSummary(ProfileCounts):
    fallback_turns: int = 0
    """lines that were fallback or filtered lines (untrainable)"""
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
    agent: NpcAgent,
    profile: PlayerProfile,
    rng: random.Random,
    index: int = 0,
    conversation_id: str | None = None,
) -> SimulatedConversation:
    """One conversation between ``agent`` and a player of ``profile``, drawing from ``rng``
    (``conversation_id``: its id in the log; default a random one)."""
    persona = agent.persona
    conversation = _SimulatedConversation(agent, f"{PLAYER_ID_PREFIX}{profile.name}", conversation_id)
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
    concurrency: int = 1,
    first: int = 0,
) -> SimulationSummary:
    """Play ``conversations`` headless conversations and log them to ``log_writer`` (flushed at the
    end, not closed); with ``first`` > 0 only conversations ``first``..``conversations - 1``, going
    on with a cut-off run whose first ones ``npcrl.sim.resume.keep_finished`` kept (the summary then
    counts only those played).

    Conversation k talks to persona ``k % len(personas)`` (one ``NpcAgent`` per persona on the
    shared ``model``) with a player profile drawn from a seeded generator; the NPC samples with
    ``agent_config`` (default ``AgentConfig()``) under a sampler seed derived from (seed, k), without
    its wall-clock ``time_budget_s``, so a run's conversations do not depend on the machine's load.
    ``system_prompts`` optionally replaces a persona's system prompt by persona id (a model with a
    short context, as in tests). ``on_conversation`` is called after each conversation, in order.

    ``concurrency`` conversations are played at once (at most ``max_concurrency(model)``), each
    worker thread with agents of its own. The logs, the summary (but ``seconds``) and the
    callbacks are those of a serial run. An error in a worker stops the others from starting new
    conversations and is raised here once the ones in flight have finished.
    """
    _check_count("conversations", conversations, 0)
    _check_count("concurrency", concurrency, 1)
    _check_count("first", first, 0)
    if first > conversations:
        raise ValueError(f"first must be at most conversations ({conversations}), got {first}")
    persona_list: list[Persona] = _as_list(personas, "persona")
    profile_list: list[PlayerProfile] = _as_list(profiles, "player profile")
    prompts = _checked_prompts(system_prompts, persona_list)
    # No player waits on a headless line, and a wall-clock budget would make a run's conversations
    # depend on machine load (a 20 s budget cut two lines of an evaluation run beside another job).
    base = replace(agent_config or AgentConfig(), time_budget_s=None)
    to_play = range(first, conversations)
    workers = _worker_count(model, concurrency, len(to_play))
    if isinstance(log_writer, PlayLogWriter):
        _refuse_logged_run(log_writer.directory, simulated_conversation_id(model.bundle_id, seed, first))
    idle = _agent_sets(model, persona_list, base, prompts, log_writer, workers)
    play = _SeededPlay(idle, profile_list, base, seed, model.bundle_id).play
    started = time.perf_counter()
    tally = _Tally(profile_list, on_conversation)
    if workers == 1:
        for k in to_play:
            tally.add(play(k, None))
    else:
        play_concurrently(play, to_play, workers, log_writer, tally.add)
    summary = tally.summary()
    if log_writer is not None:
        log_writer.flush()
    summary.seconds = time.perf_counter() - started
    return summary


def _check_count(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _checked_prompts(system_prompts: Mapping[str, str] | None, personas: Sequence[Persona]) -> Mapping[str, str]:
    prompts = system_prompts or {}
    unknown = sorted(set(prompts) - {p.id for p in personas})
    if unknown:
        raise ValueError(f"system_prompts names persona(s) {', '.join(map(repr, unknown))} that are not simulated")
    return prompts


def _worker_count(model: OnnxCausalLM, concurrency: int, conversations: int) -> int:
    cap = max_concurrency(model)
    if concurrency > cap and conversations > cap:
        log.info("simulating %d conversations at once, not %d: half the model's KV slots", cap, concurrency)
    return max(1, min(concurrency, conversations, cap))


def _agent_sets(
    model: OnnxCausalLM,
    personas: Sequence[Persona],
    config: AgentConfig,
    prompts: Mapping[str, str],
    log_writer: PlayLogWriter | None,
    count: int,
) -> queue.SimpleQueue[list[NpcAgent]]:
    """``count`` sets of agents, one per persona: an agent's config is set per conversation, so each
    worker takes a set of its own; agents of one persona still share the model's persona prefix cache."""
    idle: queue.SimpleQueue[list[NpcAgent]] = queue.SimpleQueue()
    for _ in range(count):
        idle.put(
            [
                NpcAgent(model, p, log_writer=log_writer, config=config, system_prompt=prompts.get(p.id))
                for p in personas
            ]
        )
    return idle


@dataclass(frozen=True)
class _SeededPlay:
    """Plays conversation k of a run: its sampler seed, player profile and player draws all derive
    from (seed, k) alone, so a worker thread that picks k up plays what a serial run would."""

    idle: queue.SimpleQueue[list[NpcAgent]]
    profiles: Sequence[PlayerProfile]
    config: AgentConfig
    seed: int
    bundle_id: str

    def play(self, k: int, buffer: RecordBuffer | None) -> SimulatedConversation:
        agents = self.idle.get()
        try:
            agent = agents[k % len(agents)]
            agent.config = with_sampler(self.config, seed=derive_seed(self.seed, k, "sampler"))
            if buffer is not None:
                agent.log_writer = buffer
            pick = drawn_profile(self.seed, k, len(self.profiles))
            rng = random.Random(derive_seed(self.seed, k, "player"))
            conversation_id = simulated_conversation_id(self.bundle_id, self.seed, k)
            return play_conversation(agent, self.profiles[pick], rng, k, conversation_id)
        finally:
            self.idle.put(agents)


class _Tally:
    """The run's summary, counted as its conversations finish (in conversation order)."""

    def __init__(
        self, profiles: Sequence[PlayerProfile], on_conversation: Callable[[SimulatedConversation], None] | None
    ) -> None:
        self.counts = SimulationSummary(per_profile={p.name: ProfileCounts() for p in profiles})
        self.feature_sums = dict.fromkeys((*FEATURES, "words"), 0.0)
        self.on_conversation = on_conversation

    def add(self, result: SimulatedConversation) -> None:
        summary = self.counts
        summary.count(result)
        summary.per_profile[result.profile].count(result)
        summary.fallback_turns += sum(1 for t in result.turns if t.fallback)
        # The last line gets no answer: the player left or was done.
        summary.simulated_reply_seconds += sum(t.reaction.reply_latency_s for t in result.turns[:-1])
        for t in result.turns:
            for name in self.feature_sums:
                self.feature_sums[name] += t.features[name]
        if self.on_conversation is not None:
            self.on_conversation(result)

    def summary(self) -> SimulationSummary:
        """The summary so far, with each feature's mean over the lines shown."""
        if self.counts.turns:
            self.counts.mean_features = {name: total / self.counts.turns for name, total in self.feature_sums.items()}
        return self.counts


def _refuse_logged_run(log_dir: Path, first_id: str) -> None:
    """Refuse a run whose first conversation id ``log_dir`` already holds: the same bundle and seed
    give the same ids, and the reader would merge the two runs' records into one conversation."""
    if not list_log_files(log_dir):
        return
    for record in LogReader(log_dir):
        if isinstance(record, ConversationStart) and record.conversation_id == first_id:
            raise ValueError(
                f"{log_dir}: already holds conversation {record.conversation_id} (this bundle, this seed); "
                "simulate with another seed or into another directory"
            )
