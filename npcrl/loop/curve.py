"""``npcrl curve``: what one round of the loop gains from more play, as a learning curve.

The base bundle plays the largest size of simulated conversations once, and is evaluated once on
the evaluation players. Simulation is seeded per conversation, so the first N of those
conversations are exactly the ones a loop round of N conversations would play: each size's round
(``npcrl.loop.round.play_round``) trains on them, and its candidate plays the same evaluation
players, paired with the base. Nothing but the number of conversations differs between sizes.

    OUT/loop.json               the settings (with ``sizes``); a resume must match them
    OUT/base/                   the shared stages: ``logs`` (largest size), ``eval/current``,
                                the base's persona probe (``probe_current``) when it runs
    OUT/size-N/round-1/         size N's round: its logs (the first N conversations), training,
                                candidate evaluation and ``decision.json``; ``OUT/size-N/loop.md``
    OUT/curve.json, curve.md    one point per size: gain over the base with its paired 95% interval,
    OUT/curve.png               KL per line, perplexity, whether the round would be promoted

Every stage is recorded as it finishes (``npcrl.loop.state``): ``resume`` goes on from the last one.

``same_play_as`` names an earlier loop run with the same players, seeds and evaluation players (a
population's folder of ``npcrl populations``, say), or an earlier curve: the base takes its
simulated play and base evaluation (``npcrl.loop.adopt``), with its persona probe when that run
probed as many lines per persona, and plays only the conversations it lacks, and a size that run played takes its whole round when it was trained with the curve's
settings too (with the persona probe off there and on here, the round is probed and decided again, not trained again).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from npcrl.durable import atomic_write
from npcrl.errors import LoopError
from npcrl.evaluation.metric_names import ENGAGEMENT, KL_PER_LINE, PAIRED_GAIN, PERPLEXITY
from npcrl.loop.adopt import adopt_finished_round, adopt_play, check_play_source, play_folder, sized_run
from npcrl.loop.decision import Guards, estimate
from npcrl.loop.round import LoadedBundle, LoopState, RoundResult, evaluate_base, play_round
from npcrl.loop.run import load_inputs
from npcrl.loop.settings import LoopSettings
from npcrl.loop.stages import LoopInputs, simulate_stage, simulation_seed
from npcrl.loop.state import (
    DECISION_FILE,
    LOOP_FILE,
    RoundStages,
    check_loop_out,
    exclusive,
    read_decision,
    read_loop_record,
    write_decision,
    write_loop_record,
)
from npcrl.loop.summary import profile_gains_text, write_summary
from npcrl.loop.trained import trained_how_far, training_cell

DEFAULT_SIZES = (150, 300, 600, 1200)
CURVE_JSON, CURVE_MD, CURVE_PNG = "curve.json", "curve.md", "curve.png"


@dataclass(frozen=True)
class CurvePoint:
    """One size's round, as the curve reports it."""

    conversations: int
    engagement_base: float
    engagement_candidate: float
    paired_gain: tuple[float, float, float]
    """the candidate's mean per-conversation gain over the base: (mean, low, high)"""
    gain_percent: tuple[float, float, float]
    """the same relative to the base's mean engagement, in percent"""
    kl_per_line: float
    perplexity: float
    base_perplexity: float
    promoted: bool
    """the loop would promote the candidate: it wins by ``promote_when`` and holds every guard"""
    reasons: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    """how far the candidate trained, from its bundle's provenance (``npcrl.loop.trained``): the
    ``iterations`` run, the ``most_iterations`` the config allowed, the ``passes_run`` over the
    training turns, whether ``kl_stop_reached`` ended it and its ``rollout_turns`` and
    ``batch_scale`` (empty before the round trained; fields a run did not record are absent)"""
    by_profile: str = ""
    """the candidate's paired gain per player profile in one line (``summary.profile_gains_text``)"""


def run_curve(  # the keywords of run_loop, but sizes instead of rounds and conversations
    base: str | Path,
    out: str | Path,
    sizes: Sequence[int],
    eval_conversations: int,
    train_config: Any,
    seed: int = 0,
    players: Sequence[Any] | None = None,
    personas: Sequence[Any] | None = None,
    max_new_tokens: int | None = None,
    system_prompts: dict[str, str] | None = None,
    concurrency: int = 1,
    promote_when: str = "significant",
    guards: Guards | None = None,
    resume: bool = False,
    same_play_as: str | Path | None = None,
) -> list[CurvePoint]:
    """One loop round per size in ``sizes`` (conversations from the base), into ``out``; the points."""
    from npcrl.agent.persona import builtin_personas
    from npcrl.sim.profiles import builtin_profiles

    sizes = check_sizes(sizes)
    settings = LoopSettings(
        base=Path(base),
        rounds=1,
        conversations=sizes[-1],
        eval_conversations=eval_conversations,
        train_config=train_config,
        seed=seed,
        players=list(players or builtin_profiles().values()),
        personas=list(personas or builtin_personas().values()),
        max_new_tokens=max_new_tokens,
        system_prompts=system_prompts,
        concurrency=concurrency,
        promote_when=promote_when,
        guards=guards or Guards(),
    )
    settings.check()
    out = Path(out)
    record = {**settings.record(), "sizes": list(sizes)}
    with exclusive(out):
        check_loop_out(out, resume, record, may_change=("sizes", "conversations"))
        if resume:
            check_added_sizes(out, sizes)
        inputs = load_inputs(settings, out)  # before the record: a typo must not claim the directory
        source = None if same_play_as is None else Path(same_play_as)
        if source is not None and not (out / "base").exists():  # else adopted (or played) before a stop
            check_play_source(source, settings.record(), any_conversations=True)
        write_loop_record(out, record)
        if source is not None:
            adopt_play(play_folder(source), out / "base", probe_lines=settings.guards.persona_probe_lines)
            source = source if base_adopted_from(out, source) else None
        state = base_state(inputs)
        points = [play_size(inputs, state, size, source) for size in sizes]
        write_curve(out, points)
    return points


def check_sizes(sizes: Sequence[int]) -> list[int]:
    ordered = sorted(set(int(size) for size in sizes))
    if not ordered or ordered[0] < 1:
        raise LoopError(f"sizes must be one or more conversation counts of at least 1, got {list(sizes)}")
    return ordered


def check_added_sizes(out: Path, sizes: Sequence[int]) -> None:
    """A resumed curve may add sizes (the base then plays more conversations), never drop one."""
    started = read_loop_record(out).get("sizes")
    if not isinstance(started, list) or not set(started) <= set(sizes):
        raise LoopError(
            f"{out / LOOP_FILE}: the curve was started with sizes {started!r}; a resume may add sizes, "
            f"not drop them (now {list(sizes)})"
        )


def base_state(inputs: LoopInputs) -> LoopState:
    """The base plays the largest size once (as round 1 of a loop would), the evaluation players,
    and, with the contradiction guard's probe on, the persona probe: each size's round reads them.

    A resume that added a larger size reopens the finished simulation: it keeps the conversations
    played (``npcrl.sim.resume``) and plays only the new ones."""
    from npcrl.sim.resume import finished_conversations

    stages = RoundStages(inputs.out / "base")
    wanted = inputs.settings.conversations
    if stages.done("simulate"):
        played = finished_conversations(
            stages.folder / "logs", inputs.base_model.bundle_id, simulation_seed(inputs.settings, 1)
        )
        if played < wanted:
            print(f"[npcrl curve] the base played {played} conversations; {wanted} are needed now", flush=True)
            stages.reopen("simulate")
    simulate_stage(inputs, stages, inputs.base_model, 1)
    state = LoopState()  # the base is evaluated and probed here once; each size's round reads its rows
    state.base_evaluated(evaluate_base(inputs, stages, inputs.base_model), stages)
    return state


def base_adopted_from(out: Path, source: Path) -> bool:
    """Whether the curve's base play came from the run ``source``: only then are that run's rounds
    the curve's (the same seeds on another machine play other conversations)."""
    if RoundStages(out / "base").adopted_from("simulate") == str(play_folder(source).resolve()):
        return True
    print(f"[npcrl curve] the base played its own conversations, not {source}'s: no round is taken from it", flush=True)
    return False


def play_size(inputs: LoopInputs, state: LoopState, size: int, same_play_as: Path | None = None) -> CurvePoint:
    """Size ``size``'s round, trained on the first ``size`` of the base's conversations (read back
    when it finished, or taken from ``same_play_as`` when that run is this round), as its point."""
    folder = inputs.out / f"size-{size}"
    size_inputs = replace(inputs, settings=replace(inputs.settings, conversations=size), out=folder)
    round_dir = size_inputs.round_dir(1)
    record = size_inputs.settings.record()
    adopted = same_play_as is not None and adopt_finished_round(sized_run(same_play_as, size), record, round_dir)
    if (round_dir / DECISION_FILE).is_file():  # an adopted round without one goes on below with the persona probe
        decided = RoundResult(**read_decision(round_dir))
        if adopted:
            write_loop_record(folder, record)
            write_summary(folder, [decided])
        return curve_point(size, decided, trained_how_far(round_dir / "train"))
    print(f"[npcrl curve] size {size}: a round on the first {size} conversations, in {round_dir}", flush=True)
    stages = RoundStages(round_dir)
    # a finished copy is left to play_round to report, so a resumed size says "read back" once
    if not stages.done("simulate") and stages.start("simulate", output=round_dir / "logs"):
        copy_first_conversations(inputs.out / "base" / "logs", round_dir / "logs", size)
        stages.finish("simulate")
    write_loop_record(folder, record)
    result, _ = play_round(size_inputs, state, LoadedBundle(inputs.settings.base, inputs.base_model), 1)
    played = RoundResult(**write_decision(round_dir, asdict(result)))
    write_summary(folder, [played])
    print(f"{size} conversations: " + "; ".join(played.reasons))
    return curve_point(size, played, trained_how_far(round_dir / "train"))


def copy_first_conversations(source: Path, target: Path, count: int) -> None:
    """Write into ``target`` every record of the first ``count`` simulated conversations in ``source``
    (``npcrl.sim.draws.simulated_conversation_id`` ends in the conversation's index)."""
    from npcrl.playlog import PlayLogWriter, read_log_dir
    from npcrl.sim.resume import copy_records

    with PlayLogWriter(target) as writer:
        kept = copy_records(
            read_log_dir(source), writer, lambda conversation_id: conversation_index(conversation_id) < count
        )
    if kept == 0:
        raise LoopError(f"{source}: no records of the first {count} simulated conversations")


def conversation_index(conversation_id: str) -> int:
    """The index a simulated conversation id ends with ("sim-<bundle>-s<seed>-000042" -> 42)."""
    from npcrl.sim.draws import simulated_conversation_seat

    seat = simulated_conversation_seat(conversation_id)
    if seat is None:
        raise LoopError(f"{conversation_id!r} is not a simulated conversation's id; a curve reads only simulated play")
    return seat[1]


def curve_point(size: int, result: RoundResult, training: dict[str, Any] | None = None) -> CurvePoint:
    """``result``, a round on ``size`` conversations, as a point; ``training``: how far it trained."""
    base, candidate = result.metrics["current"], result.metrics["candidate"]
    engagement = estimate(base[ENGAGEMENT])
    gain = tuple(float(v) for v in candidate[PAIRED_GAIN])
    return CurvePoint(
        conversations=size,
        engagement_base=engagement,
        engagement_candidate=estimate(candidate[ENGAGEMENT]),
        paired_gain=(gain[0], gain[1], gain[2]),
        gain_percent=percent_of_engagement(gain, engagement),
        kl_per_line=estimate(candidate[KL_PER_LINE]),
        perplexity=estimate(candidate[PERPLEXITY]),
        base_perplexity=estimate(base[PERPLEXITY]),
        promoted=result.promoted,
        reasons=list(result.reasons),
        seconds=dict(result.seconds),
        training=dict(training or {}),
        by_profile=profile_gains_text(candidate) or "",
    )


def percent_of_engagement(gain: Sequence[float], engagement: float) -> tuple[float, float, float]:
    """A paired gain (mean, low, high) in percent of the base's mean engagement on the same players
    (NaN where that engagement is 0)."""
    scale = 100.0 / abs(engagement) if engagement else math.nan
    mean, low, high = (float(v) * scale for v in gain)
    return mean, low, high


def error_bars(intervals: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """(mean, low, high) intervals as matplotlib's ``errorbar`` takes them: the means, and the
    distances down and up from each."""
    mean = [interval[0] for interval in intervals]
    below = [interval[0] - interval[1] for interval in intervals]
    above = [interval[2] - interval[0] for interval in intervals]
    return mean, below, above


def write_curve(out: Path, points: Sequence[CurvePoint]) -> None:
    """``curve.json``, ``curve.md`` and (with matplotlib) ``curve.png``."""
    atomic_write(out / CURVE_JSON, json.dumps([asdict(p) for p in points], indent=2) + "\n")
    lines = [
        "# npcrl curve",
        "",
        "| conversations | engagement base | engagement candidate | paired gain [95% CI] | gain % [95% CI] "
        "| KL/line | perplexity (base) | promoted | training iterations | train+export s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        gain, pct = p.paired_gain, p.gain_percent
        lines.append(
            f"| {p.conversations} | {p.engagement_base:.3f} | {p.engagement_candidate:.3f} "
            f"| {gain[0]:+.3f} [{gain[1]:.3f}, {gain[2]:.3f}] | {pct[0]:+.1f}% [{pct[1]:+.1f}, {pct[2]:+.1f}] "
            f"| {p.kl_per_line:.2f} | {p.perplexity:.2f} ({p.base_perplexity:.2f}) | {p.promoted} "
            f"| {training_cell(p.training)} | {p.seconds.get('train_and_export', math.nan):.0f} |"
        )
    lines += ["", *(f"- {p.conversations} conversations: " + "; ".join(p.reasons) for p in points)]
    lines += [
        f"- {p.conversations} conversations, paired gain per kind of player: {p.by_profile}"
        for p in points
        if p.by_profile
    ]
    atomic_write(out / CURVE_MD, "\n".join(lines) + "\n")
    plot_curve(out / CURVE_PNG, points)


def plot_curve(path: Path, points: Sequence[CurvePoint]) -> bool:
    """Gain in percent with its interval, KL per line and perplexity against the size; False (and
    no file) without matplotlib, which only the ``train`` extra installs."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # headless: curves are made on servers and in tests
    import matplotlib.pyplot as plt

    fig = curve_figure(points)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def curve_figure(points: Sequence[CurvePoint]) -> Any:
    """The curve's matplotlib figure: the gain panel, then the KL panel with perplexity on its twin axis."""
    import matplotlib.pyplot as plt

    sizes = [p.conversations for p in points]
    fig, (gain_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4))
    mean, below, above = error_bars([p.gain_percent for p in points])
    gain_ax.errorbar(sizes, mean, yerr=[below, above], marker="o", capsize=4, label="gain over the base (95% CI)")
    gain_ax.axhline(0.0, color="grey", linewidth=0.8)
    gain_ax.axhline(30.0, color="tab:green", linestyle="--", linewidth=0.8, label="+30%")
    gain_ax.set(ylabel="engagement gain (%)")
    gain_ax.legend(loc="best", fontsize=8)
    # The two axes share the panel: KL keeps to its lower half and perplexity to the upper part, so
    # a one-size curve (both autoscaled to the middle) does not draw one point over the other.
    kl_values = [p.kl_per_line for p in points]
    kl = cost_ax.plot(sizes, kl_values, marker="o", color="tab:red", label="KL to the base")
    cost_ax.set_ylabel("KL to the base (nats / line)")
    kl_top = max((v for v in kl_values if math.isfinite(v)), default=0.0)
    cost_ax.set_ylim(0.0, 2.0 * kl_top if kl_top > 0 else 1.0)
    perplexity_ax = cost_ax.twinx()
    perplexities = [p.perplexity for p in points]
    perplexity = perplexity_ax.plot(
        sizes, perplexities, marker="s", color="tab:purple", label="perplexity (dotted: base)"
    )
    perplexity_ax.axhline(points[0].base_perplexity, color="tab:purple", linestyle=":", linewidth=0.8)
    shown = [v for v in [*perplexities, points[0].base_perplexity] if math.isfinite(v)]
    if shown:
        span = max(max(shown) - min(shown), 0.02 * abs(max(shown)), 1e-3)
        perplexity_ax.set_ylim(min(shown) - 1.5 * span, max(shown) + 0.25 * span)
    perplexity_ax.set_ylabel("held-out persona perplexity")
    cost_ax.legend(handles=kl + perplexity, loc="best", fontsize=8)
    for ax in (gain_ax, cost_ax):
        ax.set(xscale="log", xlabel="conversations played for the round")
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(s) for s in sizes])
    fig.tight_layout()
    return fig
