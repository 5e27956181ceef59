"""Play-log records → per-turn rewards."""

from __future__ import annotations

import pytest

from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn
from npcrl.reward.engagement import reward_summary, turn_rewards
from npcrl.reward.spec import EventRule, RewardSpec, default_reward_spec


def turn(conv: str, index: int, *, filtered: bool = False, fallback: bool = False, npc: str = "smith") -> NpcTurn:
    return NpcTurn(
        conversation_id=conv, turn_index=index, npc_id=npc, bundle_id="b1", player_text="hi",
        prompt_ids=[1, 2], response_ids=[3], logprobs=[-0.5], full_logprobs=[-0.7], text="Aye.",
        stop_reason="eos", sampler={}, latency_s=0.1, time_to_first_token_s=0.05,
        filtered=filtered, fallback=fallback, time=float(index),
    )  # fmt: skip


def event(conv: str, index: int, kind: str, value: float | None = None, t: float = 0.0) -> EngagementEvent:
    return EngagementEvent(conversation_id=conv, turn_index=index, kind=kind, value=value, time=t)


SPEC = RewardSpec(
    rules={"reply": EventRule(0.3), "walk_away": EventRule(-0.5), "quest_accepted": EventRule(1.0)},
    discount=0.5,
)


def test_events_score_the_turn_they_follow_with_discounted_credit():
    records = [
        ConversationStart("c1", "smith", "p", "Brom", "h", "b1", {}, 0.0),
        turn("c1", 0),
        event("c1", 0, "reply", 1.2, t=1),
        turn("c1", 1),
        event("c1", 1, "quest_accepted", 1.0, t=2),
        ConversationEnd("c1", "done", 3.0),
    ]
    rewards = {r.turn_index: r.reward for r in turn_rewards(records, SPEC)}
    assert rewards[1] == pytest.approx(1.0)
    assert rewards[0] == pytest.approx(min(0.3 + 0.5 * 1.0, 1.0))


def test_filtered_and_fallback_turns_are_never_positive_nor_trainable():
    records = [turn("c1", 0, filtered=True), event("c1", 0, "quest_accepted"), turn("c1", 1, fallback=True)]
    records.append(event("c1", 1, "reply", 0.5))
    scored = turn_rewards(records, SPEC)
    assert [r.trainable for r in scored] == [False, False]
    assert all(r.reward <= 0.0 for r in scored)


def test_conversations_are_kept_apart_and_orphan_events_ignored():
    records = [turn("a", 0), turn("b", 0, npc="guard"), event("a", 0, "walk_away"), event("b", 5, "quest_accepted")]
    scored = {r.conversation_id: r.reward for r in turn_rewards(records, SPEC)}
    assert scored == {"a": pytest.approx(-0.5), "b": 0.0}
    summary = reward_summary(turn_rewards(records, SPEC))
    assert summary["conversations"] == 2 and summary["mean_reward_per_npc"] == {"guard": 0.0, "smith": -0.5}


def test_default_spec_scores_a_rating():
    scored = turn_rewards([turn("c", 0), event("c", 0, "rating", 1.0)], default_reward_spec())
    assert scored[0].reward == pytest.approx(0.5)


def test_a_conversation_the_spec_cannot_score_is_skipped_and_named_not_fatal():
    from npcrl.errors import RewardSpecError

    records = [turn("bad", 0), event("bad", 0, "rating", None), turn("good", 0), event("good", 0, "rating", 1.0)]
    with pytest.raises(RewardSpecError, match="needs a value"):
        turn_rewards(records, default_reward_spec())
    unscorable: list[str] = []
    scored = turn_rewards(records, default_reward_spec(), unscorable)
    assert [r.conversation_id for r in scored] == ["good"]
    assert len(unscorable) == 1 and unscorable[0].startswith("conversation bad:")
