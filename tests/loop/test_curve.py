"""``npcrl curve`` on a tiny model: one round per size from one simulation and one base evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from npcrl.errors import LoopError
from npcrl.loop.curve import conversation_index
from npcrl.playlog import ConversationStart, NpcTurn, read_log_dir
from tests.loop.test_loop import TINY_SYSTEM_PROMPTS, full_tiny_config


def tiny_curve(bundle: Path, out: Path, **options: Any) -> Any:
    from npcrl.loop.curve import run_curve

    return run_curve(
        bundle,
        out,
        [6, 3],
        eval_conversations=3,
        train_config=full_tiny_config(),
        max_new_tokens=6,
        system_prompts=TINY_SYSTEM_PROMPTS,
        concurrency=2,
        **options,
    )


def spy_on_play_and_training(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[Path]]:
    """Lists that fill, as the loop runs, with the id of each conversation played and the output
    folder of each training run."""
    import importlib

    import npcrl.loop.stages

    simulate_module = importlib.import_module("npcrl.sim.simulate")
    real_play, real_train = simulate_module.play_conversation, npcrl.loop.stages.train_or_resume
    played: list[str] = []
    trained: list[Path] = []

    def play(agent: Any, profile: Any, rng: Any, index: int, conversation_id: str) -> Any:
        played.append(conversation_id)
        return real_play(agent, profile, rng, index, conversation_id)

    def train(*args: Any, **kwargs: Any) -> Any:
        trained.append(Path(str(args[0])))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(simulate_module, "play_conversation", play)
    monkeypatch.setattr(npcrl.loop.stages, "train_or_resume", train)
    return played, trained


def conversations_in(logs: Path) -> list[str]:
    return sorted(r.conversation_id for r in read_log_dir(logs) if isinstance(r, ConversationStart))


def test_one_round_per_size_from_one_simulation_and_one_base_evaluation(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from npcrl.loop.trained import training_cell

    out = tmp_path / "curve"
    points = tiny_curve(tiny_bundles["llama-fp32"], out)
    assert [p.conversations for p in points] == [3, 6]  # in order of size
    played = conversations_in(out / "base" / "logs")
    assert len(played) == 6
    # each size trained on the first N of the base's conversations, every record of them
    for size in (3, 6):
        logs = out / f"size-{size}" / "round-1" / "logs"
        assert conversations_in(logs) == played[:size]
        turns = [r.conversation_id for r in read_log_dir(logs) if isinstance(r, NpcTurn)]
        base_turns = [r.conversation_id for r in read_log_dir(out / "base" / "logs") if isinstance(r, NpcTurn)]
        assert sorted(turns) == sorted(t for t in base_turns if t in played[:size])
        # the base was evaluated once, in base/; each size evaluated only its candidate
        assert not (out / f"size-{size}" / "round-1" / "eval" / "current").exists()
        assert (out / f"size-{size}" / "round-1" / "eval" / "candidate").is_dir()
    assert (out / "base" / "eval" / "current").is_dir()
    for point in points:
        mean, low, high = point.gain_percent
        assert low <= mean <= high
        gain = point.paired_gain[0]
        assert mean == pytest.approx(100 * gain / abs(point.engagement_base))
    saved = json.loads((out / "curve.json").read_text())
    assert [p["conversations"] for p in saved] == [3, 6]
    table = (out / "curve.md").read_text()
    assert "| 3 |" in table and "| 6 |" in table
    # how far each size trained, from its candidate's provenance
    for point, row in zip(points, saved, strict=True):
        provenance = json.loads(
            (out / f"size-{point.conversations}" / "round-1" / "train" / "report" / "provenance.json").read_text()
        )
        assert point.training["iterations"] == provenance["iterations"] >= 1
        assert row["training"] == point.training
        assert f"| {training_cell(point.training)} |" in table
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # and each size's gain split by the profile that played each evaluation conversation
    for point in points:
        assert point.by_profile and f"- {point.conversations} conversations, paired gain per kind of player: " in table

    # a resume reads the finished rounds back instead of training again
    import npcrl.loop.stages

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished size was trained again")

    monkeypatch.setattr(npcrl.loop.stages, "train_or_resume", no_training)
    again = tiny_curve(tiny_bundles["llama-fp32"], out, resume=True)
    assert [p.paired_gain for p in again] == [p.paired_gain for p in points]
    assert [p.training for p in again] == [p.training for p in points]
    with pytest.raises(LoopError, match="not empty"):
        tiny_curve(tiny_bundles["llama-fp32"], out)


def test_a_curve_reads_only_simulated_conversations(tmp_path: Path) -> None:
    from npcrl.loop.curve import conversation_index

    assert conversation_index("sim-0123456789abcdef-s1-000042") == 42
    with pytest.raises(LoopError, match="'player-7'"):
        conversation_index("player-7")


def test_the_command_line_passes_the_curve_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import npcrl.loop.curve
    from npcrl.cli.main import main

    seen: dict[str, Any] = {}

    def fake_run_curve(base: str, out: str, sizes: list[int], **kwargs: Any) -> list:
        seen.update(kwargs, base=base, out=out, sizes=sizes)
        return []

    monkeypatch.setattr(npcrl.loop.curve, "run_curve", fake_run_curve)
    argv = ["curve", "--bundle", "B", "--out", str(tmp_path / "c")]
    assert main(argv) == 0
    assert seen["sizes"] == [150, 300, 600, 1200] and seen["eval_conversations"] == 96
    assert seen["promote_when"] == "significant" and not seen["resume"]
    assert seen["guards"].persona_probe_lines == 200  # the persona probe, on by default
    assert main([*argv, "--sizes", "10,20", "--population", "brief", "--resume"]) == 0
    assert seen["sizes"] == [10, 20] and seen["resume"] and seen["same_play_as"] is None
    assert main([*argv, "--same-play-as", "pops/default"]) == 0 and seen["same_play_as"] == "pops/default"
    with pytest.raises(SystemExit):
        main([*argv, "--sizes", "10,0"])
    assert "must be counts of at least 1" in capsys.readouterr().err


def test_a_cut_off_simulation_or_evaluation_keeps_the_conversations_it_finished(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Conversations are seeded one by one, so a resumed stage copies the ones the stopped attempt
    finished and plays only the rest."""
    import importlib

    import npcrl.loop.stages
    from npcrl.loop.curve import conversation_index

    simulate_module = importlib.import_module("npcrl.sim.simulate")  # the package exports the function
    real_play = simulate_module.play_conversation
    played: list[str] = []
    stop_at: dict[str, int] = {}

    def play(agent: Any, profile: Any, rng: Any, index: int, conversation_id: str) -> Any:
        stage = "simulate" if "-s1-" in conversation_id else "evaluate"  # the base simulation's seed is 1
        if stop_at.get(stage) == index:
            raise KeyboardInterrupt
        played.append(conversation_id)
        return real_play(agent, profile, rng, index, conversation_id)

    def indexes(stage: str) -> list[int]:
        return sorted(conversation_index(c) for c in played if ("-s1-" in c) == (stage == "simulate"))

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # the test is about the base's stages

    monkeypatch.setattr(simulate_module, "play_conversation", play)
    monkeypatch.setattr(npcrl.loop.stages, "train_or_resume", no_training)
    out = tmp_path / "curve"
    stop_at["simulate"] = 4  # of 6
    with pytest.raises(KeyboardInterrupt):
        tiny_curve(tiny_bundles["llama-fp32"], out)
    assert len(conversations_in(out / "base" / "logs")) == 4

    played.clear()
    stop_at.update(simulate=-1, evaluate=2)  # of 3
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        tiny_curve(tiny_bundles["llama-fp32"], out, resume=True)
    assert indexes("simulate") == [4, 5]  # the first four were kept
    assert "base: simulate keeps the 4 conversations it had finished" in capsys.readouterr().out
    assert len(conversations_in(out / "base" / "logs")) == 6
    assert len(conversations_in(out / "base" / "logs.interrupted-1")) == 4  # set aside, never deleted

    played.clear()
    stop_at.clear()
    with pytest.raises(KeyboardInterrupt):  # in training, after the base's evaluation
        tiny_curve(tiny_bundles["llama-fp32"], out, resume=True)
    assert indexes("simulate") == [] and indexes("evaluate") == [2]
    assert len(conversations_in(out / "base" / "eval" / "current")) == 3
    stages = json.loads((out / "base" / "stages.json").read_text())
    assert "seconds" in stages["simulate"] and "seconds" in stages["evaluate_current"]

    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):  # the size's copy of its conversations is read back, and said so once
        tiny_curve(tiny_bundles["llama-fp32"], out, resume=True)
    assert capsys.readouterr().out.count("round-1: simulate finished earlier, read back") == 1


def test_a_resumed_curve_may_add_sizes_and_the_base_plays_only_the_new_conversations(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    import npcrl.evaluation.persona_probe as persona_probe
    from npcrl.loop.curve import run_curve
    from npcrl.loop.decision import Guards

    simulate_module = importlib.import_module("npcrl.sim.simulate")
    real_play, real_probe = simulate_module.play_conversation, persona_probe.probe_personas
    played: list[str] = []
    probed: list[str] = []

    def play(agent: Any, profile: Any, rng: Any, index: int, conversation_id: str) -> Any:
        played.append(conversation_id)
        return real_play(agent, profile, rng, index, conversation_id)

    def probe(model: Any, *args: Any, **kwargs: Any) -> Any:
        probed.append(model.bundle_id)
        return real_probe(model, *args, **kwargs)

    def curve(sizes: list[int], **options: Any) -> Any:
        return run_curve(
            tiny_bundles["llama-fp32"], out, sizes, eval_conversations=2, train_config=full_tiny_config(),
            max_new_tokens=6, system_prompts=TINY_SYSTEM_PROMPTS, concurrency=2,
            guards=Guards(persona_probe_lines=3), **options,
        )  # fmt: skip

    out = tmp_path / "curve"
    (small,) = curve([2])
    base_logs = out / "base" / "logs"
    first_two = conversations_in(base_logs)
    base_stages = json.loads((out / "base" / "stages.json").read_text())
    assert "probe_current" in base_stages  # the base is probed once, beside its evaluation
    assert "probe_current" not in json.loads((out / "size-2" / "round-1" / "stages.json").read_text())
    monkeypatch.setattr(simulate_module, "play_conversation", play)
    monkeypatch.setattr(persona_probe, "probe_personas", probe)
    capsys.readouterr()
    again, larger = curve([2, 4], resume=True)
    assert again == small  # read back, not trained again
    assert len(probed) == 1  # the new size's candidate; the base's probe was read back
    assert sorted(c for c in played if "-s1-" in c) == conversations_in(base_logs)[2:]  # only the new two
    assert conversations_in(base_logs)[:2] == first_two and len(conversations_in(base_logs)) == 4
    assert conversations_in(out / "size-4" / "round-1" / "logs") == conversations_in(base_logs)
    said = capsys.readouterr().out
    assert "the base played 2 conversations; 4 are needed now" in said
    assert "base: simulate keeps the 2 conversations it had finished" in said
    assert [p["conversations"] for p in json.loads((out / "curve.json").read_text())] == [2, 4]
    with pytest.raises(LoopError, match="a resume may add sizes, not drop them"):
        curve([4], resume=True)


def test_a_curve_takes_an_earlier_runs_play_and_the_round_it_trained_the_same_way(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default population's round of ``npcrl populations`` is a curve point already: the
    curve's base takes its play and base evaluation and plays only the conversations it lacks, and
    the size that run played is read back, not trained again."""
    from npcrl.loop.adopt import adopt_finished_round
    from npcrl.loop.curve import run_curve
    from tests.loop.test_populations import tiny_populations

    bundle, populations, out = tiny_bundles["llama-fp32"], tmp_path / "populations", tmp_path / "curve"
    (row,) = tiny_populations(bundle, populations, ["default"])  # 4 conversations, 3 evaluation players
    source = populations / "default"

    played, trained = spy_on_play_and_training(monkeypatch)

    def curve(**options: Any) -> Any:
        return run_curve(
            bundle, out, [4, 6], eval_conversations=3, train_config=full_tiny_config(), max_new_tokens=6,
            system_prompts=TINY_SYSTEM_PROMPTS, concurrency=2, same_play_as=source, **options,
        )  # fmt: skip

    adopted, larger = curve()
    simulated = sorted(c for c in played if "-s1-" in c)
    assert [conversation_index(c) for c in simulated] == [4, 5]  # the base played only what it lacked
    assert len(played) - len(simulated) == 3  # and no base evaluation: only size 6's candidate
    assert len(trained) == 1 and "size-6" in str(trained[0])
    assert conversations_in(out / "base" / "logs")[:4] == conversations_in(source / "round-1" / "logs")
    assert len(conversations_in(out / "base" / "logs")) == 6
    base_stages = json.loads((out / "base" / "stages.json").read_text())
    assert base_stages["simulate"]["adopted_from"] == str((source / "round-1").resolve())  # kept as it played on
    assert base_stages["evaluate_current"]["seconds"] == 0.0
    # size 4 is the populations run's round, with its decision, candidate and training record
    assert adopted.paired_gain == row.round.paired_gain and adopted.training == row.round.training
    taken = out / "size-4" / "round-1"
    assert json.loads((taken / "decision.json").read_text()) == json.loads(
        (source / "round-1" / "decision.json").read_text()
    )
    assert json.loads((out / "size-4" / "loop.json").read_text()) == json.loads((source / "loop.json").read_text())
    assert larger.conversations == 6 and larger.engagement_base == adopted.engagement_base
    assert "the finished round adopted from" in capsys.readouterr().out

    # a round trained another way is not this curve's: nothing is copied
    other = json.loads((out / "size-4" / "loop.json").read_text())
    other["train_config"]["ppo"]["learning_rate"] *= 2
    assert not adopt_finished_round(source, other, tmp_path / "elsewhere" / "round-1")
    assert "its train_config differ" in capsys.readouterr().out
    assert not (tmp_path / "elsewhere").exists()

    # a resume reads every point back
    played.clear()
    again = curve(resume=True)
    assert [p.paired_gain for p in again] == [adopted.paired_gain, larger.paired_gain]
    assert played == [] and len(trained) == 1


def test_a_round_trained_without_the_persona_probe_is_taken_and_probed_not_trained_again(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A curve with the persona probe on takes the round an earlier run trained the same way but
    without the probe: its candidate is probed, and the round decided again with the probe guard."""
    from npcrl.evaluation.persona_probe import PROBE_COUNTS
    from npcrl.loop.curve import run_curve
    from npcrl.loop.decision import Guards
    from tests.loop.test_populations import tiny_populations

    bundle, populations, out = tiny_bundles["llama-fp32"], tmp_path / "populations", tmp_path / "curve"
    (row,) = tiny_populations(bundle, populations, ["default"])  # no probe
    source = populations / "default" / "round-1"
    played, trained = spy_on_play_and_training(monkeypatch)

    (taken,) = run_curve(
        bundle, out, [4], eval_conversations=3, train_config=full_tiny_config(), max_new_tokens=6,
        system_prompts=TINY_SYSTEM_PROMPTS, concurrency=2, same_play_as=populations / "default",
        guards=Guards(persona_probe_lines=2),
    )  # fmt: skip
    assert trained == [] and played == []  # neither trained nor evaluated again
    assert "to be probed and decided again" in capsys.readouterr().out
    assert taken.paired_gain == row.round.paired_gain
    stages = json.loads((out / "size-4" / "round-1" / "stages.json").read_text())
    assert stages["train_and_export"]["adopted_from"] == str(source.resolve())
    assert "adopted_from" not in stages["probe_candidate"]  # probed here
    decision = json.loads((out / "size-4" / "round-1" / "decision.json").read_text())
    assert PROBE_COUNTS in decision["metrics"]["candidate"] and PROBE_COUNTS in decision["metrics"]["current"]
    assert PROBE_COUNTS not in json.loads((source / "decision.json").read_text())["metrics"]["candidate"]


def one_point(perplexity: float) -> Any:
    from npcrl.loop.curve import CurvePoint

    return CurvePoint(
        conversations=150,
        engagement_base=2.631,
        engagement_candidate=3.160,
        paired_gain=(0.529, 0.187, 0.876),
        gain_percent=(20.1, 7.1, 33.3),
        kl_per_line=2.0,
        perplexity=perplexity,
        base_perplexity=235.19,
        promoted=True,
    )


def test_a_one_size_curve_draws_kl_and_perplexity_apart() -> None:
    """On the shared panel KL keeps to the lower half and perplexity above it: one size's two
    points (each autoscaled to its axis' middle before) are drawn at different heights."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from npcrl.loop.curve import curve_figure

    fig = curve_figure([one_point(238.42)])
    _, cost_ax, perplexity_ax = fig.axes

    def height(ax: Any, value: float) -> float:
        low, high = ax.get_ylim()
        return (value - low) / (high - low)

    kl_height, perplexity_height = height(cost_ax, 2.0), height(perplexity_ax, 238.42)
    assert 0.0 < kl_height <= 0.5 < perplexity_height < 1.0
    assert perplexity_height - kl_height > 0.25
    assert 0.0 < height(perplexity_ax, 235.19) < 1.0  # the base's dotted line is in view too
    plt.close(fig)
    plt.close(curve_figure([one_point(float("nan"))]))  # a size without a perplexity still draws


def test_a_curve_on_another_curves_play_trains_each_size_on_its_conversations(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two training setups compared size by size: a curve with ``--same-play-as`` an earlier curve
    plays nothing of its base, takes the sizes trained the same way and trains the others on exactly
    the earlier curve's conversations."""
    from npcrl.loop.curve import run_curve

    bundle, first = tiny_bundles["llama-fp32"], tmp_path / "first"
    tiny_curve(bundle, first)  # sizes 3 and 6
    played, trained = spy_on_play_and_training(monkeypatch)
    other = full_tiny_config()
    other.ppo.learning_rate *= 2
    second = tmp_path / "second"
    (point,) = run_curve(
        bundle, second, [3], eval_conversations=3, train_config=other, max_new_tokens=6,
        system_prompts=TINY_SYSTEM_PROMPTS, concurrency=2, same_play_as=first,
    )  # fmt: skip
    assert all("-s1-" not in c for c in played)  # the base played nothing: its 6 were taken
    assert len(played) == 3  # size 3's candidate against the 3 evaluation players, no base evaluation
    assert len(trained) == 1 and "size-3" in str(trained[0])
    assert conversations_in(second / "size-3" / "round-1" / "logs") == conversations_in(
        first / "size-3" / "round-1" / "logs"
    )
    base_stages = json.loads((second / "base" / "stages.json").read_text())
    assert base_stages["simulate"]["adopted_from"] == str((first / "base").resolve())
    assert point.engagement_base == json.loads((first / "curve.json").read_text())[0]["engagement_base"]

    # trained as the first curve was, a size is that curve's round, read back whole
    played.clear()
    third = tmp_path / "third"
    (taken,) = run_curve(
        bundle, third, [6], eval_conversations=3, train_config=full_tiny_config(), max_new_tokens=6,
        system_prompts=TINY_SYSTEM_PROMPTS, concurrency=2, same_play_as=first,
    )  # fmt: skip
    assert played == [] and len(trained) == 1
    assert taken.paired_gain == tuple(json.loads((first / "curve.json").read_text())[1]["paired_gain"])
