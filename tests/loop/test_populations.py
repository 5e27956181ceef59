"""``npcrl populations`` on a tiny model: one loop round per population, one table."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from npcrl.errors import LoopError
from npcrl.loop.curve import CurvePoint
from npcrl.loop.populations import check_names
from npcrl.loop.populations_table import PopulationPoint, verdict
from tests.loop.test_loop import TINY_SYSTEM_PROMPTS, full_tiny_config


def tiny_populations(bundle: Path, out: Path, names: list[str], **options: Any) -> Any:
    from npcrl.loop.populations import run_populations

    options.setdefault("train_config", full_tiny_config())
    return run_populations(
        bundle,
        out,
        names,
        conversations=4,
        eval_conversations=3,
        max_new_tokens=6,
        system_prompts=TINY_SYSTEM_PROMPTS,
        concurrency=2,
        **options,
    )


def test_one_round_per_population_each_played_by_its_own_players(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from npcrl.agent.persona import builtin_personas
    from npcrl.loop.state import fingerprint
    from npcrl.sim.logged_features import logged_line_features
    from npcrl.sim.populations import builtin_populations, load_population

    out = tmp_path / "populations"
    points = tiny_populations(tiny_bundles["llama-fp32"], out, ["brief", "questioners"])
    assert [p.population for p in points] == ["brief", "questioners"]
    for point in points:
        folder = out / point.population
        assert (folder / "round-1" / "decision.json").is_file()
        recorded = json.loads((folder / "loop.json").read_text())
        # each round was played by that population's players, not by the shipped mix
        assert recorded["players"] == fingerprint(list(load_population(point.population).values()))
        decision = json.loads((folder / "round-1" / "decision.json").read_text())
        assert point.round.paired_gain == tuple(decision["metrics"]["candidate"]["engagement gain, paired (95% CI)"])
        assert point.round.conversations == 4
        assert point.improved == (point.round.paired_gain[1] > 0)
        # how far the round trained, as its candidate bundle's provenance says
        provenance = json.loads((folder / "round-1" / "train" / "report" / "provenance.json").read_text())
        assert point.round.training == {
            "iterations": provenance["iterations"],
            "most_iterations": provenance["most_iterations"],
            "passes_run": provenance["passes_run"],
            "kl_stop_reached": False,
            "rollout_turns": provenance["rollout_turns"],
            "batch_scale": 1,
        }
        assert point.round.training["iterations"] == point.round.training["most_iterations"] >= 1
        # what the population rewards (and punishes), measured on the lines said to its evaluation players
        population = builtin_populations()[point.population]
        assert list(point.preferred_features) == [*population.rewards, *population.punishes]
        for side, k in (("current", 0), ("candidate", 1)):
            means = logged_line_features(folder / "round-1" / "eval" / side, builtin_personas()).means
            assert {name: pair[k] for name, pair in point.preferred_features.items()} == {
                name: means[name] for name in point.preferred_features
            }
    saved = json.loads((out / "populations.json").read_text())
    assert [row["population"] for row in saved] == ["brief", "questioners"]
    table = (out / "populations.md").read_text()
    assert "| brief |" in table and "| questioners |" in table
    assert "| training iterations |" in table
    iterations, passes = points[0].round.training["iterations"], points[0].round.training["passes_run"]
    assert f"| {iterations} of ≤ {iterations} ({passes:.2f} passes) |" in table
    asks = points[1].preferred_features["asks_back"]
    assert f"| asks_back {asks[0]:.2f} → {asks[1]:.2f} |" in table
    assert verdict(points) in table
    # each population's gain split by the profiles that played it, as its round recorded them
    for point in points:
        assert point.round.by_profile
        assert f"- {point.population}, paired gain per kind of player: {point.round.by_profile}" in table
    assert (out / "populations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a resume reads the finished rounds back instead of training again
    import npcrl.loop.stages

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished population was trained again")

    monkeypatch.setattr(npcrl.loop.stages, "train_or_resume", no_training)
    again = tiny_populations(tiny_bundles["llama-fp32"], out, ["brief", "questioners"], resume=True)
    assert [p.round.paired_gain for p in again] == [p.round.paired_gain for p in points]
    with pytest.raises(LoopError, match="not empty"):
        tiny_populations(tiny_bundles["llama-fp32"], out, ["brief"])
    # the same populations with another training config are not the run that was started
    other = full_tiny_config()
    other.ppo.learning_rate *= 2
    with pytest.raises(LoopError, match="train_config"):
        tiny_populations(tiny_bundles["llama-fp32"], out, ["brief"], train_config=other, resume=True)


def test_an_unknown_population_is_refused_before_any_play(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    from npcrl.sim.populations import UnknownPopulationError

    out = tmp_path / "populations"
    with pytest.raises(UnknownPopulationError, match="'gourmets'.*known: default, questioners"):
        tiny_populations(tiny_bundles["llama-fp32"], out, ["brief", "gourmets"])
    assert not (out / "loop.json").exists()


def test_the_command_line_refuses_an_unknown_population_by_name() -> None:
    from npcrl.cli.populations import population_names

    assert population_names("brief, humour") == ["brief", "humour"]
    with pytest.raises(argparse.ArgumentTypeError, match="'gourmets'"):
        population_names("brief,gourmets")
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
        population_names(" , ")


def point(name: str, low: float, promoted: bool) -> PopulationPoint:
    round_ = CurvePoint(150, 2.0, 2.5, (0.5, low, 1.0), (25.0, 50 * low, 50.0), 1.0, 230.0, 229.0, promoted)
    return PopulationPoint(name, "likes things", round_, 0.05, 0.04, {"asks_back": (0.2, 0.3)})


def test_the_probe_column_appears_only_where_a_probe_ran(tmp_path: Path) -> None:
    from npcrl.loop.populations_table import PROBE_COLUMN, write_populations

    write_populations(tmp_path, [point("brief", 0.1, True)])
    assert PROBE_COLUMN not in (tmp_path / "populations.md").read_text()
    probed = replace(point("humour", 0.1, True), persona_probe=(0.23, 0.29, (0.06, 0.02, 0.1)))
    write_populations(tmp_path, [point("brief", 0.1, True), probed])
    table = (tmp_path / "populations.md").read_text()
    assert PROBE_COLUMN in table and "| 0.290 (0.230), +0.060 [+0.020, +0.100] |" in table and "| - |" in table


def test_the_verdict_counts_resolved_gains_and_promotions_apart() -> None:
    points = [point("brief", 0.1, True), point("humour", -0.2, False), point("lore_seekers", 0.05, False)]
    line = verdict(points)
    assert "2 of 3 populations (brief, lore_seekers)" in line
    assert "promoted (a win by the loop's rule and every guard held): 1 of 3 (brief)" in line
    assert not point("x", 0.0, False).improved  # an interval touching zero is not resolved
    assert math.isfinite(points[0].round.gain_percent[0])


def test_names_are_kept_in_order_once_and_at_least_one() -> None:
    assert check_names(["humour", "brief", "humour"]) == ["humour", "brief"]
    with pytest.raises(LoopError, match="at least one"):
        check_names([])


def test_the_command_line_passes_the_populations_their_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import npcrl.loop.populations
    from npcrl.cli.main import main

    seen: dict[str, Any] = {}

    def fake_run_populations(base: str, out: str, populations: list[str], **kwargs: Any) -> list:
        seen.update(kwargs, base=base, out=out, populations=populations)
        return [point("brief", 0.1, True)]

    monkeypatch.setattr(npcrl.loop.populations, "run_populations", fake_run_populations)
    argv = ["populations", "--bundle", "B", "--out", str(tmp_path / "p")]
    assert main(argv) == 0
    assert seen["populations"] == ["questioners", "lore_seekers", "brief", "humour"]
    assert seen["conversations"] == 150 and seen["eval_conversations"] == 96
    assert seen["promote_when"] == "significant" and not seen["resume"]
    assert "1 of 1 populations (brief)" in capsys.readouterr().out
    assert main([*argv, "--populations", "humour,brief", "--promote-when", "better", "--resume"]) == 0
    assert seen["populations"] == ["humour", "brief"] and seen["promote_when"] == "better" and seen["resume"]
    assert seen["same_play_as"] is None
    assert main([*argv, "--same-play-as", "runs/a"]) == 0 and seen["same_play_as"] == "runs/a"
    assert seen["confirm_conversations"] == 0 and seen["confirm_rule"] == "both"  # off unless asked for
    assert main([*argv, "--confirm-conversations", "96", "--confirm-rule", "pooled"]) == 0
    assert seen["confirm_conversations"] == 96 and seen["confirm_rule"] == "pooled"
    assert seen["guards"].persona_probe_lines == 200  # the persona probe, on by default
    assert main([*argv, "--persona-probe-lines", "50"]) == 0 and seen["guards"].persona_probe_lines == 50
    with pytest.raises(SystemExit):
        main([*argv, "--populations", "gourmets"])
    assert "unknown player population 'gourmets'" in capsys.readouterr().err


def test_a_second_training_setup_takes_the_first_runs_play_and_is_compared_with_its_candidate(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    from npcrl.evaluation.metrics import paired_gain_of_logs
    from npcrl.reward.spec import default_reward_spec

    bundle, first, second = tiny_bundles["llama-fp32"], tmp_path / "first", tmp_path / "second"
    (earlier,) = tiny_populations(bundle, first, ["brief"])
    other = full_tiny_config()
    other.ppo.learning_rate *= 2

    # another play setting: refused before the directory is claimed
    with pytest.raises(LoopError, match="different seed"):
        tiny_populations(bundle, second, ["brief"], train_config=other, seed=1, same_play_as=first)
    assert not (second / "loop.json").exists() and not (second / "brief").exists()
    with pytest.raises(LoopError, match="not a loop run"):
        tiny_populations(bundle, tmp_path / "third", ["brief"], train_config=other, same_play_as=tmp_path / "none")

    played = recorded_play(monkeypatch)
    (point,) = tiny_populations(bundle, second, ["brief"], train_config=other, same_play_as=first)

    source, taken = first / "brief" / "round-1", second / "brief" / "round-1"
    assert played == [taken / "eval" / "candidate"]  # only the new candidate played
    for folder in ("logs", "eval/current"):
        files = sorted(p.relative_to(source / folder) for p in (source / folder).rglob("*") if p.is_file())
        assert files and all((source / folder / f).read_bytes() == (taken / folder / f).read_bytes() for f in files)
    stages = json.loads((taken / "stages.json").read_text())
    for name in ("simulate", "evaluate_current"):
        assert stages[name]["adopted_from"] == str(source.resolve()) and stages[name]["seconds"] == 0.0
    decisions = [json.loads((run / "decision.json").read_text()) for run in (source, taken)]
    assert decisions[0]["metrics"]["current"] == decisions[1]["metrics"]["current"]
    assert point.round.engagement_base == earlier.round.engagement_base
    # the two candidates, trained on the same logs, paired on the same players
    expected = paired_gain_of_logs(
        taken / "eval" / "candidate", source / "eval" / "candidate", default_reward_spec(), seed=10_000
    )
    assert point.over_other == pytest.approx(expected)
    assert point.over_other_players == len(earlier_rewards(source / "eval" / "candidate"))  # no fresh players
    table = (second / "populations.md").read_text()
    assert "paired gain over the other candidate [95% CI] (players)" in table and str(first) in table
    assert f"| {point.over_other[0]:+.3f} [" in table and f"] ({point.over_other_players}) |" in table
    assert json.loads((second / "populations.json").read_text())[0]["over_other"] == pytest.approx(list(expected))

    # a resume reads the round back; the adopted stages stay adopted
    again = tiny_populations(bundle, second, ["brief"], train_config=other, same_play_as=first, resume=True)
    assert again[0].over_other == point.over_other and len(played) == 1


def earlier_rewards(logs: Path) -> list[float]:
    from npcrl.evaluation.metrics import conversation_rewards
    from npcrl.reward.spec import default_reward_spec

    return conversation_rewards(logs, default_reward_spec())


def test_only_finished_play_is_adopted(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    from npcrl.loop.adopt import check_play_source
    from npcrl.loop.state import read_loop_record

    first = tmp_path / "first"
    tiny_populations(tiny_bundles["llama-fp32"], first, ["brief"])
    run = first / "brief"
    stages_file = run / "round-1" / "stages.json"
    stages = json.loads(stages_file.read_text())
    del stages["evaluate_current"]["seconds"]  # as a stop in the base's evaluation leaves it
    stages_file.write_text(json.dumps(stages))
    with pytest.raises(LoopError, match="has not finished evaluate_current"):
        check_play_source(run, read_loop_record(run))


def better_on_the_evaluation_players(monkeypatch: pytest.MonkeyPatch) -> None:
    """Script the evaluation players' verdict: every candidate wins there, so the loop plays its
    fresh players (the tiny model's engagement is noise). The pooled verdict is not scripted."""
    import npcrl.loop.round
    from npcrl.loop.decision import decide

    def scripted_decide(candidate: dict, current: dict, *args: Any) -> tuple[bool, list[str]]:
        return True, decide(candidate, current, *args)[1]

    monkeypatch.setattr(npcrl.loop.round, "decide", scripted_decide)


def recorded_play(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Where each simulated play of the test goes, in order (simulation and evaluation alike)."""
    import importlib

    played: list[Path] = []
    simulation = importlib.import_module("npcrl.sim.simulate")  # the package's name ``simulate`` is the function
    real_simulate = simulation.simulate

    def recorded_simulate(*args: Any, **kwargs: Any) -> Any:
        played.append(args[3].directory)  # the writer: where this play's logs go
        return real_simulate(*args, **kwargs)

    monkeypatch.setattr(simulation, "simulate", recorded_simulate)
    return played


def test_fresh_players_confirm_each_population_and_a_second_setup_takes_the_bases_fresh_play(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from npcrl.evaluation import metric_names as metric
    from npcrl.evaluation.metrics import paired_gain, pooled_rewards_of_logs
    from npcrl.loop.populations_table import CONFIRM_COLUMNS
    from npcrl.reward.spec import default_reward_spec

    better_on_the_evaluation_players(monkeypatch)
    bundle, first, second = tiny_bundles["llama-fp32"], tmp_path / "first", tmp_path / "second"
    confirm = {"confirm_conversations": 3, "confirm_rule": "pooled"}
    (point,) = tiny_populations(bundle, first, ["brief"], **confirm)

    # the row says what the round's fresh players gave, as its decision recorded it
    decision = json.loads((first / "brief" / "round-1" / "decision.json").read_text())["metrics"]
    confirmation = point.confirmation
    assert confirmation is not None and confirmation.rule == "pooled" and confirmation.conversations == 3
    assert confirmation.fresh_gain == pytest.approx(decision["confirm_candidate"][metric.PAIRED_GAIN])
    pooled = decision["pooled_candidate"][metric.PAIRED_GAIN]
    assert confirmation.pooled_gain == pytest.approx(pooled)
    assert decision["pooled_candidate"][metric.CONVERSATIONS] == 3 + 3  # evaluation and fresh players
    base_engagement = decision["pooled_current"][metric.ENGAGEMENT]
    assert confirmation.pooled_percent == pytest.approx([100 * g / abs(base_engagement) for g in pooled])
    assert point.improved == (pooled[1] > 0)  # the pooled interval decides, not the evaluation players'
    table = (first / "populations.md").read_text()
    assert all(column in table for column in CONFIRM_COLUMNS)
    assert "paired 95% interval above 0 over the evaluation players and 3 fresh ones pooled" in table
    saved = json.loads((first / "populations.json").read_text())[0]
    assert saved["confirmation"]["pooled_gain"] == pytest.approx(pooled)

    # another training setup on the same play: the base's fresh players are taken, not played again
    played = recorded_play(monkeypatch)
    other = full_tiny_config()
    other.ppo.learning_rate *= 2
    (compared,) = tiny_populations(bundle, second, ["brief"], train_config=other, same_play_as=first, **confirm)
    source, taken = first / "brief" / "round-1", second / "brief" / "round-1"
    assert played == [taken / "eval" / "candidate", taken / "confirm" / "candidate"]
    fresh = source / "confirm" / "current"
    files = [p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()]
    assert files and all((taken / "confirm" / "current" / f).read_bytes() == (fresh / f).read_bytes() for f in files)
    stages = json.loads((taken / "stages.json").read_text())
    assert stages["confirm_current"]["adopted_from"] == str(source.resolve())
    assert stages["confirm_current"]["seconds"] == 0.0
    # both candidates met the same fresh players too: the comparison pools them with the evaluation players
    pairs = [(taken / stage / "candidate", source / stage / "candidate") for stage in ("eval", "confirm")]
    ours, theirs = pooled_rewards_of_logs(pairs, default_reward_spec())
    assert compared.over_other_players == len(ours) == 3 + 3
    assert compared.over_other == pytest.approx(paired_gain(ours, theirs, seed=10_000))

    # with another number of fresh players the base plays them itself
    played.clear()
    third = tmp_path / "third"
    (apart,) = tiny_populations(
        bundle, third, ["brief"], train_config=other, same_play_as=first, confirm_conversations=2, confirm_rule="pooled"
    )
    assert third / "brief" / "round-1" / "confirm" / "current" in played
    assert apart.over_other_players == 3  # other fresh players than the first run's: the evaluation players only
    assert (
        "adopted_from" not in json.loads((third / "brief" / "round-1" / "stages.json").read_text())["confirm_current"]
    )


def test_a_confirmation_resolves_a_population_by_its_rule() -> None:
    from npcrl.loop.populations_table import Confirmation

    resolved_on_evaluation = point("brief", 0.1, True)
    pooled_above = Confirmation("pooled", 96, (0.1, -0.1, 0.3), None, (0.3, 0.1, 0.5), None)
    pooled_below = Confirmation("pooled", 96, (0.6, 0.2, 1.0), None, (0.2, -0.1, 0.5), None)
    not_played = Confirmation("pooled", 96)
    assert replace(point("x", -0.2, False), confirmation=pooled_above).improved  # pooled lifts it
    assert not replace(resolved_on_evaluation, confirmation=pooled_below).improved
    assert not replace(resolved_on_evaluation, confirmation=not_played).improved  # nothing confirmed
    both_above = Confirmation("both", 96, (0.3, 0.1, 0.5))
    assert replace(resolved_on_evaluation, confirmation=both_above).improved
    assert not replace(point("x", -0.2, False), confirmation=both_above).improved  # both sets must resolve
    assert not replace(resolved_on_evaluation, confirmation=Confirmation("both", 96, (0.3, -0.1, 0.5))).improved
    assert "on the evaluation players and on 96 fresh ones" in verdict(
        [replace(resolved_on_evaluation, confirmation=both_above)]
    )


def test_another_setup_on_the_same_play_takes_the_base_probe_too(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    """The base's persona probe depends on the play settings and the probe's size only: a run on the
    same play with the same size takes it (never probing the base again), one with another does not."""
    from npcrl.evaluation.persona_probe import PROBE_COUNTS
    from npcrl.loop.adopt import probe_adoptable
    from npcrl.loop.decision import Guards

    bundle, first, second = tiny_bundles["llama-fp32"], tmp_path / "first", tmp_path / "second"
    guards = Guards(persona_probe_lines=2)
    tiny_populations(bundle, first, ["brief"], guards=guards)
    other = full_tiny_config()
    other.ppo.learning_rate *= 2
    tiny_populations(bundle, second, ["brief"], train_config=other, same_play_as=first, guards=guards)
    source, taken = first / "brief" / "round-1", second / "brief" / "round-1"
    stages = json.loads((taken / "stages.json").read_text())
    assert stages["probe_current"]["adopted_from"] == str(source.resolve())
    assert (
        stages["probe_current"]["result"] == json.loads((source / "stages.json").read_text())["probe_current"]["result"]
    )
    decision = json.loads((taken / "decision.json").read_text())["metrics"]
    assert PROBE_COUNTS in decision["candidate"]  # its own candidate was probed, paired with the taken base
    # the table shows the probe beside the play's share: base and candidate, and the paired rise
    from npcrl.loop.populations_table import PROBE_COLUMN

    (saved,) = json.loads((second / "populations.json").read_text())
    base_share, candidate_share, (rise, low, high) = saved["persona_probe"]
    assert rise == pytest.approx(candidate_share - base_share) and low <= rise <= high
    assert PROBE_COLUMN in (second / "populations.md").read_text()
    assert [probe_adoptable(source, lines) for lines in (2, 3, 0)] == [True, False, False]
