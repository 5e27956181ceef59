"""Player engagement -> a reward for each NPC turn.

After each NPC line the game records events: the player replied, rated the line, walked away,
accepted a quest, traded. A ``RewardSpec`` (TOML, so designers tune it without code) says what
each kind of event is worth; ``conversation_rewards`` turns one conversation's events into one
reward per turn for the offline trainer.

Filtered turns (lines the output filter rejected, replaced by a fallback line) never get a
positive reward, but a zero or negative one is still not a training target: the model did not
produce what the player saw. Callers must drop filtered turns from training batches.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

from npcrl.errors import RewardSpecError
from npcrl.tomlfile import read_toml
from npcrl.validate import ConfigValueError, check_number

# Events the game emits. A spec need not give all of them a rule: a built-in kind without one is
# worth 0; only kinds outside this set and the spec's rules are "unknown".
BUILTIN_KINDS = frozenset({"reply", "rating", "walk_away", "quest_accepted", "trade"})
UNKNOWN_KINDS_MODES = ("ignore", "error")


class _Invalid(RewardSpecError):
    """A field of a rule or spec is invalid; the loader prefixes the file and the rule's path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field = field
        self.problem = problem


# Every number of a spec lies within +-MAX_MAGNITUDE (discount within [0, 1]), so a spec alone
# cannot overflow. An event's value is only bounded by its rule's min/max when it has them, so
# conversation_rewards also checks each sum (see _turn_credit).
MAX_MAGNITUDE = 1e6
_EVENT_VALUE_LIMIT = sys.float_info.max  # an int event value beyond it would overflow a float


def _finite_number(field: str, value: Any, low: float = -MAX_MAGNITUDE, high: float = MAX_MAGNITUDE) -> float:
    try:
        return float(check_number(field, value, low, high))
    except ConfigValueError as exc:
        raise _Invalid(
            field, f"must be a finite number {exc.requirement}, got {type(value).__name__} {value!r}"
        ) from None


@dataclass(frozen=True)
class EventRule:
    """What one event is worth: ``weight`` per occurrence, or with ``value_scale`` ``weight`` times
    the event's value clipped to [min, max] (for graded events such as a rating)."""

    weight: float
    min: float | None = None
    max: float | None = None
    value_scale: bool = False

    def __post_init__(self) -> None:
        # value_scale first: the min/max checks below depend on it.
        if not isinstance(self.value_scale, bool):
            raise _Invalid("value_scale", f"must be true or false, not {type(self.value_scale).__name__}")
        object.__setattr__(self, "weight", _finite_number("weight", self.weight))
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if value is not None:
                if not self.value_scale:
                    raise _Invalid(bound, "only applies with value_scale = true")
                object.__setattr__(self, bound, _finite_number(bound, value))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _Invalid("min", f"{self.min} is greater than max {self.max}")

    def contribution(self, value: float | None) -> float:
        if not self.value_scale:
            return self.weight
        if value is None:
            raise RewardSpecError("this event kind is value-scaled, so each event needs a value")
        clipped = value
        if self.min is not None:
            clipped = max(clipped, self.min)
        if self.max is not None:
            clipped = min(clipped, self.max)
        return self.weight * clipped


@dataclass(frozen=True)
class RewardSpec:
    """How engagement events become per-turn rewards: a rule per event kind, the discount that
    credits earlier turns, and the clip range of a turn's reward (docs/TRAINING.md)."""

    rules: Mapping[str, EventRule]
    discount: float = 0.0  # a turn k steps before an event gets discount**k of its contribution
    turn_min: float = -1.0
    turn_max: float = 1.0
    unknown_kinds: str = "ignore"
    contradiction_reward: float = -1.0
    """reward of a line that contradicts the persona card (a sample the agent rejected; the player
    never saw it), clipped to [turn_min, turn_max] like every turn's reward (docs/TRAINING.md)"""
    source: str = field(default="reward spec", init=False, repr=False, compare=False)
    """what errors call the spec: its file once loaded"""
    _known: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.rules, Mapping):
            raise _Invalid("rules", f"must be a table of event kinds, not {type(self.rules).__name__}")
        for kind, rule in self.rules.items():
            if not isinstance(kind, str) or not kind:
                raise _Invalid("rules", f"event kind {kind!r} must be a non-empty string")
            if not isinstance(rule, EventRule):
                raise _Invalid(f"rules.{kind}", f"must be an EventRule, not {type(rule).__name__}")
        # A read-only copy: a spec must not change under a trainer that holds it.
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        object.__setattr__(self, "_known", BUILTIN_KINDS | frozenset(self.rules))
        object.__setattr__(self, "discount", _finite_number("discount", self.discount, 0.0, 1.0))
        object.__setattr__(self, "turn_min", _finite_number("turn_min", self.turn_min))
        object.__setattr__(self, "turn_max", _finite_number("turn_max", self.turn_max))
        if self.turn_min > self.turn_max:
            raise _Invalid("turn_min", f"{self.turn_min} is greater than turn_max {self.turn_max}")
        reward = _finite_number("contradiction_reward", self.contradiction_reward)
        object.__setattr__(self, "contradiction_reward", min(max(reward, self.turn_min), self.turn_max))
        if self.unknown_kinds not in UNKNOWN_KINDS_MODES:
            raise _Invalid("unknown_kinds", f"must be 'ignore' or 'error', got {self.unknown_kinds!r}")

    def event_value(self, kind: str, value: float | None, where: str) -> float:
        """One event's contribution to the turn it follows (0 for an ignored kind)."""
        if value is not None:
            try:
                value = check_number("value", value, -_EVENT_VALUE_LIMIT, _EVENT_VALUE_LIMIT)
            except ConfigValueError:
                raise RewardSpecError(
                    f"{where}: {kind!r} event has value {value!r}; a finite number or None is needed"
                ) from None
        rule = self.rules.get(kind)
        if rule is None:
            if kind not in self._known and self.unknown_kinds == "error":
                raise RewardSpecError(f"{where}: unknown event kind {kind!r} (spec has unknown_kinds = 'error')")
            return 0.0
        try:
            return rule.contribution(value)
        except RewardSpecError as exc:
            raise RewardSpecError(f"{where}: {kind!r} event: {exc}") from None


_SPEC_KEYS = tuple(f.name for f in fields(RewardSpec) if f.init)
_RULE_KEYS = tuple(f.name for f in fields(EventRule))


def _unknown_keys(path: Path, prefix: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        names = ", ".join(repr(prefix + key) for key in unknown)
        raise RewardSpecError(f"{path}: unknown field(s) {names}; allowed here: {', '.join(allowed)}")


def _spec_from_toml(path: Path, data: dict[str, Any]) -> RewardSpec:
    _unknown_keys(path, "", data, _SPEC_KEYS)
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, dict) or not raw_rules:
        got = "missing" if raw_rules is None else "empty" if raw_rules == {} else type(raw_rules).__name__
        raise RewardSpecError(f"{path}: field 'rules': one [rules.<kind>] table per event kind is required ({got})")
    rules = {}
    for kind, raw in raw_rules.items():
        if not isinstance(raw, dict):
            raise RewardSpecError(
                f"{path}: field 'rules.{kind}': must be a table with a weight, not {type(raw).__name__}"
            )
        _unknown_keys(path, f"rules.{kind}.", raw, _RULE_KEYS)
        if "weight" not in raw:
            raise RewardSpecError(f"{path}: field 'rules.{kind}.weight': missing (every rule needs a weight)")
        try:
            rules[kind] = EventRule(**raw)
        except _Invalid as exc:
            raise RewardSpecError(f"{path}: field 'rules.{kind}.{exc.field}': {exc.problem}") from None
    try:
        return RewardSpec(rules=rules, **{k: v for k, v in data.items() if k != "rules"})
    except _Invalid as exc:
        raise RewardSpecError(f"{path}: field {exc.field!r}: {exc.problem}") from None


def load_reward_spec(path: str | os.PathLike[str]) -> RewardSpec:
    """Read a reward spec from TOML: top-level ``discount``, ``turn_min``, ``turn_max``,
    ``unknown_kinds``, ``contradiction_reward`` and one ``[rules.<kind>]`` table per event kind.

    ``discount`` lies in [0, 1]; every other number (weights, min, max, turn bounds) is finite and
    within +-1e6. Errors name the file, the field and the value."""
    path = Path(path)
    data = read_toml(path, RewardSpecError, "reward spec")
    spec = _spec_from_toml(path, data)
    object.__setattr__(spec, "source", str(path))
    return spec


def default_reward_spec() -> RewardSpec:
    """The shipped spec, npcrl/data/rewards/default.toml (its comments explain each weight)."""
    return load_reward_spec(Path(str(files("npcrl").joinpath("data/rewards/default.toml"))))


@dataclass(frozen=True)
class TurnOutcome:
    turn_index: int  # position of the NPC turn in its conversation
    filtered: bool  # the line was rejected by the output filter and a fallback was shown
    events: Sequence[tuple[str, float | None]] = ()  # (kind, value) of the events after this turn

    def __post_init__(self) -> None:
        if isinstance(self.turn_index, bool) or not isinstance(self.turn_index, int) or self.turn_index < 0:
            raise RewardSpecError(f"turn_index: must be a non-negative integer, got {self.turn_index!r}")
        events = tuple(tuple(event) for event in self.events)
        for event in events:
            if len(event) != 2 or not isinstance(event[0], str):
                raise RewardSpecError(f"turn {self.turn_index}: an event is a (kind, value) pair, got {event!r}")
        object.__setattr__(self, "events", events)


def conversation_rewards(turns: Sequence[TurnOutcome], spec: RewardSpec) -> list[float]:
    """One reward per turn, in order. Each event counts toward the turn it follows and, discounted
    by ``discount**k``, toward the turn k steps (of ``turn_index``) earlier. A turn's total is
    clipped to [turn_min, turn_max]; a filtered turn's is then capped at 0 (see the module doc:
    filtered turns must also be dropped from training)."""
    previous = -1
    for turn in turns:
        if turn.turn_index <= previous:
            raise RewardSpecError(
                f"turn_index: turns must be in strictly increasing order, got {turn.turn_index} after {previous}"
            )
        previous = turn.turn_index
    own = [_turn_credit(turn, spec) for turn in turns]
    # Back to front: each turn's credit is its own events plus the next turn's credit, discounted
    # by the number of steps between them. O(turns) rather than O(turns * events).
    totals = [0.0] * len(turns)
    carried = 0.0
    for i in range(len(turns) - 1, -1, -1):
        if i + 1 < len(turns):
            carried *= spec.discount ** (turns[i + 1].turn_index - turns[i].turn_index)
        carried += own[i]
        if not math.isfinite(carried):
            kinds = sorted({kind for turn in turns[i:] for kind, _ in turn.events})
            raise RewardSpecError(
                f"{spec.source}: turn {turns[i].turn_index}: the discounted credit of event kinds "
                f"{', '.join(map(repr, kinds))} adds up to {carried}; no finite reward exists"
            )
        totals[i] = carried
    rewards = []
    for turn, total in zip(turns, totals, strict=True):
        reward = min(max(total, spec.turn_min), spec.turn_max)
        rewards.append(min(reward, 0.0) if turn.filtered else reward)
    return rewards


def _turn_credit(turn: TurnOutcome, spec: RewardSpec) -> float:
    """The sum of the events after one turn. A sum that overflows is an error, not a reward: an
    infinite credit would turn into NaN against an opposite one and reach the trainer as a target."""
    where = f"turn {turn.turn_index}"
    total = 0.0
    for kind, value in turn.events:
        total += spec.event_value(kind, value, where)
        if not math.isfinite(total):
            raise RewardSpecError(
                f"{spec.source}: {where}: {kind!r} event (value {value!r}) brings the turn's credit to {total};"
                " no finite reward exists"
            )
    return total
