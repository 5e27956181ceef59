"""``npcrl loop``: the promotion decision and its guards, and one round end to end on a tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from npcrl.evaluation import metric_names as metric
from npcrl.evaluation.metrics import paired_gain
from npcrl.loop.decision import Guards, decide


def rows(engagement: float, kl: float = 1.0, ppl: float = 50.0, repetition: float = 0.1, words: float = 20.0) -> dict:
    return {
        metric.ENGAGEMENT: (engagement, engagement - 0.1, engagement + 0.1),
        metric.KL_PER_LINE: kl,
        metric.PERPLEXITY: ppl,
        metric.REPETITION_RATE: repetition,
        metric.WORDS_PER_LINE: words,
    }


def test_better_and_within_guards_is_promoted() -> None:
    promoted, reasons = decide(rows(0.8), rows(0.5), base_perplexity=50.0, guards=Guards())
    assert promoted and not any(r.startswith("guard") for r in reasons)


@pytest.mark.parametrize(
    ("candidate", "guard"),
    [
        (rows(0.8, kl=6.0), "KL to base"),
        (rows(0.8, ppl=58.0), "perplexity"),
        (rows(0.8, repetition=0.3), "repetition"),
        (rows(0.8, words=31.0), "words per line"),
        (rows(0.8, kl=float("nan")), "KL to base"),
        (rows(0.8, ppl=float("nan")), "perplexity"),
        (rows(0.8, repetition=float("nan")), "repetition"),
        (rows(0.8, words=float("inf")), "words per line"),
    ],
    ids=[
        "kl",
        "perplexity",
        "repetition",
        "length-hacking",
        "kl-unmeasured",
        "perplexity-nan",
        "repetition-nan",
        "words-inf",
    ],
)
def test_a_winner_that_breaks_a_guard_is_not_promoted_and_says_why(candidate: dict, guard: str) -> None:
    promoted, reasons = decide(candidate, rows(0.5), base_perplexity=50.0, guards=Guards())
    assert not promoted
    assert any(r.startswith("guard") and guard in r for r in reasons), reasons
    assert "better" in reasons[0]


def test_the_repetition_guard_stops_the_measured_over_optimised_round() -> None:
    # Repetition rates measured on SmolLM2 (48 conversations each): an over-optimised candidate
    # repeated itself six times as often as the base; a healthy round rose by a few thousandths.
    base = rows(2.585, repetition=0.0138)
    promoted, reasons = decide(rows(2.798, kl=3.34, repetition=0.0887), base, 50.0, Guards())
    assert not promoted and any("guard: repetition rate rose by 0.07" in r for r in reasons), reasons
    assert decide(rows(3.151, kl=1.39, repetition=0.0171), base, 50.0, Guards())[0]


def test_no_gain_is_not_promoted() -> None:
    promoted, reasons = decide(rows(0.5), rows(0.5), base_perplexity=50.0, guards=Guards())
    assert not promoted and "not better" in reasons[0]


def test_pooled_decision_reads_the_pooled_gain_and_the_fresh_players_guards() -> None:
    """Fresh players' own interval straddles zero, both sets' pairs together lie above it: pooled,
    the candidate is promoted; a guard the fresh rows break vetoes it, saying whose rows broke it."""
    from npcrl.loop.decision import decide_pooled

    fresh_candidate = {**rows(0.8), metric.PAIRED_GAIN: (0.3, -0.05, 0.65)}
    pooled = ({metric.ENGAGEMENT: 0.8, metric.PAIRED_GAIN: (0.3, 0.04, 0.56)}, {metric.ENGAGEMENT: 0.5})
    assert not decide(fresh_candidate, rows(0.5), 50.0, Guards(), "significant")[0]
    promoted, reasons = decide_pooled((fresh_candidate, rows(0.5)), pooled, 50.0, Guards(), "significant")
    assert promoted and reasons == [
        "engagement 0.800 vs 0.500 (significantly better)",
        "paired gain +0.300 per conversation, 95% CI [0.040, 0.560]",
    ]
    repeating = {**fresh_candidate, metric.REPETITION_RATE: 0.3}
    promoted, reasons = decide_pooled((repeating, rows(0.5)), pooled, 50.0, Guards(), "significant")
    assert not promoted and reasons[-1] == "guard: repetition rate rose by 0.20 (fresh players)"


def test_paired_gain_is_tighter_than_two_separate_intervals() -> None:
    # Players differ a lot (their spread dominates), the candidate adds ~0.3 to each conversation.
    current = [0.0, 4.0, 1.0, 6.0, 2.0, 5.0, 3.0, 7.0, 0.5, 6.5]
    candidate = [c + 0.3 + 0.05 * (i % 3) for i, c in enumerate(current)]
    mean, low, high = paired_gain(candidate, current, seed=0)
    assert mean == pytest.approx(0.345, abs=1e-9)
    assert 0.3 <= low <= mean <= high <= 0.4  # the gain is resolved although the two means' intervals overlap
    with pytest.raises(ValueError, match="same conversations"):
        paired_gain(candidate[:-1], current)


def test_significant_rule_needs_the_paired_interval_above_zero() -> None:
    winner = {**rows(0.8), metric.PAIRED_GAIN: (0.3, 0.1, 0.5)}
    noisy = {**rows(0.8), metric.PAIRED_GAIN: (0.3, -0.2, 0.8)}
    current = rows(0.5)
    assert decide(winner, current, 50.0, Guards(), "significant")[0]
    promoted, reasons = decide(noisy, current, 50.0, Guards(), "significant")
    assert not promoted and "not significantly better" in reasons[0] and "95% CI [-0.200, 0.800]" in reasons[1]
    assert decide(noisy, current, 50.0, Guards(), "better")[0]  # the default rule: the mean is higher
    assert not decide(rows(0.8), current, 50.0, Guards(), "significant")[0]  # no paired gain measured
    with pytest.raises(ValueError, match="promote_when"):
        decide(winner, current, 50.0, Guards(), "sometimes")


# The tiny test model has 256 positions; the real cards' system prompts are longer than that.
TINY_SYSTEM_PROMPTS = {
    "blacksmith": "You are Brom.",
    "innkeeper": "You are Mara.",
    "guard": "You are Hedda.",
    "miller": "You are Osric.",
}


def tiny_loop(
    bundle: Path, out: Path, config: Any, eval_conversations: int, rounds: int = 1, seed: int = 0, **options: Any
) -> Any:
    """Loop rounds of 6 short simulated conversations each on a tiny bundle; their RoundResults."""
    from npcrl.loop.run import run_loop

    return run_loop(
        bundle,
        out,
        rounds=rounds,
        conversations=6,
        eval_conversations=eval_conversations,
        train_config=config,
        seed=seed,
        max_new_tokens=6,
        system_prompts=TINY_SYSTEM_PROMPTS,
        concurrency=2,
        **options,
    )


def full_tiny_config() -> Any:
    """Logged-mode training of the whole tiny model: one PPO iteration on 4 turns."""
    from npcrl.train.config import DataConfig, ModelConfig, PPOConfig, RunConfig, TrainConfig

    return TrainConfig(
        data=DataConfig(holdout_fraction=0.2),
        model=ModelConfig(mode="full"),
        ppo=PPOConfig(rollout_turns=4, minibatch_turns=4, micro_batch_turns=4, epochs=1, iterations=1),
        run=RunConfig(export_quant="fp32", sample_prompts=1, sample_tokens=4, threads=1),
    ).validate()


def test_one_round_on_a_tiny_model(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    import json

    config = full_tiny_config()
    store = tmp_path / "store"
    (result,) = tiny_loop(tiny_bundles["llama-fp32"], tmp_path / "loop", config, eval_conversations=3, store=store)
    decision = json.loads((tmp_path / "loop" / "round-1" / "decision.json").read_text())
    assert decision["promoted"] == result.promoted and decision["reasons"] == result.reasons
    assert set(decision["metrics"]) == {"current", "candidate"}
    assert (store / "CURRENT").is_file() == result.promoted
    assert "| 1 |" in (tmp_path / "loop" / "loop.md").read_text()
    gain, low, high = decision["metrics"]["candidate"][metric.PAIRED_GAIN]
    assert low <= gain <= high and any(r.startswith("paired gain") for r in result.reasons)
    assert not any("kind of machine" in r for r in result.reasons)  # both evaluations ran here
    # the gain split by the profile that played each evaluation conversation, in the record and loop.md
    candidate = decision["metrics"]["candidate"]
    split = {metric.profile_of_row(label): value for label, value in candidate.items() if metric.profile_of_row(label)}
    assert split and set(split) <= {"curious", "impatient", "lore_lover", "quest_seeker"}
    assert all(low <= mean <= high for mean, low, high in split.values())
    assert "- round 1, paired gain per kind of player: " in (tmp_path / "loop" / "loop.md").read_text()


def test_both_bundles_answer_the_persona_probe_and_the_guard_reads_it(
    tiny_bundles: dict[str, Path], tmp_path: Path
) -> None:
    import json

    from npcrl.evaluation.persona_probe import PROBE_COUNTS, PROBE_SETUP

    guards = Guards(persona_probe_lines=3)
    tiny_loop(tiny_bundles["llama-fp32"], tmp_path / "loop", full_tiny_config(), eval_conversations=2, guards=guards)
    round_dir = tmp_path / "loop" / "round-1"
    metrics = json.loads((round_dir / "decision.json").read_text())["metrics"]
    # 3 lines per persona: one conversation of 3 lines per card, the same setup on both sides
    assert len(metrics["current"][PROBE_COUNTS]) == len(metrics["candidate"][PROBE_COUNTS]) == 4
    assert metrics["current"][PROBE_SETUP] == metrics["candidate"][PROBE_SETUP]
    # the play's paired rise beside it, the candidate's over the current bundle
    rise, low, high = metrics["candidate"][metric.CARD_CONTRADICTIONS_RISE]
    assert low <= rise <= high and metric.CARD_CONTRADICTIONS_RISE not in metrics["current"]
    stages = json.loads((round_dir / "stages.json").read_text())
    assert {"probe_current", "probe_candidate"} <= finished_stages(stages)


def test_a_promoted_candidate_carries_no_gain_over_its_predecessor_into_the_next_round(tmp_path: Path) -> None:
    from npcrl.loop.round import LoopState
    from npcrl.loop.state import RoundStages

    state = LoopState(current=tmp_path / "base")
    candidate = {
        **rows(1.0),
        metric.PAIRED_GAIN: (0.2, 0.1, 0.3),
        metric.paired_gain_of_profile("curious"): (0.4, 0.1, 0.7),
        metric.CARD_CONTRADICTIONS_RISE: (0.01, -0.02, 0.04),
    }
    state.promoted(tmp_path / "candidate", candidate, RoundStages(tmp_path / "round-1"))
    assert state.metrics == rows(1.0)


def test_each_round_can_retrain_its_reward_model_on_the_logs_so_far(
    tiny_bundles: dict[str, Path], tmp_path: Path
) -> None:
    """data.mode = 'reward_model' with reward_model.retrain_each_round: each round trains a predictor
    on the simulated logs of the rounds so far (pool_rounds, the default) and the on-policy run is
    scored by that one (no fixed path)."""
    import json

    from npcrl.errors import TrainError
    from npcrl.train.config import DataConfig, ModelConfig, PPOConfig, RewardModelConfig, RunConfig, TrainConfig
    from npcrl.train.run import train

    config = TrainConfig(
        data=DataConfig(holdout_fraction=0.2, mode="reward_model"),
        model=ModelConfig(mode="lora", lora_r=4),
        ppo=PPOConfig(rollout_turns=4, minibatch_turns=4, micro_batch_turns=4, epochs=1, iterations=1),
        run=RunConfig(export_quant="fp32", sample_prompts=1, sample_tokens=4, threads=1),
        reward_model=RewardModelConfig(
            backbone="frozen", pooling="mean", head_fit="ridge", ridge_folds=2, retrain_each_round=True
        ),
    ).validate()
    results = tiny_loop(tiny_bundles["llama-fp32"], tmp_path / "loop", config, eval_conversations=2, rounds=2)
    logs = [str((tmp_path / "loop" / f"round-{k}" / "logs").resolve()) for k in (1, 2)]
    for number, result in enumerate(results, start=1):
        round_dir = tmp_path / "loop" / f"round-{number}"
        record = json.loads((round_dir / "reward-model" / "reward_model.json").read_text())
        assert record["logs"] == logs[:number] and record["metrics"]["holdout"]["turns"] > 0
        # round 2 reads round 1's logs too, whether or not round 1's candidate was promoted
        assert record["data"]["conversations"] == 6 * number and record["data"]["dropped"]["other_tokenizer"] == 0
        run_record = json.loads((round_dir / "train" / "run.json").read_text())
        assert run_record["config"]["reward_model"]["path"] == str(round_dir / "reward-model")
        assert run_record["reward_model"] == record["tensors_sha256"]  # the round's predictor scored the samples
        assert result.seconds["reward_model"] > 0
    assert "| reward model s |" in (tmp_path / "loop" / "loop.md").read_text()
    round_dir = tmp_path / "loop" / "round-1"
    # `npcrl train` itself needs a reward model directory: the setting is the loop's.
    with pytest.raises(TrainError, match="reward_model.retrain_each_round is read by npcrl loop only"):
        train(round_dir / "logs", tiny_bundles["llama-fp32"], tmp_path / "alone", config, progress=False)


def test_a_winner_must_also_win_with_fresh_players_before_it_is_promoted(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With confirm_conversations, a candidate the evaluation players would promote plays fresh
    players (a new seed each round) beside the current bundle, and their verdict decides. The tiny
    model's engagement is noise, so the verdicts are scripted: round 1 wins on the evaluation
    players and loses on the fresh ones (kept out), round 2 wins on both (promoted)."""
    import json

    import npcrl.loop.round
    from npcrl.playlog import NpcTurn, read_log_dir

    verdicts = iter([True, False, True, True])
    calls: list[tuple[dict, dict]] = []

    def scripted_decide(candidate: dict, current: dict, *args: Any) -> tuple[bool, list[str]]:
        calls.append((candidate, current))
        return next(verdicts), decide(candidate, current, *args)[1]

    monkeypatch.setattr(npcrl.loop.round, "decide", scripted_decide)
    config = full_tiny_config()
    out = tmp_path / "loop"
    first, second = tiny_loop(
        tiny_bundles["llama-fp32"], out, config, eval_conversations=2, rounds=2, confirm_conversations=3
    )
    assert not first.promoted and second.promoted
    assert len(calls) == 4 and all(metric.PAIRED_GAIN in candidate for candidate, _ in calls)
    assert any(r.startswith("fresh players (3, seed 20000): engagement") for r in first.reasons), first.reasons
    assert second.current == str(tiny_bundles["llama-fp32"])  # round 1's candidate was kept out
    for number, result in ((1, first), (2, second)):
        decision = json.loads((out / f"round-{number}" / "decision.json").read_text())
        assert set(decision["metrics"]) == {"current", "candidate", "confirm_current", "confirm_candidate"}
        assert decision["promoted"] == result.promoted and result.seconds["confirm"] > 0
        for side in ("current", "candidate"):
            turns = [r for r in read_log_dir(out / f"round-{number}" / "confirm" / side) if isinstance(r, NpcTurn)]
            conversations = {t.conversation_id for t in turns}
            assert len(conversations) == 3
            assert all(f"-s{20_000 + number - 1}-" in c for c in conversations)  # fresh players each round
    summary = (out / "loop.md").read_text()
    assert "fresh players' paired gain" in summary and "fresh players (3, seed 20001)" in summary
    with pytest.raises(ValueError, match="confirm_conversations"):
        tiny_loop(tiny_bundles["llama-fp32"], tmp_path / "bad", config, eval_conversations=2, confirm_conversations=-1)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_pooled_confirmation_decides_on_both_sets_of_players_together(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With confirm_rule "pooled", a candidate with the higher mean on the evaluation players (and
    its guards held) plays the fresh players, and the promote_when rule reads the paired gain over
    the pairs of both sets together; one that is not better there plays no fresh players. The tiny
    model's engagement is noise, so the evaluation players' verdicts are scripted: round 1's
    candidate is better there, round 2's is not. The pooled verdict itself is not scripted."""
    import json

    import npcrl.loop.round
    from npcrl.evaluation.metrics import conversation_rewards
    from npcrl.reward.spec import default_reward_spec

    verdicts = iter([True, True, False, False])  # per round: decide_round, then worth_confirming

    def scripted_decide(candidate: dict, current: dict, *args: Any) -> tuple[bool, list[str]]:
        return next(verdicts), decide(candidate, current, *args)[1]

    monkeypatch.setattr(npcrl.loop.round, "decide", scripted_decide)
    out = tmp_path / "loop"
    first, second = tiny_loop(
        tiny_bundles["llama-fp32"],
        out,
        full_tiny_config(),
        eval_conversations=2,
        rounds=2,
        confirm_conversations=3,
        confirm_rule="pooled",
        promote_when="significant",
    )
    round_1 = out / "round-1"
    spec = default_reward_spec()
    candidate = conversation_rewards(round_1 / "eval" / "candidate", spec)
    candidate += conversation_rewards(round_1 / "confirm" / "candidate", spec)
    current = conversation_rewards(round_1 / "eval" / "current", spec)
    current += conversation_rewards(round_1 / "confirm" / "current", spec)
    assert len(candidate) == len(current) == 5  # 2 evaluation players + 3 fresh ones
    metrics = json.loads((round_1 / "decision.json").read_text())["metrics"]
    pooled = metrics["pooled_candidate"]
    assert pooled[metric.CONVERSATIONS] == 5
    assert pooled[metric.ENGAGEMENT] == pytest.approx(sum(candidate) / 5)
    assert metrics["pooled_current"][metric.ENGAGEMENT] == pytest.approx(sum(current) / 5)
    gain = paired_gain(candidate, current, seed=20_000)
    assert pooled[metric.PAIRED_GAIN] == pytest.approx(list(gain))
    label = "evaluation and fresh players pooled (5 pairs; fresh seed 20000): "
    pooled_reasons = [r.removeprefix(label) for r in first.reasons if r.startswith(label)]
    assert any(r.startswith("paired gain") for r in pooled_reasons), first.reasons
    guards_held = not any(r.startswith("guard:") for r in pooled_reasons)  # the fresh players' guards
    assert first.promoted == (gain[1] > 0 and guards_held)  # significant: the pooled interval decides
    assert not second.promoted and not (out / "round-2" / "confirm").exists()  # not better: no fresh players
    assert "pooled paired gain" in (out / "loop.md").read_text()
    with pytest.raises(ValueError, match="confirm_rule must be one of both, pooled"):
        tiny_loop(
            tiny_bundles["llama-fp32"], tmp_path / "bad", full_tiny_config(), eval_conversations=2, confirm_rule="x"
        )


def test_a_loop_recorded_before_the_confirm_rule_resumes_under_the_old_rule(tmp_path: Path) -> None:
    """loop.json gained ``confirm_rule`` later: a run without it had rule "both" in effect."""
    import json

    from npcrl.errors import LoopError
    from npcrl.loop.state import LOOP_FILE, check_loop_out

    record = {"rounds": 2, "seed": 0, "confirm_conversations": 48}
    (tmp_path / LOOP_FILE).write_text(json.dumps(record), encoding="utf-8")
    check_loop_out(tmp_path, resume=True, record={**record, "confirm_rule": "both"})
    with pytest.raises(LoopError, match="different confirm_rule"):
        check_loop_out(tmp_path, resume=True, record={**record, "confirm_rule": "pooled"})


def test_a_loop_recorded_before_a_training_setting_existed_resumes_at_its_default(tmp_path: Path) -> None:
    """A ``train_config`` recorded before a training setting existed (here ``model.pad_shapes``)
    counts it at its default, as ``npcrl train --resume`` does; any other difference is refused."""
    import json

    from npcrl.errors import LoopError
    from npcrl.loop.state import LOOP_FILE, check_loop_out
    from npcrl.train.config import TrainConfig

    now = {"rounds": 2, "seed": 0, "confirm_rule": "both", "train_config": TrainConfig().to_dict()}
    older = json.loads(json.dumps(now))
    del older["train_config"]["model"]["pad_shapes"]
    (tmp_path / LOOP_FILE).write_text(json.dumps(older), encoding="utf-8")
    check_loop_out(tmp_path, resume=True, record=now)
    changed = TrainConfig()
    changed.model.pad_shapes = not changed.model.pad_shapes
    with pytest.raises(LoopError, match="different train_config"):
        check_loop_out(tmp_path, resume=True, record={**now, "train_config": changed.to_dict()})
    older["train_config"]["model"]["no_such_setting"] = 1  # a record that no longer parses differs
    (tmp_path / LOOP_FILE).write_text(json.dumps(older), encoding="utf-8")
    with pytest.raises(LoopError, match="different train_config"):
        check_loop_out(tmp_path, resume=True, record=now)


def test_the_command_line_passes_the_loop_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import npcrl.loop.run
    from npcrl.cli.main import main

    seen: dict[str, Any] = {}

    def fake_run_loop(base: str, out: str, **kwargs: Any) -> list:
        seen.update(kwargs, base=base, out=out)
        return []

    monkeypatch.setattr(npcrl.loop.run, "run_loop", fake_run_loop)
    argv = ["loop", "--bundle", "B", "--out", str(tmp_path), "--rounds", "2", "--eval-conversations", "48"]
    assert main([*argv, "--confirm-conversations", "24", "--promote-when", "significant"]) == 0
    assert seen["confirm_conversations"] == 24 and seen["promote_when"] == "significant" and seen["rounds"] == 2
    assert seen["confirm_rule"] == "both"
    assert main([*argv, "--confirm-conversations", "24", "--confirm-rule", "pooled"]) == 0
    assert seen["confirm_rule"] == "pooled"
    assert main(argv) == 0 and seen["confirm_conversations"] == 0 and not seen["resume"]  # off unless asked for
    assert seen["guards"].persona_probe_lines == 200  # the contradiction guard's probe, on by default
    assert main([*argv, "--persona-probe-lines", "0"]) == 0 and seen["guards"].persona_probe_lines == 0
    with pytest.raises(SystemExit):
        main([*argv, "--persona-probe-lines", "-1"])
    assert main([*argv, "--resume"]) == 0 and seen["resume"] and seen["same_play_as"] is None
    assert main([*argv, "--same-play-as", "runs/a"]) == 0 and seen["same_play_as"] == "runs/a"
    assert "0 of 0 rounds promoted" in capsys.readouterr().out


def test_a_stopped_loop_resumes_from_its_last_finished_stage(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stop in training resumes from the trainer's checkpoint; a stop in an evaluation sets the
    partial logs aside and plays the same seeded conversations again; finished stages and rounds are
    read back, not redone; a larger ``rounds`` extends a finished run; other settings are refused."""
    import json

    import npcrl.evaluation.run
    import npcrl.train.run
    from npcrl.errors import LoopError

    config = full_tiny_config()
    out = tmp_path / "loop"
    real_finish, real_evaluate = npcrl.train.run.finish, npcrl.evaluation.run.evaluate_bundle
    evaluated: dict[str, dict] = {}

    def stop_after_training(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # after the trainer's last checkpoint, before its export

    def stop_after_evaluating(model: Any, log_dir: Path, *args: Any, **kwargs: Any) -> Any:
        evaluated[log_dir.name] = real_evaluate(model, log_dir, *args, **kwargs)
        if log_dir.name == "candidate":
            raise KeyboardInterrupt  # its logs are written, its stage is not recorded
        return evaluated[log_dir.name]

    monkeypatch.setattr(npcrl.train.run, "finish", stop_after_training)
    with pytest.raises(KeyboardInterrupt):
        tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2)
    round_dir = out / "round-1"
    stages = json.loads((round_dir / "stages.json").read_text())
    assert finished_stages(stages) == {"simulate"} and (round_dir / "train" / "state" / "ckpt-000001").is_dir()
    assert "started" in stages["train_and_export"]  # in progress when it stopped
    with pytest.raises(LoopError, match="pass --resume"):
        tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2)

    monkeypatch.setattr(npcrl.train.run, "finish", real_finish)
    monkeypatch.setattr(npcrl.evaluation.run, "evaluate_bundle", stop_after_evaluating)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2, resume=True)
    assert "resumed from ckpt-000001 (1/1 iterations)" in capsys.readouterr().out
    after_stop = json.loads((round_dir / "stages.json").read_text())
    assert finished_stages(after_stop) == {"simulate", "train_and_export", "evaluate_current"}
    assert after_stop["train_and_export"]["cut_off_seconds"] > 0  # the stopped attempt's time is counted
    assert after_stop["simulate"] == stages["simulate"]  # read back, not simulated again

    monkeypatch.setattr(npcrl.evaluation.run, "evaluate_bundle", real_evaluate)
    capsys.readouterr()
    (first,) = tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2, resume=True)
    assert (round_dir / "eval" / "candidate.interrupted-1").is_dir()  # set aside, not deleted
    said = capsys.readouterr().out
    assert "[npcrl loop] round-1: simulate finished earlier, read back" in said
    assert f"round-1: evaluate_candidate was cut off; its partial output moved to {round_dir}" in said
    finished = json.loads((round_dir / "stages.json").read_text())
    assert {k: finished[k] for k in finished_stages(after_stop)} == {
        k: after_stop[k] for k in finished_stages(after_stop)
    }
    assert set(first.cut_off_seconds) == {"train_and_export", "evaluate"}
    assert first.seconds["evaluate"] > first.cut_off_seconds["evaluate"] > 0
    assert "stopped and resumed; the seconds include" in (out / "loop.md").read_text()
    candidate = {
        k: v
        for k, v in first.metrics["candidate"].items()
        if k not in (metric.PAIRED_GAIN, metric.CARD_CONTRADICTIONS_RISE) and metric.profile_of_row(k) is None
    }
    assert candidate == json.loads(json.dumps(evaluated["candidate"], default=list))  # the same conversations

    with pytest.raises(LoopError, match="different seed"):
        tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2, resume=True, seed=1)
    with pytest.raises(LoopError, match="1 rounds are already finished"):
        tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2, resume=True, rounds=0)
    again, second = tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2, resume=True, rounds=2)
    assert again == first and second.round == 2
    if first.promoted:  # recorded relative to each round's folder
        assert (out / "round-2" / second.current).resolve() == (out / "round-1" / first.candidate).resolve()
    else:
        assert second.current == str(tiny_bundles["llama-fp32"])
    summary = (out / "loop.md").read_text()
    assert "| 1 |" in summary and "| 2 |" in summary
    assert json.loads((out / "loop.json").read_text())["rounds"] == 2


def test_a_moved_loop_run_resumes_where_it_now_lies(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Round 1 promoted, round 2 stopped in training, the run moved: the resume finds round 1's
    candidate, the weights it was trained from and round 2's checkpoint where they now lie."""
    import json
    import shutil

    import npcrl.agent.persona
    import npcrl.loop.round
    import npcrl.train.run

    config = full_tiny_config()
    monkeypatch.setattr(npcrl.loop.round, "decide_round", lambda *args: (True, ["promoted for the test"]))
    (first,) = tiny_loop(tiny_bundles["llama-fp32"], tmp_path / "loop", config, eval_conversations=2)
    assert first.promoted and first.candidate == "train/bundle"
    manifest = json.loads((tmp_path / "loop" / "round-1" / "train" / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["source"] == "../checkpoint"
    real_finish = npcrl.train.run.finish

    def stop_after_training(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(npcrl.train.run, "finish", stop_after_training)
    with pytest.raises(KeyboardInterrupt):
        tiny_loop(tiny_bundles["llama-fp32"], tmp_path / "loop", config, eval_conversations=2, resume=True, rounds=2)
    assert (tmp_path / "loop" / "round-2" / "train" / "state" / "ckpt-000001").is_dir()

    moved = tmp_path / "elsewhere" / "loop"
    moved.parent.mkdir()
    shutil.move(tmp_path / "loop", moved)
    monkeypatch.setattr(npcrl.train.run, "finish", real_finish)
    real_train, cards_given = npcrl.train.run.train, []

    def train(*args: Any, **kwargs: Any) -> Any:
        cards_given.append([p.persona_hash for p in kwargs["personas"]])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(npcrl.train.run, "train", train)
    capsys.readouterr()
    again, second = tiny_loop(tiny_bundles["llama-fp32"], moved, config, eval_conversations=2, resume=True, rounds=2)
    assert "resumed from ckpt-000001 (1/1 iterations)" in capsys.readouterr().out
    # the trainer knows the cards the loop's NPCs played (for the on-policy card check)
    assert cards_given == [[p.persona_hash for p in npcrl.agent.persona.builtin_personas().values()]]
    assert again == first and second.round == 2
    assert (moved / "round-2" / second.current).resolve() == (moved / "round-1" / "train" / "bundle").resolve()
    record = json.loads((moved / "round-2" / "train" / "run.json").read_text())
    assert record["out"] == str(moved / "round-2" / "train")  # the record now names where the run lies
    assert record["bundle"] == str(moved / "round-1" / "train" / "bundle")
    assert record["base_weights"] == str(moved / "round-1" / "train" / "checkpoint")


def finished_stages(stages: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, stage in stages.items() if "seconds" in stage}


def test_a_second_loop_in_the_same_directory_stops_at_once(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    """A resume started while the first run still works in --out must not write the same round."""
    from npcrl.errors import LoopError
    from npcrl.loop.state import exclusive

    out = tmp_path / "loop"
    with exclusive(out):  # what a running loop holds
        with pytest.raises(LoopError, match="another npcrl loop is working in this directory"):
            tiny_loop(tiny_bundles["llama-fp32"], out, full_tiny_config(), eval_conversations=2)
    assert [p.name for p in out.iterdir()] == ["loop.lock"]  # nothing else written
    with pytest.raises(LoopError, match="nothing to resume"):  # the lock file alone is no run
        tiny_loop(tiny_bundles["llama-fp32"], out, full_tiny_config(), eval_conversations=2, resume=True)


def test_the_command_line_refuses_a_used_directory_and_a_bad_count_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from npcrl.cli.main import main

    out = tmp_path / "loop"
    out.mkdir()
    (out / "loop.json").write_text("{}")
    assert main(["loop", "--bundle", str(tmp_path / "no-bundle"), "--out", str(out)]) == 2
    assert f"{out}: output directory is not empty (pass --resume to continue it)" in capsys.readouterr().err
    assert main(["loop", "--bundle", "B", "--out", str(tmp_path / "new"), "--confirm-conversations", "-1"]) == 2
    assert "confirm_conversations must be 0 (no confirmation) or more" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
