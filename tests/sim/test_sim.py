"""Simulated players: line features, TOML player profiles, headless conversations into real play logs."""

from __future__ import annotations

import argparse
import importlib
import json
import random
import re
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from npcrl.agent.npc_agent import AgentConfig
from npcrl.agent.persona import builtin_personas
from npcrl.cli.sim import add_simulate_parser, format_summary
from npcrl.errors import NpcrlError
from npcrl.paths import default_key_path
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter, read_log_dir
from npcrl.privacy.pseudonym import load_key, pseudonym
from npcrl.reward.engagement import turn_rewards
from npcrl.reward.spec import default_reward_spec
from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.sampler import SamplerConfig
from npcrl.sim import profiles as profiles_module
from npcrl.sim.features import FEATURES, best_quest, line_features, persona_topics
from npcrl.sim.ordered import max_concurrency
from npcrl.sim.profiles import PlayerProfile, PlayerProfileError, builtin_profiles, load_profile, load_profiles
from npcrl.sim.simulate import (
    SimulatedConversation,
    derive_seed,
    simulate,
    simulated_conversation_id,
)

BROM = builtin_personas()["blacksmith"]
simulate_module = importlib.import_module("npcrl.sim.simulate")  # the package exports the function as `simulate`


def words_line(n: int) -> str:
    return " ".join(["stone"] * n)


# ---------------------------------------------------------------------------------------- features


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("What brings you to the forge, friend?", 1.0),
        ("Hm. You want a blade? Twelve silver.", 1.0),
        ("Tell me where you are headed.", 0.5),
        ("Mind the sparks. Do you need a horseshoe", 0.5),
        ("The forge is hot today. Mind the sparks.", 0.0),
        ("", 0.0),
    ],
    ids=["question-mark", "mark-mid-line", "question-word-no-mark", "second-sentence-asks", "statement", "empty"],
)
def test_asks_back(line, expected):
    assert line_features(line, BROM, [])["asks_back"] == expected


@pytest.mark.parametrize(
    ("line", "low", "high"),
    [
        ("Could you bring me a sack of charcoal? I'll pay well.", 1.0, 1.0),
        ("The iron wagon from Greyvein never came down the north road.", 1.0, 1.0),
        ("I have a job for you.", 0.5, 0.5),
        ("Mind the sparks, it is hot today.", 0.0, 0.0),
    ],
    ids=["offer-cues", "quest-goal-overlap-without-cues", "one-cue", "small-talk"],
)
def test_offers_quest(line, low, high):
    assert low <= line_features(line, BROM, [])["offers_quest"] <= high


def test_best_quest_picks_the_goal_the_line_offers():
    charcoal = best_quest("Bring me charcoal from Old Wenna in Ashwood.", BROM)
    wagon = best_quest("Find the iron wagon on the north road.", BROM)
    assert charcoal.startswith("bring a sack of charcoal") and wagon.startswith("ride up the north road")


def test_lore_names_count_more_than_other_lore_words():
    names = line_features("Greyvein and Oakrest.", BROM, [])["mentions_lore"]
    common = line_features("The bridge and the hills.", BROM, [])["mentions_lore"]
    none = line_features("Nice weather for ducks.", BROM, [])["mentions_lore"]
    assert names == 1.0 and common == 0.5 and none == 0.0


def test_persona_topics_are_lore_names_not_sentence_starts():
    topics = persona_topics(BROM)
    assert {"Greyvein", "Oakrest", "Captain Hedda", "Sleeping Fox", "Old Wenna"} <= set(topics)
    assert "Wolves" not in topics and "Your" not in topics and "Every" not in topics


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("As an AI language model, I cannot forge swords.", 0.0),
        ("I am just an assistant.", 0.0),
        ("Look it up on the internet.", 0.0),
        ("Send me an e-mail, friend.", 0.0),
        ("Check your phone for the price.", 0.0),
        ("Good steel takes time. Bad steel takes lives.", 1.0),
        ("Iron mail shirts for the watch, twelve silver.", 1.0),
    ],
    ids=["as-an-ai", "assistant", "internet", "e-mail", "phone", "in-character", "mail-shirt-is-not-email"],
)
def test_in_character(line, expected):
    assert line_features(line, BROM, [])["in_character"] == expected


@pytest.mark.parametrize(
    ("count", "concise"),
    [(1, 1.0), (25, 1.0), (32, 0.8), (60, 0.0), (80, 0.0)],
    ids=["1", "25", "32", "60", "80"],
)
def test_concise_and_chatty(count, concise):
    features = line_features(words_line(count), BROM, [])
    assert features["words"] == count
    assert features["concise"] == pytest.approx(concise)
    assert features["chatty"] == pytest.approx(1.0 - concise)


@pytest.mark.parametrize(
    ("line", "previous", "expected"),
    [
        ("Good steel takes time.", [], 0.0),
        ("Good steel takes time.", ["Good steel takes time."], 1.0),
        ("Good steel takes time.", ["Bad steel takes lives.", "Good steel takes a while."], 1 / 2),
        ("One two three four five", ["zero one two three nine", "two three four five"], 2 / 3),
        ("Hm.", ["Hm!"], 1.0),
        ("Hm.", ["Hm, friend."], 0.0),
        ("Hm, friend.", ["Hm. Friend!"], 1.0),
    ],
    ids=[
        "no-history",
        "verbatim",
        "half-of-its-3-grams",
        "best-earlier-line",
        "short-repeat",
        "short-new",
        "two-words",
    ],
)
def test_repeats_itself(line, previous, expected):
    assert line_features(line, BROM, previous)["repeats_itself"] == pytest.approx(expected)


@pytest.mark.parametrize("line", ["", "   ", "...", "?!"], ids=["empty", "spaces", "dots", "punctuation"])
def test_empty_lines(line):
    features = line_features(line, BROM, ["Good steel takes time."])
    assert features["empty"] == 1.0 and features["words"] == 0
    assert features["asks_back"] == features["offers_quest"] == features["repeats_itself"] == 0.0


def test_features_are_bounded_and_pure():
    lines = [
        "What brings you here? Could you bring me charcoal from Old Wenna in Ashwood? I pay ten silver.",
        words_line(45) + " Greyvein.",
        "As an AI I use the internet.",
    ]
    for line in lines:
        first = line_features(line, BROM, lines[:1])
        assert first == line_features(line, BROM, lines[:1])
        assert set(first) == {*FEATURES, "words"}
        assert all(0.0 <= first[name] <= 1.0 for name in FEATURES)


# ---------------------------------------------------------------------------------------- profiles

VALID_KEYS = {
    "description": '"A test player."',
    "bias": "0.0",
    "noise": "0.2",
    "walk_away_below": "-0.5",
    "rating_probability": "0.5",
    "rating_threshold": "0.2",
    "quest_accept_probability": "0.5",
    "reply_latency_s": "3.0",
    "reply_latency_jitter_s": "1.0",
    "max_turns": "5",
    "openers": '["Hello, {npc}."]',
    "follow_ups": '["Tell me about {topic}."]',
}


def profile_text(changes: dict[str, str | None] | None = None, weights: str = "asks_back = 1.0") -> str:
    """A profile file: the valid keys with ``changes`` applied (None removes a key)."""
    keys = {**VALID_KEYS, **(changes or {})}
    top = "".join(f"{key} = {value}\n" for key, value in keys.items() if value is not None)
    return f"{top}\n[weights]\n{weights}\n"


VALID_PROFILE = profile_text()


def write_profile(tmp_path: Path, text: str, name: str = "tester") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_profiles_load_and_contrast():
    shipped = builtin_profiles()
    assert set(shipped) == {"curious", "quest_seeker", "impatient", "lore_lover"}
    assert shipped["curious"].weights["asks_back"] > 0
    assert shipped["quest_seeker"].weights["offers_quest"] > max(
        shipped[name].weights.get("offers_quest", 0.0) for name in ("curious", "impatient", "lore_lover")
    )
    assert shipped["impatient"].weights["chatty"] < 0 and shipped["impatient"].weights["repeats_itself"] < 0
    assert shipped["lore_lover"].weights["chatty"] > 0
    assert shipped["lore_lover"].weights["mentions_lore"] == max(
        p.weights.get("mentions_lore", 0) for p in shipped.values()
    )


def test_a_valid_profile_loads_with_its_file_stem_as_name(tmp_path):
    profile = load_profile(write_profile(tmp_path, VALID_PROFILE))
    assert profile.name == "tester" and profile.max_turns == 5 and dict(profile.weights) == {"asks_back": 1.0}
    assert load_profiles(tmp_path) == {"tester": profile} == load_profiles(tmp_path / "tester.toml")


def test_the_documented_example_profile_loads(tmp_path):
    doc = profiles_module.__doc__ or ""
    example = doc.split("``haggler.toml``::", 1)[1].split("Player lines may use", 1)[0]
    profile = load_profile(write_profile(tmp_path, textwrap.dedent(example), "haggler"))
    assert profile.weights["offers_quest"] == 1.2 and profile.topics == ("prices", "the road")


@pytest.mark.parametrize(
    ("changes", "weights", "key", "problem"),
    [
        ({"patience": "3"}, "asks_back = 1.0", "patience", "unknown key"),
        ({"name": '"x"'}, "asks_back = 1.0", "name", "file stem"),
        ({}, "asks_back = 1.0\nflattery = 0.5", "weights.flattery", "unknown feature"),
        ({}, "words = 0.1", "weights.words", "unknown feature"),
        ({}, "asks_back = true", "weights.asks_back", "must be a finite number"),
        ({"rating_probability": "1.5"}, "", "rating_probability", ">= 0 and <= 1"),
        ({"quest_accept_probability": "-0.1"}, "", "quest_accept_probability", ">= 0 and <= 1"),
        ({"noise": "-1.0"}, "", "noise", ">= 0 and <= 1000"),
        ({"reply_latency_s": "0"}, "", "reply_latency_s", "> 0"),
        ({"max_turns": "0"}, "", "max_turns", "an integer >= 1 and <= 100"),
        ({"max_turns": "2.5"}, "", "max_turns", "integer"),
        ({"openers": '["Hello, {player}."]'}, "", "openers", "{player}"),
        ({"follow_ups": "[]"}, "", "follow_ups", "at least 1"),
        ({"topics": '"the mine"'}, "", "topics", "array of strings"),
    ],
    ids=[
        "unknown-key",
        "name-key",
        "unknown-feature",
        "count-feature",
        "bool-weight",
        "rating-probability",
        "quest-probability",
        "negative-noise",
        "zero-latency",
        "zero-turns",
        "float-turns",
        "bad-slot",
        "no-follow-ups",
        "topics-string",
    ],
)
def test_profile_errors_name_file_and_key(tmp_path, changes, weights, key, problem):
    path = write_profile(tmp_path, profile_text(changes, weights))
    with pytest.raises(PlayerProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message and repr(key) in message and problem in message
    assert isinstance(info.value, NpcrlError)


def test_missing_required_keys_and_bad_files_are_named(tmp_path):
    path = write_profile(tmp_path, profile_text({"description": None}))
    with pytest.raises(PlayerProfileError, match=re.escape(str(path)) + ".*'description'"):
        load_profile(path)
    broken = write_profile(tmp_path, "description = \n", "broken")
    with pytest.raises(PlayerProfileError, match=re.escape(str(broken)) + ": invalid TOML"):
        load_profile(broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PlayerProfileError, match="no player profiles"):
        load_profiles(empty)
    with pytest.raises(PlayerProfileError, match="no such"):
        load_profiles(tmp_path / "missing.toml")


def test_constructor_validates_too():
    with pytest.raises(PlayerProfileError, match="'weights.asks_bak'.*did you mean 'asks_back'"):
        PlayerProfile(name="p", description="", weights={"asks_bak": 1.0}, openers=("Hi.",), follow_ups=("So?",))


def reaction_stats(profile: PlayerProfile, line: str, draws: int = 2000, seed: int = 0) -> dict[str, float]:
    features = line_features(line, BROM, [])
    rng = random.Random(seed)
    reactions = [profile.react(features, rng) for _ in range(draws)]
    ratings = [r.rating for r in reactions if r.rating is not None]
    return {
        "mean_rating": sum(ratings) / len(ratings),
        "walk_away": sum(r.walk_away for r in reactions) / draws,
        "quest": sum(r.quest_accepted for r in reactions) / draws,
        "latency": sum(r.reply_latency_s for r in reactions) / draws,
    }


def test_curious_player_rates_questions_higher():
    curious = builtin_profiles()["curious"]
    asked = reaction_stats(curious, "Mind the sparks. Are you cold today?")
    told = reaction_stats(curious, "Mind the sparks. It is cold today.")
    assert asked["mean_rating"] > told["mean_rating"] + 1.0
    # A player who does not weigh questions cannot tell the two lines apart.
    indifferent = PlayerProfile(**{**vars_of(curious), "weights": {"concise": 0.5}})
    a = reaction_stats(indifferent, "Mind the sparks. Are you cold today?")
    b = reaction_stats(indifferent, "Mind the sparks. It is cold today.")
    assert a == b


def vars_of(profile: PlayerProfile) -> dict[str, object]:
    return {k: v for k, v in vars(profile).items() if not k.startswith("_")}


def test_impatient_player_walks_away_from_long_lines_and_repetition():
    impatient = builtin_profiles()["impatient"]
    short = reaction_stats(impatient, words_line(10))
    long = reaction_stats(impatient, words_line(80))
    assert long["walk_away"] > 0.9 and short["walk_away"] < 0.05
    curious = reaction_stats(builtin_profiles()["curious"], words_line(80))
    assert curious["walk_away"] < 0.05  # tolerant of chatter
    repeated = line_features("Mind the sparks.", BROM, ["Mind the sparks."])
    rng = random.Random(1)
    assert sum(impatient.react(repeated, rng).walk_away for _ in range(2000)) > 1900


def test_quest_seeker_takes_offered_quests_only():
    seeker = builtin_profiles()["quest_seeker"]
    offer = reaction_stats(seeker, "Could you bring me charcoal from Old Wenna? I'll pay ten silver.")
    chatter = reaction_stats(seeker, "The forge is hot. Mind the sparks.")
    assert offer["quest"] > 0.5 and chatter["quest"] == 0.0
    assert chatter["walk_away"] > offer["walk_away"]


def test_reply_latency_follows_the_profile():
    for profile in builtin_profiles().values():
        mean = reaction_stats(profile, "Hm.")["latency"]
        assert mean == pytest.approx(profile.reply_latency_s, rel=0.05)


def test_react_always_draws_the_same_random_numbers():
    profile = builtin_profiles()["quest_seeker"]
    a, b = random.Random(7), random.Random(7)
    profile.react(line_features("", BROM, []), a)
    profile.react(line_features("Could you bring me charcoal? Ten silver.", BROM, []), b)
    assert a.random() == b.random()


def test_player_lines_fill_npc_and_topic():
    profile = PlayerProfile(
        name="p", description="", weights={}, openers=("Hello, {npc}!",), follow_ups=("And {topic}?",)
    )
    rng = random.Random(0)
    assert profile.player_line(BROM, 0, rng) == "Hello, Brom!"
    topics = {profile.player_line(BROM, 1, rng)[4:-1] for _ in range(200)}
    assert topics == set(persona_topics(BROM))
    own = PlayerProfile(**{**vars_of(profile), "topics": ("the weather",)})
    assert own.player_line(BROM, 3, rng) == "And the weather?"


# -------------------------------------------------------------------------------------- simulation

SIM_CONFIG = AgentConfig(sampler=SamplerConfig(temperature=1.0, top_p=0.95, max_new_tokens=16), prompt_token_budget=220)


def short_prompts() -> dict[str, str]:
    # The tiny test model has 256 positions; the real cards' system prompts are longer than that.
    return {pid: f"You are {p.name}. Answer in one or two sentences." for pid, p in builtin_personas().items()}


def run_sim(model, log_dir: Path, conversations: int = 6, seed: int = 3, concurrency: int = 1):
    results: list[SimulatedConversation] = []
    with PlayLogWriter(log_dir) as writer:
        summary = simulate(
            model,
            builtin_personas(),
            builtin_profiles(),
            writer,
            conversations,
            seed,
            agent_config=SIM_CONFIG,
            on_conversation=results.append,
            system_prompts=short_prompts(),
            concurrency=concurrency,
        )
    return summary, results, list(read_log_dir(log_dir))


@pytest.fixture(scope="module")
def model(tiny_bundles) -> OnnxCausalLM:
    return OnnxCausalLM(tiny_bundles["llama-fp32"])


@pytest.fixture(scope="module")
def sim_run(model, tmp_path_factory):
    return run_sim(model, tmp_path_factory.mktemp("sim-logs"))


def by_conversation(records):
    grouped = defaultdict(list)
    for record in records:
        grouped[record.conversation_id].append(record)
    return grouped


def test_simulation_writes_real_play_logs(sim_run):
    summary, results, records = sim_run
    persona_ids = list(builtin_personas())
    assert [r.persona_id for r in results] == [persona_ids[k % len(persona_ids)] for k in range(6)]
    grouped = by_conversation(records)
    assert list(grouped) == [r.conversation_id for r in results]
    for result in results:
        log = grouped[result.conversation_id]
        start, end = log[0], log[-1]
        assert isinstance(start, ConversationStart) and isinstance(end, ConversationEnd)
        assert start.npc_id == result.persona_id and start.player_id == pseudonym(
            f"sim-{result.profile}", load_key(default_key_path())
        )
        assert start.sampler["seed"] == derive_seed(3, result.index, "sampler")
        assert end.reason == result.end_reason
        turns = [r for r in log if isinstance(r, NpcTurn)]
        assert [t.turn_index for t in turns] == list(range(len(result.turns)))
        for logged, played in zip(turns, result.turns, strict=True):
            assert logged.player_text == played.player_text and logged.text == played.npc_text
            assert logged.fallback or logged.filtered or logged.response_ids
        # Every event the player's reactions imply, in order, on the line it followed; nothing else.
        expected = []
        for i, played in enumerate(result.turns):
            if played.reaction.rating is not None:
                expected.append(("rating", i, played.reaction.rating))
            if played.quest is not None:
                expected.append(("quest_accepted", i, 1.0))
            if i + 1 < len(result.turns):
                expected.append(("reply", i, played.reaction.reply_latency_s))
        if result.end_reason == "walked_away":
            assert result.turns[-1].reaction.walk_away
            expected.append(("walk_away", len(result.turns) - 1, 1.0))
        else:
            profile = builtin_profiles()[result.profile]
            assert len(result.turns) == profile.max_turns and not any(t.reaction.walk_away for t in result.turns)
        events = [(r.kind, r.turn_index, r.value) for r in log if isinstance(r, EngagementEvent)]
        assert sorted(events, key=lambda e: e[1]) == expected
    # The tiny model speaks for real: most turns are its own lines, not fallbacks.
    assert summary.fallback_turns < summary.turns / 2


def test_simulated_logs_score_as_rewards(sim_run):
    summary, results, records = sim_run
    rewards = turn_rewards(records, default_reward_spec())
    assert len(rewards) == summary.turns == sum(isinstance(r, NpcTurn) for r in records)
    played = {(r.conversation_id, i): t for r in results for i, t in enumerate(r.turns)}
    assert set(played) == {(r.conversation_id, r.turn_index) for r in rewards}
    for reward in rewards:
        turn = played[(reward.conversation_id, reward.turn_index)]
        assert reward.trainable == (not turn.fallback)
        assert -1.0 <= reward.reward <= 1.0
        if turn.fallback:
            assert reward.reward <= 0.0
    kinds = [kind for r in rewards for kind, _ in r.events]
    assert kinds.count("reply") == summary.turns - summary.conversations
    assert kinds.count("walk_away") == summary.walk_aways
    assert kinds.count("quest_accepted") == summary.quests_accepted


def test_summary_counts_match_the_logs(sim_run):
    summary, results, records = sim_run
    events = [r for r in records if isinstance(r, EngagementEvent)]
    assert summary.conversations == 6 == len(results)
    assert summary.turns == sum(len(r.turns) for r in results)
    assert summary.walk_aways == sum(e.kind == "walk_away" for e in events)
    assert summary.ratings_positive == sum(e.kind == "rating" and e.value == 1.0 for e in events)
    assert summary.ratings_negative == sum(e.kind == "rating" and e.value == -1.0 for e in events)
    assert summary.quests_accepted == sum(e.kind == "quest_accepted" for e in events)
    assert sum(c.conversations for c in summary.per_profile.values()) == 6
    assert sum(c.turns for c in summary.per_profile.values()) == summary.turns
    assert summary.simulated_reply_seconds == pytest.approx(sum(e.value for e in events if e.kind == "reply"))
    assert set(summary.mean_features) == {*FEATURES, "words"}
    assert summary.mean_features["words"] > 0
    assert json.loads(json.dumps(summary.to_dict()))["per_profile"].keys() == summary.per_profile.keys()
    text = format_summary(summary, "logs")
    assert f"{summary.conversations} conversation(s), {summary.turns} NPC line(s)" in text
    assert all(name in text for name in summary.per_profile)


def comparable(records):
    """Records without what differs between runs by design (ids, wall-clock times, latencies)."""
    out = []
    for r in records:
        if isinstance(r, NpcTurn):
            out.append(("turn", r.turn_index, r.player_text, r.text, tuple(r.response_ids), r.fallback))
        elif isinstance(r, EngagementEvent):
            out.append(("event", r.turn_index, r.kind, r.value, tuple(sorted(r.data.items()))))
        elif isinstance(r, ConversationStart):
            out.append(("start", r.npc_id, r.player_id, r.sampler["seed"]))
        else:
            out.append(("end", r.reason))
    return out


def test_same_seed_same_logs_and_the_first_conversations_do_not_depend_on_the_count(sim_run, model, tmp_path):
    _, results, records = sim_run
    _, again, records_again = run_sim(model, tmp_path / "again", conversations=6, seed=3)
    assert comparable(records_again) == comparable(records)
    assert [(r.profile, r.end_reason) for r in again] == [(r.profile, r.end_reason) for r in results]
    _, fewer, records_fewer = run_sim(model, tmp_path / "fewer", conversations=2, seed=3)
    first_two = sum(1 for r in records if r.conversation_id in {c.conversation_id for c in results[:2]})
    assert comparable(records_fewer) == comparable(records[:first_two])


def test_headless_play_has_no_wall_clock_budget(sim_run, model, tmp_path):
    """A budget the agent would miss on a loaded machine changes no simulated line: the same
    conversations as the run without one, and no turn cancelled."""
    from dataclasses import replace

    _, _, records = sim_run
    with PlayLogWriter(tmp_path / "budget") as writer:
        simulate(
            model,
            builtin_personas(),
            builtin_profiles(),
            writer,
            6,
            3,
            agent_config=replace(SIM_CONFIG, time_budget_s=1e-6),
            system_prompts=short_prompts(),
        )
    budgeted = list(read_log_dir(tmp_path / "budget"))
    assert not [r for r in budgeted if isinstance(r, NpcTurn) and r.stop_reason == "cancelled"]
    assert comparable(budgeted) == comparable(records)


def test_another_seed_gives_other_conversations(sim_run, model, tmp_path):
    _, results, records = sim_run
    _, other, other_records = run_sim(model, tmp_path / "other", conversations=2, seed=4)
    first_two = sum(1 for r in records if r.conversation_id in {c.conversation_id for c in results[:2]})
    assert comparable(other_records) != comparable(records[:first_two])
    # Other ids too, so the two runs' logs can be pooled in one directory.
    assert not {r.conversation_id for r in other} & {r.conversation_id for r in results}


def test_conversation_ids_follow_bundle_seed_and_index(sim_run, model, tmp_path):
    """Reruns log the same ids (the trainer's holdout split ranks them), and a directory that holds
    a run's conversations refuses the same run again instead of merging two runs' records."""
    _, results, records = sim_run
    ids = [simulated_conversation_id(model.bundle_id, 3, k) for k in range(6)]
    assert [r.conversation_id for r in results] == ids == list(by_conversation(records))
    assert len(set(ids)) == 6 and simulated_conversation_id("another-bundle", 3, 0) not in ids
    log_dir = tmp_path / "pooled"
    run_sim(model, log_dir, conversations=2, seed=5)
    before = sorted((p.name, p.read_bytes()) for p in log_dir.iterdir())
    with pytest.raises(ValueError, match=rf"{log_dir}: already holds conversation sim-.*-s5-000000"):
        run_sim(model, log_dir, conversations=3, seed=5)
    # nothing logged by the refused run; the directory's files are as they were (the refused
    # run's writer may leave an empty file of its own, with only the header)
    kept = sorted((p.name, p.read_bytes()) for p in log_dir.iterdir() if p.name in dict(before))
    assert kept == before
    assert [r.conversation_id for r in read_log_dir(log_dir) if isinstance(r, ConversationStart)] == [
        simulated_conversation_id(model.bundle_id, 5, k) for k in range(2)
    ]


def test_simulate_rejects_empty_inputs(model):
    with pytest.raises(ValueError, match="persona"):
        simulate(model, {}, builtin_profiles(), None, 1, 0)
    with pytest.raises(ValueError, match="player profile"):
        simulate(model, builtin_personas(), [], None, 1, 0)
    with pytest.raises(ValueError, match="'smith'"):
        simulate(model, builtin_personas(), builtin_profiles(), None, 1, 0, system_prompts={"smith": "x"})
    with pytest.raises(ValueError, match="conversations"):
        simulate(model, builtin_personas(), builtin_profiles(), None, -1, 0)


# ------------------------------------------------------------------------------------- concurrency


def spy_on_conversations(monkeypatch, meet: int = 0, fail_at: int | None = None) -> dict:
    """Wraps ``play_conversation``: records which conversations start and the most played at once;
    the first ``meet`` wait for each other (they must run at the same time), and conversation
    ``fail_at`` raises."""
    real = simulate_module.play_conversation
    lock = threading.Lock()
    seen = {"started": [], "active": 0, "peak": 0}
    barrier = threading.Barrier(meet, timeout=300) if meet else None

    def spy(agent, profile, rng, index=0, conversation_id=None):
        with lock:
            seen["started"].append(index)
            seen["active"] += 1
            seen["peak"] = max(seen["peak"], seen["active"])
        try:
            if barrier is not None and index < meet:
                barrier.wait()
            if index == fail_at:
                raise RuntimeError(f"boom in conversation {index}")
            return real(agent, profile, rng, index, conversation_id)
        finally:
            with lock:
                seen["active"] -= 1

    monkeypatch.setattr(simulate_module, "play_conversation", spy)
    return seen


def turns_of(records, results) -> dict[int, list[NpcTurn]]:
    """The logged NPC turns of each conversation, by conversation index."""
    grouped = by_conversation(records)
    return {r.index: [t for t in grouped[r.conversation_id] if isinstance(t, NpcTurn)] for r in results}


def test_concurrent_conversations_equal_the_serial_run(sim_run, model, tmp_path, monkeypatch):
    summary, results, records = sim_run
    evictions = model.pool.evictions
    seen = spy_on_conversations(monkeypatch, meet=3)
    c_summary, c_results, c_records = run_sim(model, tmp_path / "concurrent", concurrency=3)
    assert seen["peak"] == 3  # three conversations really ran at once
    assert model.pool.evictions == evictions  # within half the slots: no conversation lost its KV
    # the callback saw the conversations in order, each as the serial run played it
    assert [r.index for r in c_results] == list(range(6))
    assert [(r.persona_id, r.profile, r.end_reason, r.turns) for r in c_results] == [
        (r.persona_id, r.profile, r.end_reason, r.turns) for r in results
    ]
    assert {**c_summary.to_dict(), "seconds": 0} == {**summary.to_dict(), "seconds": 0}
    # per conversation, the same prompts and tokens; the log-probs to float32 rounding (a batched
    # pass over several slots may round differently from a solo one: about 1e-6 seen)
    serial_turns, concurrent_turns = turns_of(records, results), turns_of(c_records, c_results)
    assert serial_turns.keys() == concurrent_turns.keys() == set(range(6))
    for k, turns in serial_turns.items():
        assert len(concurrent_turns[k]) == len(turns)
        for got, want in zip(concurrent_turns[k], turns, strict=True):
            assert (got.prompt_ids, got.response_ids, got.text) == (want.prompt_ids, want.response_ids, want.text)
            np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.full_logprobs, want.full_logprobs, rtol=0, atol=1e-5)
    # and every record in the serial run's order (eval reads the log in order)
    assert comparable(c_records) == comparable(records)


def test_concurrency_is_capped_at_half_the_kv_slots(model, monkeypatch):
    assert max_concurrency(model) == model.pool.slots // 2 == 4
    seen = spy_on_conversations(monkeypatch, meet=4)
    summary = simulate(
        model, builtin_personas(), builtin_profiles(), None, 6, 3, SIM_CONFIG,
        system_prompts=short_prompts(), concurrency=8,
    )  # fmt: skip
    assert summary.conversations == 6 and sorted(seen["started"]) == list(range(6))
    assert seen["peak"] == 4


@pytest.mark.parametrize("where", ["worker", "callback"])
def test_an_error_in_a_conversation_propagates_and_stops_the_run(model, monkeypatch, where):
    seen = spy_on_conversations(monkeypatch, fail_at=4 if where == "worker" else None)
    finished: list[int] = []

    def on_conversation(result: SimulatedConversation) -> None:
        if where == "callback" and result.index == 4:
            raise RuntimeError("boom in conversation 4")
        finished.append(result.index)

    outcome: list[BaseException] = []

    def run() -> None:
        try:
            simulate(
                model, builtin_personas(), builtin_profiles(), None, 16, 3, SIM_CONFIG,
                on_conversation=on_conversation, system_prompts=short_prompts(), concurrency=3,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(600)
    assert not thread.is_alive(), "simulate hung after a failed conversation"
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError) and "boom in conversation 4" in str(outcome[0])
    assert finished == [0, 1, 2, 3]  # the ones before it, in order
    assert len(seen["started"]) < 16  # no new conversations after the failure


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_simulate_rejects_bad_concurrency(model, bad):
    with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
        simulate(model, builtin_personas(), builtin_profiles(), None, 1, 0, concurrency=bad)


# --------------------------------------------------------------------------------------------- CLI


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="npcrl")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_parses_defaults_and_rejects_bad_counts(capsys):
    args = parse(["simulate", "--bundle", "b", "--conversations", "3", "--logs", "l"])
    assert (args.bundle, args.conversations, args.logs, args.seed) == ("b", 3, "l", 0)
    assert args.players is None and args.personas is None and args.max_new_tokens is None and not args.json
    assert args.concurrent == 4
    bads = (["--conversations", "0"], ["--conversations", "x"], ["--conversations", "2", "--seed", "-1"])
    for bad in (*bads, ["--conversations", "2", "--concurrent", "0"]):
        with pytest.raises(SystemExit):
            parse(["simulate", "--bundle", "b", "--logs", "l", *bad])
    capsys.readouterr()


def test_cli_simulates_into_a_log_directory(tiny_bundles, tmp_path, capsys):
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "smith.toml").write_text(
        (Path(__file__).parents[2] / "npcrl/data/personas/blacksmith.toml").read_text()
    )
    player = write_profile(tmp_path, profile_text({"max_turns": "2"}))
    logs = tmp_path / "logs"
    args = parse(
        [
            "simulate",
            "--bundle",
            str(tiny_bundles["llama-fp32"]),
            "--conversations",
            "2",
            "--logs",
            str(logs),
            "--players",
            str(player),
            "--personas",
            str(personas),
            "--seed",
            "5",
            "--max-new-tokens",
            "8",
            "--json",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["conversations"] == 2 and set(summary["per_profile"]) == {"tester"}
    assert "[2/2] smith x tester" in out.err and out.err.index("[1/2]") < out.err.index("[2/2]")
    records = list(read_log_dir(logs))
    starts = [r for r in records if isinstance(r, ConversationStart)]
    assert [s.npc_id for s in starts] == ["smith", "smith"]
    assert all(s.sampler["max_new_tokens"] == 8 for s in starts)
    assert sum(isinstance(r, NpcTurn) for r in records) == summary["turns"]


def test_a_cut_off_run_keeps_its_finished_conversations_and_plays_only_the_rest(sim_run, model, tmp_path, monkeypatch):
    from npcrl.sim.resume import keep_finished

    _, results, records = sim_run  # 6 conversations of seed 3
    ids = [r.conversation_id for r in results]
    # a run stopped in conversation 2: 0 and 1 are whole, 2 has no end yet
    cut_off = tmp_path / "logs.interrupted-1"
    with PlayLogWriter(cut_off) as writer:
        for r in records:
            if r.conversation_id in ids[:2] or (r.conversation_id == ids[2] and not isinstance(r, ConversationEnd)):
                writer.append(r)
    written = list(read_log_dir(cut_off))
    seen = spy_on_conversations(monkeypatch)
    with PlayLogWriter(tmp_path / "logs") as writer:
        first = keep_finished(cut_off, writer, model.bundle_id, 3, 6)
        simulate(
            model, builtin_personas(), builtin_profiles(), writer, 6, 3, SIM_CONFIG,
            system_prompts=short_prompts(), concurrency=2, first=first,
        )  # fmt: skip
    assert first == 2 and sorted(seen["started"]) == [2, 3, 4, 5]
    resumed = list(read_log_dir(tmp_path / "logs"))
    assert comparable(resumed) == comparable(records)  # what the uninterrupted run wrote, in its order
    kept = [r for r in resumed if r.conversation_id in ids[:2]]
    assert kept == [r for r in written if r.conversation_id in ids[:2]]  # copies, wall-clock times and all
    assert list(read_log_dir(cut_off)) == written  # the cut-off attempt's logs are read, never changed

    with PlayLogWriter(tmp_path / "other") as writer:
        assert keep_finished(cut_off, writer, model.bundle_id, 3, 1) == 1  # no more than the run plays
        assert keep_finished(cut_off, writer, model.bundle_id, 4, 6) == 0  # another seed's conversations
        (tmp_path / "empty").mkdir()  # stopped before it wrote a record
        assert keep_finished(tmp_path / "empty", writer, model.bundle_id, 3, 6) == 0
    with pytest.raises(ValueError, match="first must be at most conversations"):
        simulate(model, builtin_personas(), builtin_profiles(), None, 2, 3, first=3)


def cli_run(bundle: Path, logs: Path, *extra: str) -> list[str]:
    return [
        "simulate",
        "--bundle",
        str(bundle),
        "--conversations",
        "3",
        "--logs",
        str(logs),
        "--seed",
        "4",
        "--max-new-tokens",
        "6",
        "--concurrent",
        "1",
        *extra,
    ]


def turns_by_conversation(log_dir: Path) -> dict[str, list[list[int]]]:
    turns: dict[str, list[list[int]]] = defaultdict(list)
    for record in read_log_dir(log_dir):
        if isinstance(record, NpcTurn):
            turns[record.conversation_id].append(record.response_ids)
    return dict(turns)


@pytest.fixture
def short_cards(monkeypatch):
    """The CLI's simulation with system prompts that fit the tiny model, so its turns are real samples."""
    import functools

    simulate_module = importlib.import_module("npcrl.sim.simulate")  # the package re-exports the function
    monkeypatch.setattr(
        simulate_module, "simulate", functools.partial(simulate_module.simulate, system_prompts=short_prompts())
    )


def test_cli_resume_keeps_the_finished_conversations_and_plays_the_rest(tiny_bundles, tmp_path, capsys, short_cards):
    from npcrl.sim.resume import copy_records

    bundle = tiny_bundles["llama-fp32"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = parse(cli_run(bundle, whole))
    assert args.func(args) == 0
    records = list(read_log_dir(whole))
    ids = list(dict.fromkeys(r.conversation_id for r in records))
    assert len(ids) == 3 and all(turns and all(turns) for turns in turns_by_conversation(whole).values())
    # a run cut off inside its second conversation: the first finished, the second without its end
    with PlayLogWriter(cut) as writer:
        copy_records(records, writer, lambda cid: cid == ids[0])
        copy_records([r for r in records if not isinstance(r, ConversationEnd)], writer, lambda cid: cid == ids[1])
    cut_off_records = len(list(read_log_dir(cut)))
    capsys.readouterr()

    args = parse(cli_run(bundle, cut, "--resume"))
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "1 finished conversation(s) kept" in err and "playing 2" in err
    assert turns_by_conversation(cut) == turns_by_conversation(whole)  # as the uninterrupted run
    ends = [r.conversation_id for r in read_log_dir(cut) if isinstance(r, ConversationEnd)]
    assert ends == ids  # each conversation once, in order: the cut-off second one played again whole
    aside = tmp_path / "cut.interrupted-1"
    assert len(list(read_log_dir(aside))) == cut_off_records  # set aside, not lost

    # finished already: nothing is played and nothing moves
    args = parse(cli_run(bundle, cut, "--resume"))
    assert args.func(args) == 0
    assert "nothing to play" in capsys.readouterr().out
    assert not (tmp_path / "cut.interrupted-2").exists()


def test_cli_resume_refuses_logs_of_another_run_and_moves_nothing(tiny_bundles, tmp_path, capsys, short_cards):
    bundle = tiny_bundles["llama-fp32"]
    logs = tmp_path / "logs"
    args = parse(cli_run(bundle, logs))
    assert args.func(args) == 0
    before = len(list(read_log_dir(logs)))
    other_seed = cli_run(bundle, logs, "--resume")
    other_seed[other_seed.index("--seed") + 1] = "5"
    args = parse(other_seed)
    with pytest.raises(NpcrlError, match=r"logs: holds play logs, but not the start of this run.*seed 5"):
        args.func(args)
    assert len(list(read_log_dir(logs))) == before and not (tmp_path / "logs.interrupted-1").exists()
    # a resume with nothing there yet is a plain run
    args = parse(cli_run(bundle, tmp_path / "fresh", "--resume"))
    assert args.func(args) == 0
    assert len(turns_by_conversation(tmp_path / "fresh")) == 3
