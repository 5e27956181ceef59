"""The adaptive weight of the penalty on samples rejected for contradicting the card
(``[contradiction] penalty = "adaptive"``): its off-policy estimate of the policy's contradiction
share over first draws, the multiplier it steers, the rewards it shapes, its state, the config, the
first-draw marks the data loader sets, and a toy run in which the policy learns to contradict less
and the multiplier holds the penalty, since its logs cannot show it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from playlog_helpers import rewritten_logs  # noqa: E402
from toy_logs import toy_config, write_rejection_logs  # noqa: E402
from training_turns import line_turn  # noqa: E402

from npcrl.errors import TrainConfigError, TrainError  # noqa: E402
from npcrl.playlog import NpcTurn, Record  # noqa: E402
from npcrl.reward.spec import default_reward_spec  # noqa: E402
from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train.batching import collate  # noqa: E402
from npcrl.train.config import TrainConfig, load_train_config  # noqa: E402
from npcrl.train.config_contradiction import ContradictionConfig  # noqa: E402
from npcrl.train.contradiction_multiplier import ContradictionMultiplier  # noqa: E402
from npcrl.train.data import TrainingTurn, load_training_data  # noqa: E402
from npcrl.train.distributed import Dist  # noqa: E402
from npcrl.train.policy import build_policy, resolve_base_weights  # noqa: E402
from npcrl.train.ppo import PPOTrainer  # noqa: E402
from npcrl.train.report import write_markdown  # noqa: E402
from npcrl.train.rollout import Rollout  # noqa: E402
from npcrl.train.rollout_stats import sequence_log_weights  # noqa: E402

# moves on the estimate alone (an upper bound at confidence 0.5 is the estimate itself)
ADAPTIVE = ContradictionConfig(penalty="adaptive", step=0.5, estimate_decay=0.0, release_confidence=0.5)
ADAPTIVE_DEFAULTS = ContradictionConfig(penalty="adaptive")


def multiplier_for(
    turns: list[TrainingTurn], config: ContradictionConfig, log_weight_clip: float = 5.0
) -> ContradictionMultiplier:
    return ContradictionMultiplier.for_turns(turns, config, log_weight_clip, rollout_turns=len(turns))


def draws(contradicting: int, agreeing: int, later: int = 0) -> list[TrainingTurn]:
    """``contradicting`` first rejected samples (reward -1), ``agreeing`` shown lines drawn first
    (reward 0.5) and ``later`` shown lines drawn after a rejected sample (reward 2, not first draws)."""
    rejected = [line_turn([5], rejected=1, reward=-1.0, conversation_id=f"r{k}") for k in range(contradicting)]
    shown = [line_turn([6], reward=0.5, conversation_id=f"s{k}") for k in range(agreeing)]
    resampled = [line_turn([7], reward=2.0, first_draw=False, conversation_id=f"l{k}") for k in range(later)]
    return rejected + shown + resampled


def test_the_target_is_the_logged_share_of_first_draws_and_later_draws_are_left_out() -> None:
    turns = draws(contradicting=1, agreeing=3, later=4)
    multiplier = multiplier_for(turns, ADAPTIVE)
    assert multiplier.target == pytest.approx(0.25)
    assert multiplier.shown_mean == pytest.approx((3 * 0.5 + 4 * 2.0) / 7)  # every shown turn's reward
    stats = multiplier.observe(turns, [0.0] * len(turns), "iteration 1")
    assert stats["contradiction_share_estimate"] == pytest.approx(0.25)  # the logged policy itself: on target
    assert stats["contradiction_estimate_ess"] == pytest.approx(4.0)
    assert stats["contradiction_estimate_events"] == pytest.approx(1.0)
    assert multiplier.multiplier == pytest.approx(1.0)  # no error, no move


def test_a_policy_that_would_contradict_more_raises_the_multiplier_and_less_lowers_it() -> None:
    turns = draws(contradicting=1, agreeing=3)
    more = multiplier_for(turns, ADAPTIVE)
    # the rejected draw twice as likely under the policy: estimate 2 / (2 + 3) = 0.4 against 0.25
    stats = more.observe(turns, [math.log(2.0), 0.0, 0.0, 0.0], "iteration 1")
    assert stats["contradiction_share_estimate"] == pytest.approx(0.4)
    assert more.multiplier == pytest.approx(1.0 + 0.5 * (0.4 / 0.25 - 1.0))
    less = multiplier_for(turns, ADAPTIVE)
    less.observe(turns, [-math.log(4.0), 0.0, 0.0, 0.0], "iteration 1")  # 0.25 / 3.25 ~ 0.077
    assert less.multiplier == pytest.approx(1.0 + 0.5 * (0.25 / 3.25 / 0.25 - 1.0))
    for _ in range(10):  # held within [0, max_multiplier]
        less.observe(turns, [-100.0, 0.0, 0.0, 0.0], "iteration")
        more.observe(turns, [100.0, -100.0, -100.0, -100.0], "iteration")
    assert less.multiplier == 0.0 and more.multiplier == ADAPTIVE.max_multiplier


def test_the_multiplier_falls_only_once_the_bound_is_below_the_target() -> None:
    """Rising takes the estimate; falling takes evidence: the estimate's upper bound below the target."""
    config = dataclasses.replace(ADAPTIVE, release_confidence=0.95)
    few = draws(contradicting=1, agreeing=3)
    held = multiplier_for(few, config)
    stats = held.observe(few, [-math.log(4.0), 0.0, 0.0, 0.0], "iteration 1")  # estimate ~0.077 of 0.25
    assert stats["contradiction_share_estimate"] < 0.25 < stats["contradiction_share_bound"]
    assert held.multiplier == 1.0  # four draws cannot show the share fell
    raised = multiplier_for(few, config)
    raised.observe(few, [math.log(2.0), 0.0, 0.0, 0.0], "iteration 1")
    assert raised.multiplier == pytest.approx(1.0 + 0.5 * (0.4 / 0.25 - 1.0))  # up on the estimate, as before
    many = draws(contradicting=100, agreeing=300)
    released = multiplier_for(many, config)
    stats = released.observe(many, [-math.log(4.0)] * 100 + [0.0] * 300, "iteration 1")
    assert stats["contradiction_share_bound"] < 0.25
    assert released.multiplier == pytest.approx(1.0 + 0.5 * (stats["contradiction_share_bound"] / 0.25 - 1.0))


def test_a_low_estimate_on_a_collapsed_effective_sample_does_not_release_the_penalty() -> None:
    """The real run's last iteration (docs/RESULTS.md): target 0.035, estimate 0.013 on an effective
    sample of 10.4 first draws, while the trained policy's played share rose from 0.048 to 0.081."""
    turns = draws(contradicting=4, agreeing=109)  # target 4 / 113 = 0.0354
    multiplier = multiplier_for(turns, ADAPTIVE_DEFAULTS)
    events, read, ess, estimate = 4.354, 0.02861, 10.383, 0.01266
    weights = 152.2
    multiplier.load_state_dict(
        {
            "multiplier": 0.5,
            "draws": events / read,
            "contradictions": events,
            "weights": weights,
            "squared_weights": weights**2 / ess,
            "weighted_contradictions": weights * estimate * read / multiplier.target,
        }
    )
    assert multiplier.estimate == pytest.approx(estimate, rel=1e-3)
    assert multiplier.upper_bound > 0.25  # the bound: ~0.28, eight times the target
    multiplier.observe([], [], "iteration 66")
    assert multiplier.multiplier == 0.5  # held; moved by the estimate alone it would fall
    on_estimate = multiplier_for(turns, dataclasses.replace(ADAPTIVE_DEFAULTS, release_confidence=0.5))
    on_estimate.load_state_dict({**multiplier.state_dict(), "multiplier": 0.5})
    on_estimate.observe([], [], "iteration 66")
    assert on_estimate.multiplier < 0.5


def test_fixed_penalty_reports_the_estimate_but_never_moves() -> None:
    turns = draws(contradicting=1, agreeing=3)
    fixed = multiplier_for(turns, ContradictionConfig(penalty="fixed"))
    stats = fixed.observe(turns, [math.log(2.0), 0.0, 0.0, 0.0], "iteration 1")
    assert stats["contradiction_share_estimate"] > 0.25 and fixed.multiplier == 1.0


def test_the_estimate_moves_with_the_policy_not_with_which_draws_a_rollout_held() -> None:
    turns = draws(contradicting=1, agreeing=3)
    running = multiplier_for(turns, ContradictionConfig(estimate_decay=0.5))
    # as if one running window (4 first draws a rollout / (1 - 0.5) = 8) of the logged policy was seen
    assert running.estimate == pytest.approx(0.25) and running.weights == pytest.approx(8.0)
    # a rollout of nothing but the rejected draw, read by the logged policy (weight 1): its share read
    # jumps (1 + 1 of 4 + 1), the estimate stays at the target
    stats = running.observe(turns[:1], [0.0], "iteration 1")
    assert stats["contradiction_share_read"] == pytest.approx(2 / 5)
    assert stats["contradiction_share_estimate"] == pytest.approx(0.25)
    # the same draws under a policy that gives the rejected one twice the weight: the estimate rises
    again = multiplier_for(turns, ContradictionConfig(estimate_decay=0.5))
    stats = again.observe(turns[:1], [math.log(2.0)], "iteration 1")
    weighted, read = (1 + 2) / (4 + 2), (1 + 1) / (4 + 1)
    assert stats["contradiction_share_estimate"] == pytest.approx(0.25 * weighted / read)
    assert stats["contradiction_estimate_events"] == pytest.approx(2.0)  # the prior's 1, decayed, and this one


def test_log_weights_are_clipped_and_a_nan_is_refused() -> None:
    turns = draws(contradicting=1, agreeing=1)
    clipped = multiplier_for(turns, ADAPTIVE, log_weight_clip=1.0)
    stats = clipped.observe(turns, [50.0, 0.0], "iteration 1")
    assert stats["contradiction_share_estimate"] == pytest.approx(math.e / (math.e + 1))
    with pytest.raises(TrainError, match=r"iteration 2: turn r0#0/rejected-1: .* NaN"):
        clipped.observe(turns, [math.nan, 0.0], "iteration 2")


def test_without_a_contradicting_first_draw_there_is_nothing_to_steer_by() -> None:
    turns = draws(contradicting=0, agreeing=3, later=1)
    multiplier = multiplier_for(turns, ADAPTIVE)
    assert multiplier.target is None
    assert multiplier.observe(turns, [0.0] * 4, "iteration 1") == {} and multiplier.multiplier == 1.0


def test_the_multiplier_scales_only_the_rejected_samples_distance_from_the_shown_mean() -> None:
    turns = draws(contradicting=1, agreeing=1)  # shown mean 0.5
    multiplier = multiplier_for(turns, ADAPTIVE)
    scores = torch.tensor([-1.0, 0.5])
    assert torch.equal(multiplier.shaped(turns, scores), scores)  # 1: the spec's penalty as it is
    multiplier.multiplier = 0.0
    assert multiplier.shaped(turns, scores).tolist() == [0.5, 0.5]
    multiplier.multiplier = 2.0
    assert multiplier.shaped(turns, scores).tolist() == [-2.5, 0.5]


def test_state_round_trips_and_bad_state_is_refused() -> None:
    turns = draws(contradicting=1, agreeing=3)
    first = multiplier_for(turns, ADAPTIVE)
    first.observe(turns, [0.3, -0.1, 0.2, 0.0], "iteration 1")
    second = multiplier_for(turns, ADAPTIVE)
    second.load_state_dict(first.state_dict())
    assert second.state_dict() == first.state_dict() and second.estimate == first.estimate
    with pytest.raises(ValueError, match="expected the fields"):
        second.load_state_dict({"multiplier": 1.0})
    with pytest.raises(ValueError, match="'weights': nan"):
        second.load_state_dict({**first.state_dict(), "weights": math.nan})


def test_the_adaptive_penalty_is_the_default_and_a_run_recorded_before_it_reads_back_fixed() -> None:
    assert TrainConfig().contradiction.penalty == "adaptive"
    # where there are no rejected samples it has nothing to weigh, so it is no error
    for data in ({"penalize_card_contradictions": False}, {"mode": "reward_model"}):
        config = TrainConfig.from_dict({"data": data, "reward_model": {"path": "rm"}})
        assert config.contradiction.penalty == "adaptive"
    # a run recorded before [contradiction] existed trained with the fixed penalty, and resumes so
    recorded = TrainConfig().to_dict()
    del recorded["contradiction"]
    assert TrainConfig.from_record(recorded).contradiction.penalty == "fixed"
    assert TrainConfig.from_dict(recorded).contradiction.penalty == "adaptive"
    assert TrainConfig.from_record(TrainConfig().to_dict()) == TrainConfig()
    with pytest.raises(TrainConfigError, match="contradiction.penalty = 'softer'"):
        TrainConfig.from_dict({"contradiction": {"penalty": "softer"}})
    with pytest.raises(TrainConfigError, match="contradiction.initial_multiplier = 6"):
        TrainConfig.from_dict({"contradiction": {"penalty": "adaptive", "initial_multiplier": 6}})
    assert TrainConfig.from_dict({"contradiction": {"penalty": "fixed"}}).contradiction.penalty == "fixed"


def test_without_rejected_samples_the_adaptive_multiplier_stays_at_one() -> None:
    turns = draws(contradicting=0, agreeing=3)
    multiplier = multiplier_for(turns, ADAPTIVE)
    assert multiplier.target is None
    multiplier.observe(turns, [0.3, -0.1, 0.2], "iteration 1")
    assert multiplier.multiplier == 1.0


# --- on logs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rejection_logs(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multiplier")
    bundle = tiny_bundles["llama-fp32"]
    write_rejection_logs(bundle, root / "logs", 160, seed=0)
    return {"bundle": bundle, "logs": root / "logs", "root": root}


def loaded(logs: Path, bundle_dir: Path, config: TrainConfig) -> list[TrainingTurn]:
    bundle = load_bundle(bundle_dir)
    data = load_training_data(
        logs, default_reward_spec(), {bundle.bundle_id}, bundle.manifest.vocab_size, config.data, 0, with_rejected=True
    )
    return data.train


def test_the_loader_marks_each_turns_first_draw(rejection_logs: dict[str, Path]) -> None:
    turns = loaded(rejection_logs["logs"], rejection_logs["bundle"], toy_config("lora"))
    by_turn: dict[str, list[TrainingTurn]] = {}
    for turn in turns:
        by_turn.setdefault(turn.conversation_id, []).append(turn)
    resampled = [group for group in by_turn.values() if len(group) > 1]
    assert resampled and len(resampled) < len(by_turn)
    for group in by_turn.values():
        firsts = [t for t in group if t.first_draw]
        assert len(firsts) == 1  # one first draw per turn
        # the first rejected sample when the turn has any, else the shown line
        assert firsts[0].rejected_sample == (1 if len(group) > 1 else 0)


def test_a_log_whose_shown_line_was_resampled_without_its_samples_marks_no_first_draw(
    rejection_logs: dict[str, Path],
) -> None:
    """A turn that names itself resampled is never a first draw, even if its samples were left out
    (for example withheld as personal data), so it cannot be counted as an agreeing first draw."""

    def drop_samples(record: Record) -> Record:
        if isinstance(record, NpcTurn) and record.rejected_samples:
            return dataclasses.replace(record, rejected_samples=record.rejected_samples[-1:])
        return record

    logs = rewritten_logs(rejection_logs["logs"], rejection_logs["root"] / "trimmed", drop_samples)
    turns = loaded(logs, rejection_logs["bundle"], toy_config("lora"))
    shown_after = [t for t in turns if not t.rejected_sample and not t.first_draw]
    assert shown_after and all(t.rejected_sample == 0 for t in shown_after)


def test_on_the_toy_the_policy_contradicts_less_and_the_penalty_is_held_until_the_logs_can_show_it(
    rejection_logs: dict[str, Path],
) -> None:
    torch.set_num_threads(1)
    config = dataclasses.replace(toy_config("lora"), contradiction=ADAPTIVE_DEFAULTS)
    turns = loaded(rejection_logs["logs"], rejection_logs["bundle"], config)
    bundle = load_bundle(rejection_logs["bundle"])
    policy = build_policy(resolve_base_weights(bundle, None), config.model, config.seed)
    trainer = PPOTrainer(policy, turns, config, Dist(), policy.tokenizer.pad_token_id)
    metrics = [trainer.run_iteration() for _ in range(config.ppo.iterations)]
    target = metrics[0]["contradiction_share_target"]
    assert 0.05 < target < 0.5
    # iteration 1 scores the logged policy itself (an fp32 bundle): on target whichever draws it read
    assert metrics[0]["contradiction_share_estimate"] == pytest.approx(target, rel=1e-3)
    assert metrics[0]["contradiction_multiplier"] == pytest.approx(1.0, abs=1e-3)
    # the penalty teaches the policy to contradict less, but as it moves the weights' effective sample
    # shrinks and the upper bound stays above the target: the penalty is not given back
    last = metrics[-1]
    assert last["contradiction_share_estimate"] < 0.7 * target, last
    assert last["contradiction_estimate_ess"] < 0.5 * metrics[0]["contradiction_estimate_ess"], last
    assert last["contradiction_share_bound"] > target, last
    assert all(m["contradiction_multiplier"] >= 1.0 for m in metrics), metrics
    # moved by the estimate alone, the same state would release it
    on_estimate = dataclasses.replace(ADAPTIVE_DEFAULTS, release_confidence=0.5)
    released = multiplier_for(turns, on_estimate, config.run.ope_log_weight_clip)
    released.load_state_dict(trainer.loop_state()["contradiction"])
    assert released.multiplier == trainer.contradiction.multiplier
    released.observe([], [], "one more iteration")
    assert released.multiplier < trainer.contradiction.multiplier


def test_the_report_shows_the_estimate_and_multiplier_only_for_runs_that_have_them(tmp_path: Path) -> None:
    summary = {"parent_bundle": "p", "base_weights": "w", "data_summary": "d", "time_s": 1.0}
    with_rows = {"kl_per_turn": 0.1, "contradiction_share_estimate": 0.05, "contradiction_multiplier": 0.8}
    write_markdown(tmp_path / "with.md", {**summary, "metrics": [with_rows, with_rows]})
    write_markdown(tmp_path / "without.md", {**summary, "metrics": [{"kl_per_turn": 0.1}]})
    shown = (tmp_path / "with.md").read_text(encoding="utf-8")
    assert "| estimated share of first draws contradicting the card | 0.05" in shown
    assert "| contradiction penalty multiplier | 0.8" in shown
    assert "contradiction" not in (tmp_path / "without.md").read_text(encoding="utf-8")


def test_the_adaptive_config_is_the_defaults_with_the_adaptive_penalty() -> None:
    """docs/train.contradiction-adaptive.toml (measured in docs/RESULTS.md) changes one setting."""
    root = Path(__file__).resolve().parents[2]
    config = load_train_config(root / "docs" / "train.contradiction-adaptive.toml")
    assert config == dataclasses.replace(TrainConfig(), contradiction=ADAPTIVE_DEFAULTS).validate()


def test_a_lines_weight_is_what_training_changed_not_the_bundles_quantisation() -> None:
    """The weights compare the policy with its reference (same numerics, 1 at the first iteration),
    not with the logging bundle's softmax, whose quantisation error training did not make."""
    turns = [line_turn([5, 6, 7]), line_turn([8, 9])]
    batch = collate(turns, pad_id=0)
    ref = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]])
    old = ref + torch.tensor([[0.1, -0.2, 0.3], [0.5, 0.25, 9.0]])  # the padded step is masked
    batch.logged_full_logprobs = ref - 0.4  # a quantised bundle's own softmax
    rollout = Rollout(turns, batch, old_logprobs=old, ref_logprobs=ref, values=ref * 0, kl=ref * 0)
    assert sequence_log_weights(rollout) == pytest.approx([0.2, 0.75])
