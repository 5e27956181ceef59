"""One round of ``npcrl loop``: the current bundle plays, a candidate is trained from its logs, both
are evaluated with the same players and seeds, and the decision says whether the candidate wins.

With ``confirm_conversations`` a candidate is also played against the current bundle by players
the loop has not used before (a new seed each round): the evaluation players are the same in every
round, so a gain can be theirs rather than the policy's (docs/RESULTS.md). By ``confirm_rule``, a
candidate that wins on the evaluation players must win on the fresh ones too (``both``), or one with
the higher mean there is judged on both sets' pairs together (``pooled``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npcrl.errors import LoopError
from npcrl.evaluation.by_profile import paired_gain_rows
from npcrl.evaluation.metric_names import (
    CARD_CONTRADICTIONS_RISE,
    CONVERSATIONS,
    ENGAGEMENT,
    PAIRED_GAIN,
    PERPLEXITY,
    profile_of_row,
)
from npcrl.evaluation.persona_probe import PROBE_COUNTS, PROBE_ROWS
from npcrl.loop.decision import decide, decide_pooled, estimate
from npcrl.loop.machine import mixed_machines
from npcrl.loop.stages import (
    LoopInputs,
    contradiction_rise_or_nan,
    evaluate_stage,
    paired_gain_or_nan,
    pooled_gain_or_nan,
    probe_stage,
    simulate_stage,
    stage_logs,
    train_stage,
)
from npcrl.loop.state import (
    DECISION_FILE,
    RoundStages,
    finished_rounds,
    placed_path,
    read_decision,
    recorded_path,
)

if TYPE_CHECKING:
    from npcrl.runtime.model import OnnxCausalLM

Rows = dict[str, Any]


@dataclass
class RoundResult:
    round: int
    current: str
    candidate: str | None
    promoted: bool
    reasons: list[str]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, cut-off attempts included
    cut_off_seconds: dict[str, float] = field(default_factory=dict)  # what those attempts spent


@dataclass(frozen=True)
class LoadedBundle:
    path: Path
    model: OnnxCausalLM
    """the bundle loaded once: it plays, and is evaluated, without being loaded (and hashed) again"""


@dataclass
class LoopState:
    """What the finished rounds leave for the next: the current bundle and its evaluation."""

    current: Path | None = None
    """the bundle rounds start from; None: the base"""
    metrics: Rows | None = None
    """its evaluation rows; None until round 1 evaluates the base"""
    eval_logs: Path | None = None
    eval_machines: list[dict[str, Any]] = field(default_factory=list)
    """the machines its evaluation ran on (``npcrl.loop.machine``; [] where unknown)"""
    base_perplexity: float | None = None

    def base_evaluated(self, rows: Rows, stages: RoundStages) -> None:
        """The base was evaluated in ``stages``' round (its ``evaluate_current``)."""
        self.metrics = rows
        self._evaluated_in(stages, "evaluate_current")
        self.base_perplexity = estimate(rows[PERPLEXITY])

    def promoted(self, candidate: Path, rows: Mapping[str, Any], stages: RoundStages) -> None:
        """``candidate``, evaluated in ``stages``' round (its ``evaluate_candidate``), is current now."""
        self.current = candidate
        # its gains (over all players and per profile) and its contradictions' rise were over the
        # bundle it replaces
        relative = (PAIRED_GAIN, CARD_CONTRADICTIONS_RISE)
        self.metrics = {k: v for k, v in rows.items() if k not in relative and profile_of_row(k) is None}
        self._evaluated_in(stages, "evaluate_candidate")

    def _evaluated_in(self, stages: RoundStages, name: str) -> None:
        self.eval_logs, self.eval_machines = stage_logs(stages.folder, name), stages.machines(name)


def finished_results(out: Path) -> tuple[list[RoundResult], LoopState]:
    """The finished rounds' results, read back, and the state they hand on (as the run had it)."""
    results: list[RoundResult] = []
    state = LoopState()
    for number in range(1, finished_rounds(out) + 1):
        folder = out / f"round-{number}"
        stages = RoundStages(folder)
        try:
            result = RoundResult(**read_decision(folder))
            if state.metrics is None:  # round 1 evaluated the base
                state.base_evaluated(result.metrics["current"], stages)
            if result.promoted:
                if result.candidate is None:
                    raise ValueError("promoted without a candidate")
                state.promoted(placed_path(result.candidate, folder), result.metrics["candidate"], stages)
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise LoopError(f"{folder / DECISION_FILE}: not a decision this loop wrote ({exc!r})") from None
        results.append(result)
    return results, state


def play_round(
    inputs: LoopInputs, state: LoopState, current: LoadedBundle, number: int
) -> tuple[RoundResult, LoadedBundle]:
    """Round ``number`` from ``current``: its result (not yet written) and the candidate it trained."""
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.sim.ordered import session_options_for

    stages = RoundStages(inputs.round_dir(number))
    simulate_stage(inputs, stages, current.model, number)
    trained = train_stage(inputs, stages, current.path, number)
    candidate = LoadedBundle(trained, OnnxCausalLM(trained, session_options_for(inputs.settings.concurrency)))
    metrics = evaluate_both(inputs, stages, state, current, candidate)
    promoted, reasons = decide_round(inputs, state, metrics)
    reasons += machine_reasons(
        "the evaluations ran", current=state.eval_machines, candidate=stages.machines("evaluate_candidate")
    )
    if inputs.settings.confirm_conversations > 0 and worth_confirming(inputs, state, metrics, promoted):
        promoted, confirm_reasons = confirm(inputs, stages, state, metrics, (current, candidate), number)
        reasons += confirm_reasons
    result = RoundResult(
        round=number,
        current=recorded_path(current.path, stages.folder),
        candidate=recorded_path(candidate.path, stages.folder),
        promoted=promoted,
        reasons=reasons,
        metrics=metrics,
        seconds=round_seconds(stages.seconds()),
        cut_off_seconds=round_seconds(stages.cut_off_seconds()),
    )
    return result, candidate


def evaluate_both(
    inputs: LoopInputs, stages: RoundStages, state: LoopState, current: LoadedBundle, candidate: LoadedBundle
) -> dict[str, Rows]:
    """The evaluation rows of both bundles, the candidate's with its paired gain over the current one.
    Round 1 evaluates the base; later rounds reuse the current bundle's rows from its own round."""
    settings = inputs.settings.eval_settings()
    if state.metrics is None:
        state.base_evaluated(evaluate_base(inputs, stages, current.model), stages)
    assert state.metrics is not None and state.eval_logs is not None
    probing = inputs.settings.guards.persona_probe_lines > 0
    if probing and PROBE_COUNTS not in state.metrics:  # a current bundle promoted unprobed
        state.metrics.update(probe_stage(inputs, stages, "probe_current", current.model))
    candidate_rows = evaluate_stage(inputs, stages, "evaluate_candidate", candidate.model, settings)
    if probing:
        candidate_rows.update(probe_stage(inputs, stages, "probe_candidate", candidate.model))
    candidate_logs = stage_logs(stages.folder, "evaluate_candidate")
    candidate_rows[PAIRED_GAIN] = paired_gain_or_nan(candidate_logs, state.eval_logs, inputs.spec, settings.seed)
    candidate_rows[CARD_CONTRADICTIONS_RISE] = contradiction_rise_or_nan(
        candidate_logs, state.eval_logs, inputs.settings.personas
    )
    split, left_out = paired_gain_rows(
        candidate_logs, state.eval_logs, inputs.spec, [p.name for p in inputs.settings.players], seed=settings.seed
    )
    if left_out:
        print(f"[npcrl loop] round {stages.folder.name}: {left_out}", flush=True)
    candidate_rows.update(split)
    return {"current": state.metrics, "candidate": candidate_rows}


def evaluate_base(inputs: LoopInputs, stages: RoundStages, model: OnnxCausalLM) -> Rows:
    """The base's rows, played in ``stages``' round (a loop's round 1, a curve's ``base``): its
    evaluation and, with the contradiction guard's probe on, its persona probe."""
    rows = evaluate_stage(inputs, stages, "evaluate_current", model, inputs.settings.eval_settings())
    if inputs.settings.guards.persona_probe_lines > 0:
        rows.update(probe_stage(inputs, stages, "probe_current", model))
    return rows


def decide_round(inputs: LoopInputs, state: LoopState, metrics: Mapping[str, Rows]) -> tuple[bool, list[str]]:
    """The decision on the evaluation players' rows of ``candidate`` and ``current``."""
    settings = inputs.settings
    assert state.base_perplexity is not None
    return decide(
        metrics["candidate"], metrics["current"], state.base_perplexity, settings.guards, settings.promote_when
    )


def worth_confirming(inputs: LoopInputs, state: LoopState, metrics: Mapping[str, Rows], promoted: bool) -> bool:
    """Whether fresh players are played: under ``confirm_rule`` ``both``, for a candidate the
    evaluation players would promote; under ``pooled``, for one that holds every guard there and has
    the higher mean, whose interval the fresh pairs may yet lift above zero. Neither plays them for
    a candidate that cannot win, which saves a round that would not promote two evaluations."""
    if inputs.settings.confirm_rule == "both":
        return promoted
    assert state.base_perplexity is not None
    better, _ = decide(metrics["candidate"], metrics["current"], state.base_perplexity, inputs.settings.guards)
    return better


def confirm(
    inputs: LoopInputs,
    stages: RoundStages,
    state: LoopState,
    metrics: dict[str, Rows],
    bundles: tuple[LoadedBundle, LoadedBundle],
    number: int,
) -> tuple[bool, list[str]]:
    """Play the (current, candidate) ``bundles`` against round ``number``'s fresh players and decide
    again, on their rows alone or pooled with the evaluation players' (``confirm_rule``). Their rows
    join ``metrics`` as ``confirm_current`` and ``confirm_candidate``; pooled, the pooled engagement
    and gain as ``pooled_current`` and ``pooled_candidate``."""
    settings = inputs.settings.confirm_settings(number)
    for side, bundle in zip(("current", "candidate"), bundles, strict=True):
        metrics[f"confirm_{side}"] = evaluate_stage(inputs, stages, f"confirm_{side}", bundle.model, settings)
        # the persona probe is the bundles', not the players': the same guard on the fresh players' rows
        metrics[f"confirm_{side}"].update({row: metrics[side][row] for row in PROBE_ROWS if row in metrics[side]})
    fresh_pair = (stage_logs(stages.folder, "confirm_candidate"), stage_logs(stages.folder, "confirm_current"))
    metrics["confirm_candidate"][PAIRED_GAIN] = paired_gain_or_nan(*fresh_pair, inputs.spec, settings.seed)
    metrics["confirm_candidate"][CARD_CONTRADICTIONS_RISE] = contradiction_rise_or_nan(
        *fresh_pair, inputs.settings.personas
    )
    confirmation = {side: metrics[f"confirm_{side}"] for side in ("current", "candidate")}
    if inputs.settings.confirm_rule == "pooled":
        assert state.eval_logs is not None and state.base_perplexity is not None
        evaluation_pair = (stage_logs(stages.folder, "evaluate_candidate"), state.eval_logs)
        candidate, current, gain, pairs = pooled_gain_or_nan([evaluation_pair, fresh_pair], inputs.spec, settings.seed)
        metrics["pooled_current"] = {ENGAGEMENT: current, CONVERSATIONS: pairs}
        metrics["pooled_candidate"] = {ENGAGEMENT: candidate, CONVERSATIONS: pairs, PAIRED_GAIN: gain}
        promoted, reasons = decide_pooled(
            (confirmation["candidate"], confirmation["current"]),
            (metrics["pooled_candidate"], metrics["pooled_current"]),
            state.base_perplexity,
            inputs.settings.guards,
            inputs.settings.promote_when,
        )
        label = f"evaluation and fresh players pooled ({pairs} pairs; fresh seed {settings.seed})"
    else:
        promoted, reasons = decide_round(inputs, state, confirmation)
        label = f"fresh players ({settings.conversations}, seed {settings.seed})"
    reasons += machine_reasons(
        "they played", current=stages.machines("confirm_current"), candidate=stages.machines("confirm_candidate")
    )
    return promoted, [f"{label}: {r}" for r in reasons]


def machine_reasons(what: str, **sides: list[dict[str, Any]]) -> list[str]:
    """A reason saying that a comparison's sides ran on different kinds of machine, or none. It
    does not change the decision: the gain is still measured, but it is not the bundles' alone."""
    mixed = mixed_machines(sides)
    return [] if mixed is None else [f"{what} {mixed}"]


def round_seconds(stages: Mapping[str, float]) -> dict[str, float]:
    """Stage seconds as loop.md reports them: both evaluations under evaluate, both confirmations
    under confirm, both persona probes under probe."""
    seconds: dict[str, float] = {}
    for name, value in stages.items():
        key = name.split("_")[0] if name.startswith(("evaluate_", "confirm_", "probe_")) else name
        seconds[key] = seconds.get(key, 0.0) + value
    return seconds
