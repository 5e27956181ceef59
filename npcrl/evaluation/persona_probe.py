"""The persona probe: how often a bundle's NPCs contradict their persona card when asked who they are.

Each persona answers ``lines_per_persona`` player lines in scripted conversations of ``TURNS``
turns; the player's lines alternate identity questions ("Who are you?", "Are you the baker?") with
ordinary ones, drawn per conversation from the probe's seed. The agent's own check is off
(``consistency_retries=None``) and there is no time budget, so each line is the model's first draw
and a busy machine cannot turn a line into a fallback: a line counts when
``card_contradictions`` flags it (another name, trade or home for the NPC itself).

Why a probe and not only the evaluation's play: in ordinary play about one line in twenty
contradicts the card, so on 96 players (about 550 lines) a rise of 0.02 is 11 lines, inside the
noise (the paired interval of such a rise spans zero). Identity questions raise the default
model's share to about a quarter, and 200 lines per persona give 800 lines, so a rise of a fifth
of the share is resolved where the play's measurement could not tell it from chance.

Two bundles probed with the same setup play the same conversations (personas, player lines and
sampler seeds), so their shares compare pairwise: ``probe_rise`` is the candidate's share minus the
current one's, with a 95% interval over the paired conversations (normal approximation of the
ratio of sums; 200 conversations per side at the default size).

Conversations run ``concurrency`` at a time through the model's batched decode
(``npcrl.sim.ordered``); a conversation's seeds depend only on the setup and its index, and a
batched step gives the tokens a solo one would, so the counts do not depend on it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from npcrl.agent.consistency import card_contradictions
from npcrl.agent.persona import Persona
from npcrl.evaluation.shares import paired_share_rise, ratio_interval
from npcrl.runtime.bundle import canonical_json

if TYPE_CHECKING:
    from npcrl.agent.config import AgentConfig
    from npcrl.runtime.model import OnnxCausalLM

TURNS = 4
"""NPC lines per probe conversation"""
IDENTITY_LINES = (
    "Who are you?",
    "What's your name?",
    "What do you do here?",
    "Where am I?",
    "Tell me about yourself.",
    "Are you the baker?",
    "Introduce yourself, please.",
    "What is this place called?",
)
ORDINARY_LINES = (
    "Hello there!",
    "Any work for a traveller?",
    "What's the news in the village?",
    "How much for a room?",
    "Have you seen any bandits?",
    "Can you help me?",
    "Goodbye for now.",
    "What do you sell?",
)

PROBE_SHARE = "persona probe: card contradictions / line (95% CI)"
"""the probe's share of lines contradicting the card, with its interval: (share, low, high)"""
PROBE_COUNTS = "persona probe: contradicting lines per conversation"
"""the probe's count per conversation, in conversation order: what ``probe_rise`` pairs"""
PROBE_SETUP = "persona probe: setup"
"""what the probe played (``ProbeSetup``): two probes compare only when theirs are equal"""
PROBE_FALLBACKS = "persona probe: lines not the model's"
"""lines that were a fallback or a filtered line (an error, an overflowing prompt, the output filter):
they count as lines but cannot contradict, so a probe with many of them says little"""
PROBE_REASONS = "persona probe: contradicting lines by kind"
"""how many flagged lines gave each kind of contradiction (``name``, ``trade``, ``place``; a line may
give more than one): what the share is made of"""
PROBE_ROWS = (PROBE_SHARE, PROBE_COUNTS, PROBE_SETUP, PROBE_FALLBACKS, PROBE_REASONS)


@dataclass(frozen=True)
class ProbeSetup:
    """What a probe plays; equal setups play the same conversations."""

    lines_per_persona: int
    seed: int
    personas: tuple[str, ...]
    """the cards' persona hashes, in the order played"""
    max_new_tokens: int
    system_prompts: str | None = None
    """a digest of the system prompts played in place of the cards' (``prompts_digest``); None: the
    cards' own (and a probe recorded before the setup held it)"""

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any]) -> ProbeSetup:
        """The setup ``to_dict`` wrote."""
        return cls(**{**recorded, "personas": tuple(recorded["personas"])})

    @property
    def conversations_per_persona(self) -> int:
        return -(-self.lines_per_persona // TURNS)

    def lines_of(self, index: int) -> int:
        """NPC lines of conversation ``index`` of a persona (the last one may be short)."""
        return min(TURNS, self.lines_per_persona - index * TURNS)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "personas": list(self.personas)}


@dataclass(frozen=True)
class PersonaProbe:
    """One bundle's probe: the contradicting lines of each conversation (persona by persona)."""

    setup: ProbeSetup
    contradicting: tuple[int, ...]
    lines: tuple[int, ...]
    reasons: Mapping[str, int]
    """how many flagged lines gave each kind of contradiction (name, trade, place)"""
    fallbacks: int = 0
    """lines that were not the model's (``PROBE_FALLBACKS``)"""

    def rows(self) -> dict[str, Any]:
        """The probe as evaluation rows (``PROBE_ROWS``)."""
        share, low, high = ratio_interval(self.contradicting, self.lines)
        return {
            PROBE_SHARE: [share, low, high],
            PROBE_COUNTS: list(self.contradicting),
            PROBE_SETUP: self.setup.to_dict(),
            PROBE_FALLBACKS: self.fallbacks,
            PROBE_REASONS: dict(sorted(self.reasons.items())),
        }


@dataclass(frozen=True)
class _Conversation:
    """What one probe conversation counted."""

    flagged: int
    fallbacks: int
    reasons: Counter[str]


def probe_personas(
    model: OnnxCausalLM,
    personas: Sequence[Persona],
    config: AgentConfig,
    lines_per_persona: int = 200,
    seed: int = 0,
    concurrency: int = 1,
    system_prompts: Mapping[str, str] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> PersonaProbe:
    """Probe ``model`` with every persona of ``personas``; ``config``: the agents' settings (its
    sampler's caps), played with the check off and no time budget (module docstring);
    ``system_prompts``: persona id -> the system prompt its NPCs play with (default: the card's);
    ``progress(persona id, its share)`` is called as each persona's conversations are all counted."""
    from npcrl.sim.ordered import max_concurrency, play_concurrently

    if lines_per_persona < 1:
        raise ValueError(f"lines_per_persona must be at least 1, got {lines_per_persona}")
    if not personas:
        raise ValueError("the persona probe needs at least one persona")
    config = replace(config, consistency_retries=None, time_budget_s=None)
    given = system_prompts or {}
    prompts = {p.id: given[p.id] for p in personas if p.id in given}
    setup = ProbeSetup(
        lines_per_persona,
        seed,
        tuple(p.persona_hash for p in personas),
        config.sampler.max_new_tokens,
        prompts_digest(prompts),
    )
    per_persona = setup.conversations_per_persona

    def play(k: int, _buffer: object) -> _Conversation:
        persona = personas[k // per_persona]
        return _play_conversation(model, persona, config, setup, k, prompts.get(persona.id))

    counted: list[_Conversation] = []

    def finish(conversation: _Conversation) -> None:  # called in conversation order
        counted.append(conversation)
        if progress is not None and len(counted) % per_persona == 0:
            persona = personas[len(counted) // per_persona - 1]
            progress(persona.id, sum(c.flagged for c in counted[-per_persona:]) / lines_per_persona)

    total = per_persona * len(personas)
    workers = max(1, min(concurrency, total, max_concurrency(model)))
    play_concurrently(play, range(total), workers, None, finish)
    return PersonaProbe(
        setup,
        tuple(c.flagged for c in counted),
        tuple(setup.lines_of(k % per_persona) for k in range(total)),
        dict(sum((c.reasons for c in counted), Counter())),
        sum(c.fallbacks for c in counted),
    )


def prompts_digest(prompts: Mapping[str, str]) -> str | None:
    """What ``ProbeSetup.system_prompts`` records for ``prompts`` (persona id -> system prompt): the
    prompts change the lines, so probes played with other prompts must not pair."""
    if not prompts:
        return None
    return hashlib.sha256(canonical_json(dict(prompts))).hexdigest()[:16]


def _play_conversation(
    model: OnnxCausalLM, persona: Persona, config: AgentConfig, setup: ProbeSetup, k: int, system_prompt: str | None
) -> _Conversation:
    """Conversation ``k`` of the probe: its sampler seed and player lines depend on (seed, k) alone."""
    from npcrl.agent.npc_agent import NpcAgent, with_sampler
    from npcrl.sim.draws import derive_seed

    sampler = with_sampler(config, seed=derive_seed(setup.seed, k, "probe-sampler"))
    agent = NpcAgent(model, persona, config=sampler, system_prompt=system_prompt)
    rng = random.Random(derive_seed(setup.seed, k, "probe-player"))
    flagged = fallbacks = 0
    reasons: Counter[str] = Counter()
    with agent.conversation(f"persona-probe-{k}") as talk:
        for turn in range(setup.lines_of(k % setup.conversations_per_persona)):
            line = talk.respond(rng.choice(IDENTITY_LINES if turn % 2 == 0 else ORDINARY_LINES))
            if line.fallback or line.filtered:
                fallbacks += 1
                continue
            found = card_contradictions(line.text, persona)
            flagged += bool(found)
            reasons.update(reason.split(":")[0] for reason in found)
    return _Conversation(flagged, fallbacks, reasons)


def probe_rise(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """The candidate's probe share minus the current bundle's, with its 95% interval over the paired
    conversations; None unless both rows hold a probe of the same setup (``PROBE_SETUP``)."""
    if any(row not in side for row in (PROBE_COUNTS, PROBE_SETUP) for side in (candidate, current)):
        return None
    setup = _recorded_setup(current)
    if setup is None or _recorded_setup(candidate) != setup:
        return None
    ours, theirs = list(candidate[PROBE_COUNTS]), list(current[PROBE_COUNTS])
    if len(ours) != len(theirs) or len(ours) != setup.conversations_per_persona * len(setup.personas):
        raise ValueError(
            f"persona probe rows: {len(ours)} and {len(theirs)} conversations, but the setup plays "
            f"{setup.conversations_per_persona * len(setup.personas)}"
        )
    lines = [setup.lines_of(k % setup.conversations_per_persona) for k in range(len(ours))]
    return paired_share_rise(list(zip(ours, lines, strict=True)), list(zip(theirs, lines, strict=True)))


def _recorded_setup(row: Mapping[str, Any]) -> ProbeSetup | None:
    """The setup a row's probe was played with; None where the row's record is not one."""
    try:
        return ProbeSetup.from_dict(row[PROBE_SETUP])
    except (KeyError, TypeError):
        return None
