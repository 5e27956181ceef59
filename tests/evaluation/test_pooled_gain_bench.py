"""bench/pooled_gain.py pools paired evaluations: the pooled gain is the paired gain of all pairs
together, each set keeps its own pairs, and sets that do not pair are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from script_modules import load_script

from npcrl.agent.persona import builtin_personas
from npcrl.evaluation.metrics import paired_gain
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter, Record
from npcrl.reward.spec import EventRule, RewardSpec

SPEC = RewardSpec(rules={"reply": EventRule(0.5)}, discount=0.0)
SMITH = builtin_personas()["blacksmith"]


def _bench() -> Any:
    return load_script("pooled_gain_bench", "bench/pooled_gain.py")


def write_logs(directory: Path, rewards: list[float], lines: dict[int, str] | None = None) -> Path:
    """One conversation per reward: as many NPC turns as replies worth 0.5 make it (at least one),
    each saying ``lines[conversation]`` or a line true to the smith's card."""
    records: list[Record] = []
    for c, reward in enumerate(rewards):
        conv = f"c{c}"
        replies = round(reward / 0.5)
        records.append(ConversationStart(conv, "blacksmith", f"p{c}", "Brom", SMITH.persona_hash, "b1", {}, float(c)))
        for t in range(max(replies, 1)):
            records.append(
                NpcTurn(
                    conversation_id=conv,
                    turn_index=t,
                    npc_id="blacksmith",
                    bundle_id="b1",
                    player_text="hi",
                    prompt_ids=[1, 2],
                    response_ids=[3, 4],
                    logprobs=[-0.5, -0.5],
                    full_logprobs=[-0.6, -0.6],
                    text=(lines or {}).get(c, "Good steel takes time."),
                    stop_reason="eos",
                    sampler={},
                    latency_s=0.1,
                    time_to_first_token_s=0.05,
                    filtered=False,
                    fallback=False,
                    time=c + t / 10,
                )  # fmt: skip
            )
            if t < replies:
                records.append(EngagementEvent(conv, t, "reply", None, c + t / 10 + 0.05))
        records.append(ConversationEnd(conv, "closed", c + 0.9))
    with PlayLogWriter(directory) as writer:
        for record in records:
            writer.append(record)
    return directory


def test_the_pooled_row_pairs_every_set_and_each_set_keeps_its_own(tmp_path: Path) -> None:
    bench = _bench()
    a = (write_logs(tmp_path / "a-cand", [1.0, 0.5, 0.0]), write_logs(tmp_path / "a-cur", [0.5, 0.5, 0.5]))
    wrong_name = {0: "My name is Grimbold."}  # the built-in smith is Brom
    b = (write_logs(tmp_path / "b-cand", [1.0, 1.0]), write_logs(tmp_path / "b-cur", [0.0, 0.5], wrong_name))
    first, second, pooled = bench.pooled_gains([a, b], SPEC, seed=3)
    assert (first.conversations, second.conversations, pooled.conversations) == (3, 2, 5)
    assert first.gain == paired_gain([1.0, 0.5, 0.0], [0.5, 0.5, 0.5], seed=3)
    assert second.gain == paired_gain([1.0, 1.0], [0.0, 0.5], seed=3)
    assert pooled.gain == paired_gain([1.0, 0.5, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.0, 0.5], seed=3)
    assert pooled.gain[0] == pytest.approx(0.3)
    assert (pooled.candidate, pooled.current) == (pytest.approx(3.5 / 5), pytest.approx(2.0 / 5))
    assert pooled.candidate_contradictions == 0.0  # the line names no other NPC, trade or place
    # one of b-cur's 2 turns claims another name: half of that set's turns, a fifth of the pooled 5
    assert (first.current_contradictions, second.current_contradictions) == (0.0, 0.5)
    assert pooled.current_contradictions == pytest.approx(1 / 5)
    table = bench.markdown([first, second, pooled])
    assert "| pooled | 5 |" in table and "+75.0%" in table  # 0.3 of the current side's 0.4


def test_sets_that_do_not_pair_are_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    cand, cur = write_logs(tmp_path / "cand", [1.0, 0.5]), write_logs(tmp_path / "cur", [0.5])
    with pytest.raises(
        ValueError,
        match=r"cand has 2 conversations with an NPC turn and .*cur has 1: a pair must be one set of players",
    ):
        bench.pooled_gains([(cand, cur)], SPEC)
    with pytest.raises(SystemExit):
        bench.main([str(cand), str(cur), str(cand)])
    assert "come in pairs" in capsys.readouterr().err


def test_the_loops_pooled_rewards_pair_as_the_bench_does(tmp_path: Path) -> None:
    """``pooled_rewards_of_logs`` (what ``npcrl loop --confirm-rule pooled`` decides on) joins the
    sets in order, so its paired gain is the bench's pooled row; a set that does not pair is named."""
    from npcrl.evaluation.metrics import pooled_rewards_of_logs

    a = (write_logs(tmp_path / "a-cand", [1.0, 0.5, 0.0]), write_logs(tmp_path / "a-cur", [0.5, 0.5, 0.5]))
    b = (write_logs(tmp_path / "b-cand", [1.0, 1.0]), write_logs(tmp_path / "b-cur", [0.0, 0.5]))
    candidate, current = pooled_rewards_of_logs([a, b], SPEC)
    assert (candidate, current) == ([1.0, 0.5, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.0, 0.5])
    assert paired_gain(candidate, current, seed=3) == _bench().pooled_gains([a, b], SPEC, seed=3)[-1].gain
    short = write_logs(tmp_path / "short-cur", [0.5])
    with pytest.raises(ValueError, match=r"b-cand has 2 conversations with an NPC turn and .*short-cur has 1"):
        pooled_rewards_of_logs([a, (b[0], short)], SPEC)


def test_the_play_contradiction_rise_pairs_conversation_k_with_conversation_k(tmp_path: Path) -> None:
    """What the loop's contradiction guard reads from two evaluations (``CARD_CONTRADICTIONS_RISE``):
    per conversation, the contradicting turns over the turns, paired by log order."""
    from npcrl.evaluation.contradictions import paired_contradiction_rise_of_logs
    from npcrl.evaluation.shares import paired_share_rise

    wrong_name = {0: "My name is Grimbold.", 2: "Call me Grimbold."}
    candidate = write_logs(tmp_path / "cand", [1.0, 0.5, 0.0], wrong_name)  # 2, 1 and 1 turns
    current = write_logs(tmp_path / "cur", [0.5, 0.5, 0.5], {1: "My name is Grimbold."})
    rise = paired_contradiction_rise_of_logs(candidate, current, [SMITH])
    assert rise == paired_share_rise([(2, 2), (0, 1), (1, 1)], [(0, 1), (1, 1), (0, 1)])
    assert rise[0] == pytest.approx(3 / 4 - 1 / 3)
    with pytest.raises(ValueError, match="a pair must be one set of players"):
        paired_contradiction_rise_of_logs(candidate, write_logs(tmp_path / "short", [0.5]), [SMITH])
