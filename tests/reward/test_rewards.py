"""Engagement rewards: against a plain reference, discount credit, clipping, kinds, and TOML errors."""

from __future__ import annotations

import math
import textwrap

import pytest
from config_helpers import load_error
from hypothesis import given, settings
from hypothesis import strategies as st

from npcrl.errors import NpcrlError, RewardSpecError
from npcrl.reward.spec import (
    BUILTIN_KINDS,
    EventRule,
    RewardSpec,
    TurnOutcome,
    conversation_rewards,
    default_reward_spec,
    load_reward_spec,
)


def reference_rewards(turns: list[TurnOutcome], spec: RewardSpec) -> list[float]:
    """The definition, written out: every event adds its worth times discount**steps to each turn
    at or before it; then clip, then cap filtered turns at 0."""
    totals = []
    for turn in turns:
        total = 0.0
        for later in turns:
            steps = later.turn_index - turn.turn_index
            if steps < 0:
                continue
            for kind, value in later.events:
                rule = spec.rules.get(kind)
                if rule is None:
                    continue
                if rule.value_scale:
                    lo = -math.inf if rule.min is None else rule.min
                    hi = math.inf if rule.max is None else rule.max
                    worth = rule.weight * min(max(value, lo), hi)
                else:
                    worth = rule.weight
                total += worth * spec.discount**steps
        total = min(max(total, spec.turn_min), spec.turn_max)
        totals.append(min(total, 0.0) if turn.filtered else total)
    return totals


SIMPLE = RewardSpec(
    rules={
        "reply": EventRule(0.3),
        "rating": EventRule(0.5, min=-1.0, max=1.0, value_scale=True),
        "walk_away": EventRule(-0.5),
        "quest_accepted": EventRule(1.0),
    },
    discount=0.0,
    turn_min=-10.0,
    turn_max=10.0,
)


def test_each_event_counts_toward_the_turn_it_follows():
    turns = [
        TurnOutcome(0, False, [("reply", None)]),
        TurnOutcome(1, False, [("reply", None), ("rating", 1.0)]),
        TurnOutcome(2, False, [("walk_away", None)]),
    ]
    assert conversation_rewards(turns, SIMPLE) == pytest.approx([0.3, 0.8, -0.5])


def test_discount_credits_earlier_turns():
    spec = RewardSpec(rules={"quest_accepted": EventRule(1.0)}, discount=0.5, turn_min=-5, turn_max=5)
    turns = [TurnOutcome(0, False), TurnOutcome(1, False), TurnOutcome(2, False, [("quest_accepted", None)])]
    assert conversation_rewards(turns, spec) == pytest.approx([0.25, 0.5, 1.0])
    # Steps are counted in turn_index, so a gap (a turn missing from the list) still counts as a step.
    gapped = [TurnOutcome(0, False), TurnOutcome(3, False, [("quest_accepted", None)])]
    assert conversation_rewards(gapped, spec) == pytest.approx([0.125, 1.0])
    # discount = 1: every earlier turn gets full credit.
    full = RewardSpec(rules={"quest_accepted": EventRule(1.0)}, discount=1.0)
    assert conversation_rewards(turns, full) == pytest.approx([1.0, 1.0, 1.0])


def test_turn_totals_are_clipped():
    spec = RewardSpec(rules={"trade": EventRule(0.5), "walk_away": EventRule(-0.5)}, turn_min=-0.6, turn_max=0.75)
    turns = [TurnOutcome(0, False, [("trade", None)] * 4), TurnOutcome(1, False, [("walk_away", None)] * 3)]
    assert conversation_rewards(turns, spec) == pytest.approx([0.75, -0.6])


def test_value_scaled_events_are_clipped_then_weighted():
    turns = [TurnOutcome(0, False, [("rating", 7.0)]), TurnOutcome(1, False, [("rating", -0.5)])]
    assert conversation_rewards(turns, SIMPLE) == pytest.approx([0.5, -0.25])
    open_ended = RewardSpec(rules={"tip": EventRule(0.1, value_scale=True)}, turn_max=100)
    assert conversation_rewards([TurnOutcome(0, False, [("tip", 30)])], open_ended) == pytest.approx([3.0])
    # A per-occurrence rule ignores the value.
    assert conversation_rewards([TurnOutcome(0, False, [("reply", 99.0)])], SIMPLE) == pytest.approx([0.3])


def test_value_scaled_event_without_a_value_is_an_error():
    with pytest.raises(RewardSpecError, match="turn 4.*'rating'.*needs a value"):
        conversation_rewards([TurnOutcome(4, False, [("rating", None)])], SIMPLE)
    with pytest.raises(RewardSpecError, match="finite number"):
        conversation_rewards([TurnOutcome(0, False, [("rating", math.nan)])], SIMPLE)


def test_custom_kinds():
    spec = RewardSpec(rules={"gift_given": EventRule(0.7), "laughed": EventRule(0.2)})
    turns = [TurnOutcome(0, False, [("gift_given", None), ("laughed", None)])]
    assert conversation_rewards(turns, spec) == pytest.approx([0.9])


def test_unknown_kinds_ignore_or_error():
    turns = [TurnOutcome(0, False, [("reply", None), ("danced", None)])]
    assert conversation_rewards(turns, SIMPLE) == pytest.approx([0.3])
    strict = RewardSpec(rules=dict(SIMPLE.rules), unknown_kinds="error")
    with pytest.raises(RewardSpecError, match="turn 0: unknown event kind 'danced'"):
        conversation_rewards(turns, strict)
    # A built-in kind the spec gives no rule is known: worth 0, never an error.
    assert "trade" in BUILTIN_KINDS and "trade" not in strict.rules
    assert conversation_rewards([TurnOutcome(0, False, [("trade", None)])], strict) == [0.0]


def test_filtered_turns_are_never_positive():
    turns = [
        TurnOutcome(0, True, [("quest_accepted", None)]),
        TurnOutcome(1, True, [("walk_away", None)]),
        TurnOutcome(2, False, [("reply", None)]),
    ]
    assert conversation_rewards(turns, SIMPLE) == pytest.approx([0.0, -0.5, 0.3])


def test_turns_must_be_in_order():
    with pytest.raises(RewardSpecError, match="strictly increasing"):
        conversation_rewards([TurnOutcome(1, False), TurnOutcome(1, False)], SIMPLE)
    with pytest.raises(RewardSpecError, match="turn_index"):
        TurnOutcome(-1, False)
    with pytest.raises(RewardSpecError, match="pair"):
        TurnOutcome(0, False, [("reply",)])  # type: ignore[list-item]
    assert conversation_rewards([], SIMPLE) == []


kinds = st.sampled_from(["reply", "rating", "walk_away", "quest_accepted", "trade", "custom", "mystery"])
events = st.lists(
    st.tuples(kinds, st.floats(min_value=-5, max_value=5, allow_nan=False)).map(
        lambda e: (e[0], e[1] if e[0] in ("rating", "custom") else None)
    ),
    max_size=4,
)
specs = st.builds(
    lambda d, lo, span, w: RewardSpec(
        rules={
            "reply": EventRule(w[0]),
            "rating": EventRule(w[1], min=-1.0, max=1.0, value_scale=True),
            "walk_away": EventRule(-abs(w[2])),
            "quest_accepted": EventRule(w[3]),
            "custom": EventRule(w[4], value_scale=True),
        },
        discount=d,
        turn_min=lo,
        turn_max=lo + span,
    ),
    st.floats(0, 1),
    st.floats(-3, 0.5),
    st.floats(0, 4),
    st.lists(st.floats(-2, 2), min_size=5, max_size=5),
)


@st.composite
def conversations(draw):
    gaps = draw(st.lists(st.integers(1, 3), max_size=8))
    indices = [sum(gaps[: i + 1]) - 1 for i in range(len(gaps))]
    return [TurnOutcome(i, draw(st.booleans()), draw(events)) for i in indices]


@settings(max_examples=200, deadline=None)
@given(conversations(), specs)
def test_matches_the_reference_and_filtered_turns_are_never_positive(turns, spec):
    rewards = conversation_rewards(turns, spec)
    assert rewards == pytest.approx(reference_rewards(turns, spec), abs=1e-9)
    for turn, reward in zip(turns, rewards, strict=True):
        assert spec.turn_min - 1e-12 <= reward <= spec.turn_max + 1e-12 or (turn.filtered and reward == 0.0)
        if turn.filtered:
            assert reward <= 0.0


# --- spec validation and TOML -------------------------------------------------------------------


def test_default_spec_has_the_documented_weights():
    spec = default_reward_spec()
    assert spec.rules["reply"] == EventRule(0.3)
    assert spec.rules["rating"] == EventRule(0.5, min=-1.0, max=1.0, value_scale=True)
    assert spec.rules["walk_away"] == EventRule(-0.5)
    assert spec.rules["quest_accepted"] == EventRule(1.0)
    assert spec.rules["trade"] == EventRule(0.5)
    assert set(spec.rules) == BUILTIN_KINDS
    assert (spec.turn_min, spec.turn_max, spec.unknown_kinds) == (-1.0, 1.0, "ignore")
    assert 0.0 <= spec.discount <= 1.0
    assert spec.contradiction_reward == -1.0  # a line contradicting the card: the worst a turn can be


def test_the_contradiction_reward_is_clipped_like_a_turn_and_must_be_finite():
    assert RewardSpec(rules={}, turn_min=-0.6).contradiction_reward == -0.6
    assert RewardSpec(rules={}, turn_min=-5.0, contradiction_reward=-2.0).contradiction_reward == -2.0
    with pytest.raises(RewardSpecError, match="'contradiction_reward'"):
        RewardSpec(rules={}, contradiction_reward=math.nan)


def test_spec_is_read_only():
    rules = {"reply": EventRule(0.3)}
    spec = RewardSpec(rules=rules)
    rules["reply"] = EventRule(9.0)
    assert spec.rules["reply"].weight == 0.3
    with pytest.raises(TypeError):
        spec.rules["trade"] = EventRule(1.0)  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"discount": 1.5}, "discount"),
        ({"discount": -0.1}, "discount"),
        ({"turn_min": 1.0, "turn_max": 0.0}, "turn_min"),
        ({"unknown_kinds": "warn"}, "unknown_kinds"),
        ({"turn_max": math.inf}, "turn_max"),
    ],
)
def test_spec_validation(kwargs, field):
    with pytest.raises(RewardSpecError, match=f"'{field}'"):
        RewardSpec(rules={"reply": EventRule(0.3)}, **kwargs)


def test_rule_validation():
    with pytest.raises(RewardSpecError, match="'min'.*value_scale"):
        EventRule(1.0, min=0.0)
    with pytest.raises(RewardSpecError, match="'min'.*greater than max"):
        EventRule(1.0, min=2.0, max=1.0, value_scale=True)
    with pytest.raises(RewardSpecError, match="'weight'"):
        EventRule(True)  # type: ignore[arg-type]
    assert issubclass(RewardSpecError, NpcrlError)


VALID_SPEC = textwrap.dedent(
    """\
    discount = 0.25
    turn_min = -2.0
    turn_max = 2
    unknown_kinds = "error"

    [rules.reply]
    weight = 0.3

    [rules.rating]
    weight = 0.5
    value_scale = true
    min = -1
    max = 1

    [rules.gift_given]
    weight = 0.8
    """
)


def write_spec(tmp_path, text: str):
    path = tmp_path / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_reward_spec(tmp_path):
    spec = load_reward_spec(write_spec(tmp_path, VALID_SPEC))
    assert spec == RewardSpec(
        rules={
            "reply": EventRule(0.3),
            "rating": EventRule(0.5, min=-1.0, max=1.0, value_scale=True),
            "gift_given": EventRule(0.8),
        },
        discount=0.25,
        turn_min=-2.0,
        turn_max=2.0,
        unknown_kinds="error",
    )
    assert isinstance(spec.turn_max, float)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (VALID_SPEC.replace("discount = 0.25", "discount = 1.5"), ("'discount'", ">= 0 and <= 1")),
        (VALID_SPEC.replace("discount = 0.25", 'discount = "high"'), ("'discount'", "number")),
        (VALID_SPEC.replace("discount = 0.25", "discounts = 0.25"), ("'discounts'", "unknown")),
        (VALID_SPEC.replace("weight = 0.8", "weight = 0.8\nbonus = 1"), ("'rules.gift_given.bonus'", "unknown")),
        (VALID_SPEC.replace("weight = 0.8", 'weight = "lots"'), ("'rules.gift_given.weight'", "number")),
        (VALID_SPEC.replace("weight = 0.8", "weight = true"), ("'rules.gift_given.weight'", "bool")),
        (VALID_SPEC.replace("weight = 0.8", "value_scale = false"), ("'rules.gift_given.weight'", "missing")),
        (VALID_SPEC.replace("value_scale = true", 'value_scale = "yes"'), ("'rules.rating.value_scale'",)),
        (VALID_SPEC.replace("value_scale = true", "value_scale = false"), ("'rules.rating.min'", "value_scale")),
        (VALID_SPEC.replace("max = 1\n", "max = -2\n"), ("'rules.rating.min'", "greater than max")),
        (VALID_SPEC.replace('unknown_kinds = "error"', 'unknown_kinds = "warn"'), ("'unknown_kinds'",)),
        (VALID_SPEC.replace("turn_min = -2.0", "turn_min = 3.0"), ("'turn_min'", "greater than turn_max")),
        ("discount = 0.1\n", ("'rules'", "missing")),
        ("rules = 3\n", ("'rules'", "int")),
        ("[rules]\n", ("'rules'", "empty")),
        ("[rules]\nreply = 0.3\n", ("'rules.reply'", "table")),
        (VALID_SPEC + "oops = [\n", ("invalid TOML",)),
    ],
)
def test_toml_errors_name_the_file_and_field(tmp_path, text, fragments):
    load_error(load_reward_spec, write_spec(tmp_path, text), RewardSpecError, *fragments)


def test_missing_file(tmp_path):
    with pytest.raises(RewardSpecError, match="cannot read"):
        load_reward_spec(tmp_path / "nope.toml")
