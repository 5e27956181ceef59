"""Simulated players: how a kind of player reacts to NPC lines, read from TOML.

A profile scores each NPC line from its features (``npcrl.sim.features``)::

    score = bias + sum(weights[f] * features[f]) + noise * N(0, 1)

and turns the score into what a player does:

- walks away if ``score < walk_away_below``;
- with probability ``rating_probability`` rates the line: +1 if ``score > rating_threshold``,
  else -1;
- if the line offers a quest (``offers_quest > 0.5``) and the player stays, accepts it with
  probability ``quest_accept_probability * sigmoid(score)``;
- otherwise answers after ``max(0, N(reply_latency_s, reply_latency_jitter_s))`` simulated seconds,
  with a line from ``openers`` (first turn) or ``follow_ups`` (later turns);
- leaves contented after ``max_turns`` NPC lines.

Every ``react`` draws the same four random numbers whatever happens, so one profile decision
never shifts the random stream of the next.

Writing a profile
-----------------
One TOML file per profile; the profile's name is the file stem (``npcrl/data/players/*.toml`` are
the shipped ones). Unknown keys, unknown feature names and values out of range are errors naming
the file and the key. A complete example, ``haggler.toml``::

    description = "Wants prices and quests, and does not care for the scenery."
    bias = -0.2                      # score of a line with no feature at all (in [-1000, 1000])
    noise = 0.3                      # std of the Gaussian noise added to each score (in [0, 1000])
    walk_away_below = -0.7           # leaves when a line scores below this (in [-1e6, 1e6])
    rating_probability = 0.4         # chance to rate a line, in [0, 1]
    rating_threshold = 0.3           # rates +1 above it, -1 at or below it (in [-1e6, 1e6])
    quest_accept_probability = 0.8   # in [0, 1], scaled by sigmoid(score)
    reply_latency_s = 4.0            # mean seconds before the player answers (in (0, 3600])
    reply_latency_jitter_s = 1.5     # std of that delay (in [0, 3600])
    max_turns = 6                    # NPC lines before the player leaves contented (1-100)
    topics = ["prices", "the road"]  # optional; default: names and places from the persona's lore
    openers = ["Good day, {npc}. What do you sell?"]                 # first player line
    follow_ups = ["How much for that?", "What do you know of {topic}?"]  # later player lines

    [weights]                        # feature -> weight in [-1000, 1000]; features left out weigh 0
    offers_quest = 1.2
    asks_back = 0.2
    mentions_lore = -0.2
    chatty = -0.8
    repeats_itself = -1.0
    empty = -1.5

Player lines may use two slots: ``{npc}`` (the NPC's name) and ``{topic}`` (one of ``topics``,
or of the persona's lore names when ``topics`` is empty), without format specs or conversions. Weighted features: asks_back,
offers_quest, mentions_lore, in_character, concise, chatty, repeats_itself, empty, humorous.
"""

from __future__ import annotations

import math
import os
import random
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

from npcrl.agent.persona import Persona
from npcrl.errors import NpcrlError
from npcrl.sim.features import FEATURES, persona_topics
from npcrl.tomlfile import read_toml
from npcrl.validate import ConfigValueError, check_number, did_you_mean, unknown_keys_text

TEMPLATE_SLOTS = ("npc", "topic")
MAX_TURNS = 100
# Bounds that keep a score finite whatever the features (each in [0, 1]) and the noise draw: a
# score is bias + the weights + noise * N(0, 1), and thresholds only compare with it.
MAX_WEIGHT = 1000.0
MAX_THRESHOLD = 1e6
MAX_LATENCY_S = 3600.0
MAX_LINE_CHARS = 300  # the agent cuts player text there anyway
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
DEFAULT_TOPIC = "these parts"


class PlayerProfileError(NpcrlError):
    """A player profile cannot be read or breaks a rule; the message names the file and key."""


class _FieldProblem(Exception):
    """A field broke a rule; the caller says where (file or constructor)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"key {key!r}: {problem}")
        self.key = key


class _InvalidProfile(PlayerProfileError):
    """Raised by the constructor; ``load_profile`` names the file instead of the profile."""

    def __init__(self, name: str, problem: _FieldProblem) -> None:
        super().__init__(f"player profile {name!r}: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class Reaction:
    """What a simulated player does after one NPC line."""

    score: float
    """the line's engagement score, noise included"""
    walk_away: bool
    """the player leaves now"""
    rating: float | None
    """+1.0 or -1.0 if the player rates the line, else None"""
    quest_accepted: bool
    """the player takes the quest the line offers"""
    reply_latency_s: float
    """simulated seconds before the player's next line (used only if the player stays)"""


def _number(key: str, value: Any, low: float, high: float, *, integer: bool = False, low_open: bool = False) -> Any:
    try:
        return check_number(key, value, low, high, integer=integer, low_open=low_open)
    except ConfigValueError as exc:
        kind = "" if integer else "a finite number "
        raise _FieldProblem(key, f"must be {kind}{exc.requirement}, got {value!r}") from None


def _text_list(key: str, value: Any, *, templates: bool, min_items: int) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _FieldProblem(key, f"must be an array of strings, not {type(value).__name__}")
    if len(value) < min_items:
        raise _FieldProblem(key, f"needs at least {min_items} item(s)")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _FieldProblem(key, f"item {i} must be a non-empty string, got {item!r}")
        text = " ".join(item.split())
        if len(text) > MAX_LINE_CHARS:
            raise _FieldProblem(key, f"item {i} is {len(text)} characters long; at most {MAX_LINE_CHARS}")
        if templates:
            try:
                parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(text)]
            except ValueError as exc:
                raise _FieldProblem(key, f"item {i} {text!r} is not a valid template: {exc}") from None
            slots = [name for name, _, _ in parsed if name is not None]
            if any(spec or conversion for _, spec, conversion in parsed):
                # A format spec such as {npc:>999999999} would build a gigabyte string per line.
                raise _FieldProblem(key, f"item {i} {text!r}: slots take no format spec or conversion")
            bad = [slot for slot in slots if slot not in TEMPLATE_SLOTS]
            if bad:
                raise _FieldProblem(
                    key,
                    f"item {i} {text!r} uses slot {{{bad[0]}}}; allowed: {', '.join('{' + s + '}' for s in TEMPLATE_SLOTS)}",
                )
        items.append(text)
    return tuple(items)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class PlayerProfile:
    """One kind of simulated player. Constructing it validates every field (see the module doc)."""

    name: str
    """the profile's name (the file stem when loaded from TOML)"""
    description: str
    """one line for people: what this player wants"""
    weights: Mapping[str, float]
    """feature name -> weight in the line's score; features left out weigh 0"""
    openers: tuple[str, ...]
    """the player's first line, one drawn at random; slots {npc} and {topic}"""
    follow_ups: tuple[str, ...]
    """the player's later lines, one drawn at random; slots {npc} and {topic}"""
    bias: float = 0.0
    """score of a line with every feature at 0"""
    noise: float = 0.3
    """standard deviation of the Gaussian noise added to each score"""
    walk_away_below: float = -0.5
    """the player walks away from a line scoring below this"""
    rating_probability: float = 0.3
    """chance that the player rates a line"""
    rating_threshold: float = 0.3
    """a rated line scoring above this gets +1, else -1"""
    quest_accept_probability: float = 0.5
    """chance to accept an offered quest, times sigmoid(score)"""
    reply_latency_s: float = 5.0
    """mean simulated seconds before the player answers"""
    reply_latency_jitter_s: float = 1.5
    """standard deviation of the answer delay"""
    max_turns: int = 6
    """patience: NPC lines before the player leaves contented"""
    topics: tuple[str, ...] = ()
    """what {topic} is drawn from; empty: names and places in the persona's lore"""
    _weights: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except _FieldProblem as exc:
            raise _InvalidProfile(self.name, exc) from None

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.fullmatch(self.name):
            raise _FieldProblem("name", f"{self.name!r} is not 1-40 letters, digits, '_' or '-'")
        if not isinstance(self.description, str):
            raise _FieldProblem("description", f"must be a string, not {type(self.description).__name__}")
        object.__setattr__(self, "description", " ".join(self.description.split()))
        if not isinstance(self.weights, Mapping):
            raise _FieldProblem("weights", f"must be a table of feature = weight, not {type(self.weights).__name__}")
        weights = {}
        for feature, weight in self.weights.items():
            if feature not in FEATURES:
                hint = did_you_mean(str(feature), FEATURES)
                raise _FieldProblem(f"weights.{feature}", f"unknown feature{hint}; features: {', '.join(FEATURES)}")
            weights[feature] = _number(f"weights.{feature}", weight, -MAX_WEIGHT, MAX_WEIGHT)
        object.__setattr__(self, "weights", MappingProxyType(weights))
        object.__setattr__(self, "_weights", tuple(weights.items()))
        numbers = {
            "bias": _number("bias", self.bias, -MAX_WEIGHT, MAX_WEIGHT),
            "noise": _number("noise", self.noise, 0.0, MAX_WEIGHT),
            "walk_away_below": _number("walk_away_below", self.walk_away_below, -MAX_THRESHOLD, MAX_THRESHOLD),
            "rating_probability": _number("rating_probability", self.rating_probability, 0.0, 1.0),
            "rating_threshold": _number("rating_threshold", self.rating_threshold, -MAX_THRESHOLD, MAX_THRESHOLD),
            "quest_accept_probability": _number("quest_accept_probability", self.quest_accept_probability, 0.0, 1.0),
            "reply_latency_s": _number("reply_latency_s", self.reply_latency_s, 0.0, MAX_LATENCY_S, low_open=True),
            "reply_latency_jitter_s": _number(
                "reply_latency_jitter_s", self.reply_latency_jitter_s, 0.0, MAX_LATENCY_S
            ),
            "max_turns": _number("max_turns", self.max_turns, 1, MAX_TURNS, integer=True),
        }
        for key, value in numbers.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "openers", _text_list("openers", self.openers, templates=True, min_items=1))
        object.__setattr__(self, "follow_ups", _text_list("follow_ups", self.follow_ups, templates=True, min_items=1))
        object.__setattr__(self, "topics", _text_list("topics", self.topics, templates=False, min_items=0))

    def score(self, features: Mapping[str, float]) -> float:
        """The noise-free score of a line with these features."""
        return self.bias + sum(weight * features[name] for name, weight in self._weights)

    def react(self, features: Mapping[str, float], rng: random.Random) -> Reaction:
        """What this player does after a line with these ``features``."""
        noise, rate_draw, quest_draw = rng.gauss(0.0, 1.0), rng.random(), rng.random()
        latency = rng.gauss(self.reply_latency_s, self.reply_latency_jitter_s)
        score = self.score(features) + self.noise * noise
        walk_away = score < self.walk_away_below
        rating = None
        if rate_draw < self.rating_probability:
            rating = 1.0 if score > self.rating_threshold else -1.0
        accepted = (
            not walk_away
            and features["offers_quest"] > 0.5
            and quest_draw < self.quest_accept_probability * sigmoid(score)
        )
        return Reaction(score, walk_away, rating, accepted, max(0.0, latency))

    def player_line(self, persona: Persona, turn: int, rng: random.Random) -> str:
        """What the player says before NPC line ``turn`` (0: an opener, later: a follow-up)."""
        template = rng.choice(self.openers if turn == 0 else self.follow_ups)
        topic = rng.choice(self.topics or persona_topics(persona) or (DEFAULT_TOPIC,))
        return template.format(npc=persona.name, topic=topic)


_INIT_KEYS = tuple(f.name for f in fields(PlayerProfile) if f.init)
_FILE_KEYS = tuple(key for key in _INIT_KEYS if key != "name")
_REQUIRED = ("description", "weights", "openers", "follow_ups")


def load_profile(path: str | os.PathLike[str]) -> PlayerProfile:
    """Read one profile from TOML; its name is the file stem."""
    path = Path(path)
    data = read_toml(path, PlayerProfileError, "player profile")
    unknown = sorted(set(data) - set(_FILE_KEYS))
    if unknown:
        listed = unknown_keys_text(unknown, _FILE_KEYS, {"name": "the name is the file stem"})
        raise PlayerProfileError(f"{path}: unknown key(s) {listed}; allowed keys: {', '.join(_FILE_KEYS)}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise PlayerProfileError(f"{path}: missing required key(s) {', '.join(repr(k) for k in missing)}")
    try:
        return PlayerProfile(name=path.stem, **data)
    except _InvalidProfile as exc:
        raise PlayerProfileError(f"{path}: {exc.problem}") from None


def load_profiles(path: str | os.PathLike[str]) -> dict[str, PlayerProfile]:
    """Profiles by name from one ``.toml`` file or every ``*.toml`` in a directory (sorted)."""
    path = Path(path)
    if path.is_dir():
        paths = sorted(path.glob("*.toml"))
        if not paths:
            raise PlayerProfileError(f"{path}: no player profiles (*.toml) in this directory")
        return {p.stem: load_profile(p) for p in paths}
    if not path.exists():
        raise PlayerProfileError(f"{path}: no such player profile file or directory")
    if path.suffix != ".toml":
        raise PlayerProfileError(f"{path}: a player profile is a .toml file")
    profile = load_profile(path)
    return {profile.name: profile}


def builtin_profile_dir() -> Path:
    """The profiles shipped with npcrl: curious, impatient, lore_lover, quest_seeker."""
    return Path(str(files("npcrl").joinpath("data/players")))


def builtin_profiles() -> dict[str, PlayerProfile]:
    return load_profiles(builtin_profile_dir())
