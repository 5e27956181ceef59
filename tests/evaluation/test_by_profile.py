"""The paired gain split by player profile (``npcrl.evaluation.by_profile``, ``npcrl logs compare``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from npcrl.cli.main import main
from npcrl.errors import LogFormatError
from npcrl.evaluation.by_profile import paired_gain_by_profile, paired_gain_rows, pooled_gain_by_profile
from npcrl.evaluation.metric_names import paired_gain_of_profile
from npcrl.evaluation.metrics import conversation_rewards, paired_gain
from npcrl.paths import default_key_path
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, PlayLogWriter
from npcrl.privacy.pseudonym import load_key
from npcrl.reward.spec import RewardSpec, load_reward_spec
from npcrl.sim.draws import (
    PLAYER_ID_PREFIX,
    drawn_profile,
    simulated_conversation_bundle,
    simulated_conversation_id,
    simulated_conversation_seat,
)
from tests.playlog_helpers import SAMPLER, npc_turn

PROFILES = ["chatty_one", "quiet_one", "quester"]
SEED = 7
CONVERSATIONS = 60
SPEC = """
turn_min = -5.0
turn_max = 5.0

[rules.reply]
weight = 0.3

[rules.rating]
weight = 0.5
value_scale = true

[rules.quest_accepted]
weight = 1.0
"""


def _key() -> bytes:
    """The key this test run's writers log pseudonyms with."""
    return load_key(default_key_path())


def _write_evaluation(directory: Path, bundle_id: str, quests_for: set[str], profiles: list[str] = PROFILES) -> None:
    """An evaluation's logs: conversation k is played by the profile a simulation draws for it and
    gets a reply; the players of ``quests_for`` also accept a quest, and every third one rates."""
    with PlayLogWriter(directory) as writer:
        for k in range(CONVERSATIONS):
            profile = profiles[drawn_profile(SEED, k, len(profiles))]
            cid = simulated_conversation_id(bundle_id, SEED, k)
            player = f"{PLAYER_ID_PREFIX}{profile}"  # the writer logs its pseudonym
            writer.append(ConversationStart(cid, "brom", player, "Brom", "ab" * 32, bundle_id, SAMPLER, 1.7e9))
            writer.append(npc_turn(cid, 0, tokens=4, bundle_id=bundle_id))
            writer.append(EngagementEvent(cid, 0, "reply", None, 1.7e9 + 1))
            if k % 3 == 0:
                writer.append(EngagementEvent(cid, 0, "rating", 1.0 if k % 2 else -1.0, 1.7e9 + 2))
            if profile in quests_for:
                writer.append(EngagementEvent(cid, 0, "quest_accepted", None, 1.7e9 + 3))
            writer.append(ConversationEnd(cid, "player_left", 1.7e9 + 4))


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    """A spec whose turns are not clipped, so a quest adds exactly 1 to its conversation."""
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def spec(spec_file: Path) -> RewardSpec:
    return load_reward_spec(spec_file)


@pytest.fixture
def evaluation(tmp_path: Path) -> tuple[Path, Path]:
    """(candidate, current): the candidate wins quests from ``quester`` players only."""
    candidate, current = tmp_path / "candidate", tmp_path / "current"
    _write_evaluation(candidate, "cccccccccccccccc", {"quester"})
    _write_evaluation(current, "bbbbbbbbbbbbbbbb", set())
    return candidate, current


def test_the_gain_lands_on_the_profile_that_earned_it(evaluation: tuple[Path, Path], spec: RewardSpec) -> None:
    candidate, current = evaluation
    splits = paired_gain_by_profile(candidate, current, spec, PROFILES, _key())
    drawn = [PROFILES[drawn_profile(SEED, k, len(PROFILES))] for k in range(CONVERSATIONS)]
    assert [s.profile for s in splits] == PROFILES
    assert [s.conversations for s in splits] == [drawn.count(p) for p in PROFILES]
    by_name = {s.profile: s for s in splits}
    assert by_name["quester"].gain == (1.0, 1.0, 1.0)  # one quest each, nothing else differs
    assert by_name["chatty_one"].gain == by_name["quiet_one"].gain == (0.0, 0.0, 0.0)
    assert by_name["quester"].candidate == pytest.approx(by_name["quester"].current + 1.0)
    # the parts add up to the whole: the profile gains weighted by their conversations
    overall, _, _ = paired_gain(conversation_rewards(candidate, spec), conversation_rewards(current, spec))
    assert sum(s.gain[0] * s.conversations for s in splits) / CONVERSATIONS == pytest.approx(overall)


def test_evaluations_with_other_players_pool_in(
    tmp_path: Path, evaluation: tuple[Path, Path], spec: RewardSpec
) -> None:
    candidate, current = evaluation
    fresh_candidate, fresh_current = tmp_path / "fresh-candidate", tmp_path / "fresh-current"
    _write_evaluation(fresh_candidate, "cccccccccccccccc", {"quiet_one"}, profiles=PROFILES[::-1])
    _write_evaluation(fresh_current, "bbbbbbbbbbbbbbbb", set(), profiles=PROFILES[::-1])
    pairs = [(candidate, current), (fresh_candidate, fresh_current)]
    pooled = {s.profile: s for s in pooled_gain_by_profile(pairs, spec, PROFILES, _key())}
    first, second = ({s.profile: s for s in paired_gain_by_profile(*pair, spec, PROFILES, _key())} for pair in pairs)
    for name in PROFILES:
        assert pooled[name].conversations == first[name].conversations + second[name].conversations
        wins = first[name].gain[0] * first[name].conversations + second[name].gain[0] * second[name].conversations
        assert pooled[name].gain[0] == pytest.approx(wins / pooled[name].conversations)
    assert pooled["chatty_one"].gain == (0.0, 0.0, 0.0) and 0 < pooled["quiet_one"].gain[0] < 1


def test_profiles_or_a_key_that_do_not_match_the_logs_are_refused(
    evaluation: tuple[Path, Path], spec: RewardSpec
) -> None:
    candidate, current = evaluation
    with pytest.raises(LogFormatError, match=r"candidate: conversation 'sim-.*' is played by 'p-[0-9a-f]+', none"):
        paired_gain_by_profile(candidate, current, spec, PROFILES[:2], _key())
    with pytest.raises(LogFormatError, match="none of the player profiles given"):
        paired_gain_by_profile(candidate, current, spec, PROFILES, bytes(32))  # another machine's key


def test_evaluations_of_other_players_are_refused(
    tmp_path: Path, evaluation: tuple[Path, Path], spec: RewardSpec
) -> None:
    candidate, _ = evaluation
    shuffled = tmp_path / "shuffled"
    _write_evaluation(shuffled, "bbbbbbbbbbbbbbbb", set(), profiles=PROFILES[::-1])
    with pytest.raises(LogFormatError, match=r"conversation \d+ is played by '\w+' in .*candidate and by '\w+' in"):
        paired_gain_by_profile(candidate, shuffled, spec, PROFILES, _key())
    fewer = tmp_path / "fewer"
    with PlayLogWriter(fewer) as writer:
        cid = simulated_conversation_id("bbbbbbbbbbbbbbbb", SEED, 0)
        start = ConversationStart(
            cid, "brom", f"{PLAYER_ID_PREFIX}quester", "Brom", "ab" * 32, "b" * 16, SAMPLER, 1.7e9
        )
        writer.append(start)
        writer.append(npc_turn(cid, 0, tokens=4))
    with pytest.raises(ValueError, match="a pair must be one set of players"):
        paired_gain_by_profile(candidate, fewer, spec, PROFILES, _key())


def test_a_simulated_id_gives_back_its_seed_and_index() -> None:
    assert simulated_conversation_seat(simulated_conversation_id("0123456789abcdef", 3, 42)) == (3, 42)
    assert simulated_conversation_seat(simulated_conversation_id("another-bundle", -5, 1234567)) == (-5, 1234567)
    assert simulated_conversation_seat("player-7") is None
    assert simulated_conversation_seat("sim-abc-s3-42") is None  # the index is written with six digits


def test_logs_compare_prints_the_split(evaluation: tuple[Path, Path], spec_file: Path, tmp_path: Path, capsys) -> None:
    candidate, current = evaluation
    players = tmp_path / "players"
    players.mkdir()
    shipped = Path(__file__).parents[2] / "npcrl" / "data" / "players" / "curious.toml"
    for name in PROFILES:  # a profile's name is its file's stem
        shutil.copy(shipped, players / f"{name}.toml")
    compare = ["logs", "compare", str(candidate), str(current), "--players", str(players), "--spec", str(spec_file)]
    assert main([*compare, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["all"]["conversations"] == CONVERSATIONS
    assert {p["profile"]: p["gain"][0] for p in report["profiles"]} == {
        "chatty_one": 0.0,
        "quiet_one": 0.0,
        "quester": 1.0,
    }
    assert main([*compare, "--json", "--and", str(candidate), str(current)]) == 0  # the same players twice
    pooled = json.loads(capsys.readouterr().out)
    assert pooled["all"]["conversations"] == 2 * CONVERSATIONS
    assert [p["conversations"] for p in pooled["profiles"]] == [2 * p["conversations"] for p in report["profiles"]]
    assert [p["gain"][0] for p in pooled["profiles"]] == [p["gain"][0] for p in report["profiles"]]
    assert main(compare) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[0] == "players" and table[1].startswith("all players")
    assert any(line.startswith("quester") and "+1.000 [+1.000, +1.000]" in line for line in table)
    assert main(["logs", "compare", str(candidate), str(current), "--population", "humour"]) == 2
    assert "none of the player profiles given (jester, tavern_regular, wry_veteran)" in capsys.readouterr().err


def test_logs_compare_names_the_shipped_population_that_played_the_logs(
    tmp_path: Path, spec_file: Path, capsys
) -> None:
    """An ``npcrl populations`` run's evaluation compared without ``--population``: the default
    profiles did not play it, and the error says which shipped population did."""
    humour = ["jester", "tavern_regular", "wry_veteran"]
    candidate, current = tmp_path / "candidate", tmp_path / "current"
    _write_evaluation(candidate, "cccccccccccccccc", {"jester"}, humour)
    _write_evaluation(current, "bbbbbbbbbbbbbbbb", set(), humour)
    compare = ["logs", "compare", str(candidate), str(current), "--spec", str(spec_file)]
    assert main(compare) == 2
    assert "the shipped population 'humour' did: add --population humour" in capsys.readouterr().err
    assert main([*compare, "--population", "brief"]) == 2  # a population given: no advice
    assert "add --population" not in capsys.readouterr().err
    assert main([*compare, "--population", "humour", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {p["profile"]: p["gain"][0] for p in report["profiles"]}["jester"] == 1.0


def test_rows_for_a_report_never_stop_the_run(
    evaluation: tuple[Path, Path], spec: RewardSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    candidate, current = evaluation
    rows, left_out = paired_gain_rows(candidate, current, spec, PROFILES)
    assert rows[paired_gain_of_profile("quester")] == (1.0, 1.0, 1.0) and left_out is None
    assert paired_gain_rows(candidate, current, spec, ["quester"]) == ({}, None)  # one profile: the whole is its row
    one = tmp_path / "one"
    with PlayLogWriter(one) as writer:  # a side that does not pair: fewer conversations
        cid = simulated_conversation_id("bbbbbbbbbbbbbbbb", SEED, 0)
        writer.append(
            ConversationStart(cid, "brom", f"{PLAYER_ID_PREFIX}quester", "Brom", "ab" * 32, "b", SAMPLER, 1.7e9)
        )
        writer.append(npc_turn(cid, 0, tokens=4))
    rows, left_out = paired_gain_rows(candidate, one, spec, PROFILES)
    assert rows == {} and left_out is not None and "a pair must be one set of players" in left_out
    monkeypatch.setenv("NPCRL_KEY_FILE", str(tmp_path / "no-key-here"))
    rows, left_out = paired_gain_rows(candidate, current, spec, PROFILES)
    assert rows == {} and left_out is not None and "no-key-here" in left_out


def test_a_simulated_id_gives_back_its_bundle() -> None:
    assert simulated_conversation_bundle(simulated_conversation_id("0123456789abcdef0123", 3, 42)) == "0123456789abcdef"
    assert simulated_conversation_bundle(simulated_conversation_id("another-bundle", 3, 42)) == "another-bundle"
    assert simulated_conversation_bundle("player-7") is None
