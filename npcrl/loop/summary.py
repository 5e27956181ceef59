"""``loop.md``: the rounds of an ``npcrl loop`` run as a table, then each round's reasons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from npcrl.durable import atomic_write
from npcrl.evaluation.metric_names import ENGAGEMENT, KL_PER_LINE, PAIRED_GAIN, PERPLEXITY, profile_of_row
from npcrl.loop.decision import estimate
from npcrl.loop.round import RoundResult

SUMMARY_FILE = "loop.md"
HEADER = (
    "| round | engagement current | engagement candidate | paired gain [95% CI] | fresh players' paired gain "
    "| pooled paired gain | KL/line | perplexity | promoted | simulate s | reward model s | train+export s | eval s | fresh players s |"
)


def write_summary(out: Path, results: Sequence[RoundResult]) -> None:
    """Rewrite ``out/loop.md`` for ``results`` (all rounds so far), whole or not at all."""
    lines = ["# npcrl loop", "", HEADER, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [table_row(r) for r in results]
    lines += ["", *(f"- round {r.round}: " + "; ".join(r.reasons) for r in results)]
    lines += [
        f"- round {r.round}, paired gain per kind of player: {text}"
        for r in results
        if (text := profile_gains_text(r.metrics["candidate"]))
    ]
    lines += [
        f"- round {r.round}: stopped and resumed; the seconds include {cut_off_text(r.cut_off_seconds)} "
        "spent in cut-off attempts (until their last write)"
        for r in results
        if r.cut_off_seconds
    ]
    atomic_write(out / SUMMARY_FILE, "\n".join(lines) + "\n")


def table_row(r: RoundResult) -> str:
    current, candidate = r.metrics["current"], r.metrics["candidate"]
    fresh_gain = r.metrics.get("confirm_candidate", {}).get(PAIRED_GAIN)
    pooled_gain = r.metrics.get("pooled_candidate", {}).get(PAIRED_GAIN)
    cells = [
        str(r.round),
        f"{estimate(current[ENGAGEMENT]):.3f}",
        f"{estimate(candidate[ENGAGEMENT]):.3f}",
        paired_cell(candidate.get(PAIRED_GAIN)),
        paired_cell(fresh_gain),
        paired_cell(pooled_gain),
        f"{estimate(candidate[KL_PER_LINE]):.2f}",
        f"{estimate(candidate[PERPLEXITY]):.2f}",
        str(r.promoted),
        f"{r.seconds['simulate']:.0f}",
        seconds_cell(r.seconds.get("reward_model")),
        f"{r.seconds['train_and_export']:.0f}",
        f"{r.seconds['evaluate']:.0f}",
        seconds_cell(r.seconds.get("confirm")),
    ]
    return "| " + " | ".join(cells) + " |"


def cut_off_text(seconds: Mapping[str, float]) -> str:
    return ", ".join(f"{value:.0f} s of {name}" for name, value in seconds.items())


def seconds_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def paired_cell(value: Any) -> str:
    if value is None:
        return "-"
    mean, low, high = (float(v) for v in value)
    return f"{mean:+.3f} [{low:.3f}, {high:.3f}]"


def profile_gains_text(candidate: Mapping[str, Any]) -> str | None:
    """The candidate's paired gain per player profile (``paired_gain_of_profile`` rows) in one line,
    e.g. ``curious +0.337 [-0.182, 0.857], impatient -0.250 [...]``; None without such rows."""
    parts = [
        f"{profile} {paired_cell(value)}" for label, value in candidate.items() if (profile := profile_of_row(label))
    ]
    return ", ".join(parts) or None
