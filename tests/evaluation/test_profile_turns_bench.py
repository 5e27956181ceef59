"""bench/profile_turns.py: whose turns a round learns from, per player profile of simulated logs."""

from __future__ import annotations

import json
from pathlib import Path

from script_modules import load_script

from npcrl.agent.persona import builtin_personas
from npcrl.playlog import ConversationStart, EngagementEvent, PlayLogWriter
from npcrl.sim.draws import PLAYER_ID_PREFIX
from npcrl.sim.features import line_features
from npcrl.sim.populations import shipped_profiles
from tests.playlog_helpers import SAMPLER, npc_turn

SMITH = builtin_personas()["blacksmith"]


def test_turns_are_counted_and_scored_per_profile(tmp_path: Path, monkeypatch, capsys) -> None:
    # a lore lover stays 6 turns and replies to each; a quest seeker leaves after 2 without a reply
    with PlayLogWriter(tmp_path / "logs") as writer:
        for c, (profile, turns, replies) in enumerate((("lore_lover", 6, True), ("quest_seeker", 2, False))):
            cid = f"sim-b-s0-{c:06d}"
            player = f"{PLAYER_ID_PREFIX}{profile}"
            writer.append(ConversationStart(cid, "blacksmith", player, "Brom", SMITH.persona_hash, "b", SAMPLER, 1.7e9))
            for t in range(turns):
                writer.append(npc_turn(cid, t, tokens=4, npc_id="blacksmith", text="Good steel takes time."))
                if replies:
                    writer.append(EngagementEvent(cid, t, "reply", None, 1.7e9 + t))
    bench = load_script("profile_turns_bench", "bench/profile_turns.py")
    monkeypatch.setattr("sys.argv", ["profile_turns.py", str(tmp_path / "logs"), "--features", "chatty"])
    bench.main()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()}
    # the shipped spec: 0.3 a reply, and each later reply credited at half the weight per turn
    credited = [sum(0.3 * 0.5**j for j in range(6 - t)) for t in range(6)]
    assert rows["lore_lover"][1:4] == ["1", "6 (75%)", f"{sum(credited) / 6:+.3f}"]
    assert rows["quest_seeker"][1:4] == ["1", "2 (25%)", "+0.000"]
    assert rows["all, pooled"][1:3] == ["2", "8 (100%)"]

    # what an update made of them: the lore lover's turns read twice (advantages averaged), one of
    # the quest seeker's once, the other never
    credit = [(f"sim-b-s0-000000#{t}", a) for t in range(6) for a in (0.2, 0.4)] + [("sim-b-s0-000001#0", -0.5)]
    path = tmp_path / "turn_credit.jsonl"
    path.write_text("".join(json.dumps({"turn": turn, "advantage_mean": a}) + "\n" for turn, a in credit))
    monkeypatch.setattr(
        "sys.argv", ["profile_turns.py", str(tmp_path / "logs"), "--features", "chatty", "--credit", str(path)]
    )
    bench.main()
    second = capsys.readouterr().out.split("\n\n", 1)[1].splitlines()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in second}
    assert rows["lore_lover"][1:3] == ["6", "+0.300"] and rows["quest_seeker"][1:3] == ["1", "-0.500"]
    assert rows["all, pooled"][1:3] == ["7", f"{(6 * 0.3 - 0.5) / 7:+.3f}"]


def test_the_players_of_every_shipped_population_are_named_and_scored(tmp_path: Path, monkeypatch, capsys) -> None:
    # an `npcrl populations` run's logs, played by a population's profile (not the default mix's):
    # four one-line conversations with a bard, rated up after the lore lines and down after the others
    lines = (("The old forge of Emberfall.", 1.0), ("Good steel takes time.", -1.0)) * 2
    with PlayLogWriter(tmp_path / "logs") as writer:
        for c, (text, rating) in enumerate(lines):
            cid = f"sim-b-s0-{c:06d}"
            player = f"{PLAYER_ID_PREFIX}bard"
            writer.append(ConversationStart(cid, "blacksmith", player, "Brom", SMITH.persona_hash, "b", SAMPLER, 1.7e9))
            writer.append(npc_turn(cid, 0, tokens=4, npc_id="blacksmith", text=text))
            writer.append(EngagementEvent(cid, 0, "rating", rating, 1.7e9))
    bench = load_script("profile_turns_bench", "bench/profile_turns.py")
    monkeypatch.setattr("sys.argv", ["profile_turns.py", str(tmp_path / "logs"), "--features", "mentions_lore"])
    bench.main()
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[3:5]]
    assert [row[0].strip("| ") for row in rows] == ["bard", "all, pooled"]
    bard = shipped_profiles()["bard"]
    scores = [bard.score(line_features(text, SMITH, [])) for text, _ in lines]
    assert scores[0] > scores[1]  # the bard likes the lore line better
    # score (mean) and r(reward, score): the rating follows the score exactly here
    assert rows[0][4:6] == [f"{sum(scores) / 4:+.2f}", "+1.00"]
