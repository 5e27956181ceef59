"""The training report: metrics as JSONL, PNG plots, sample lines and a Markdown summary.

Every file is replaced whole (``npcrl.durable.atomic_write``): a run killed while writing its
report leaves the previous version of each file, never a torn one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npcrl.durable import atomic_write

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"
# (metric key, panel title): the monitors every report carries; reward, KL and clipping together
# show whether an update improved the reward while staying near the policy that wrote the logs.
PANELS = (
    ("reward_mean", "turn reward (rollout mean)"),
    ("kl_per_turn", "KL to reference (nats / turn)"),
    ("clip_frac", "clip fraction"),
    ("entropy", "entropy (nats / token)"),
    ("value_loss", "value loss"),
    ("response_length_mean", "response length (tokens)"),
    ("approx_kl", "approx-KL to pi_old"),
    ("is_weight_mean", "importance weight pi_old/mu (mean)"),
    ("kl_coef", "KL coefficient beta"),
)
# monitors of runs whose metrics hold them (rejected samples in the data: npcrl.train.contradiction_multiplier)
OPTIONAL_MONITORS = (
    ("contradiction_share_estimate", "estimated share of first draws contradicting the card"),
    ("contradiction_share_bound", "its upper bound (release_confidence)"),
    ("contradiction_share_target", "the logged policy's share"),
    ("contradiction_multiplier", "contradiction penalty multiplier"),
)


def write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    """Rewrite the whole file (a resumed run replaces lines past its checkpoint)."""
    atomic_write(path, "".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics))


def write_json(path: Path, value: Any, *, ensure_ascii: bool = True) -> None:
    """One report file as indented JSON (``ensure_ascii=False`` keeps sample lines readable)."""
    atomic_write(path, json.dumps(value, indent=1, ensure_ascii=ensure_ascii))


def plot_metrics(metrics: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: the trainer runs on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(12, 9), constrained_layout=True)
    steps = [m["iteration"] for m in metrics]
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        values = [m.get(key) for m in metrics]
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, linewidth=1.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _judged(sample: dict[str, Any]) -> str:
    score = sample.get("reward_model_score")
    return "" if score is None else f" (reward model {_fmt(score)})"


def _header(summary: dict[str, Any]) -> list[str]:
    lines = ["# Training report", ""]
    lines += [f"- parent bundle: `{summary['parent_bundle']}`", f"- base weights: `{summary['base_weights']}`"]
    if summary.get("bundle"):
        lines.append(f"- new bundle: `{summary['bundle']}` (id `{summary.get('bundle_id')}`)")
    lines += [f"- data: {summary['data_summary']}", f"- time: {summary['time_s']:.1f} s"]
    if summary.get("mode") == "reward_model":
        lines.append("- mode: on-policy PPO, fresh samples scored by the reward model (rollout reward = its score)")
    return [*lines, ""]


def _reward_model_section(judge: dict[str, Any] | None) -> list[str]:
    if not judge:
        return []
    holdout = judge.get("holdout_metrics") or {}
    return [
        "## Reward model",
        "",
        f"- `{judge['path']}` ({judge['role']}); held-out Pearson {_fmt(holdout.get('pearson'))}, "
        f"MSE skill {_fmt(holdout.get('mse_skill'))}",
        f"- mean predicted reward of the samples below: before {_fmt(judge['sample_score_mean_before'])}, "
        f"after {_fmt(judge['sample_score_mean_after'])}",
        "",
    ]


def _monitors_section(metrics: list[dict[str, Any]]) -> list[str]:
    if not metrics:
        return []
    first, last = metrics[0], metrics[-1]
    lines = ["## Monitors (first → last iteration)", "", "| metric | first | last |", "|---|---|---|"]
    for key, title in (*PANELS, *((k, t) for k, t in OPTIONAL_MONITORS if k in last)):
        lines.append(f"| {title} | {_fmt(first.get(key))} | {_fmt(last.get(key))} |")
    return [*lines, "", f"![training curves]({PLOT_FILE})", ""]


def _off_policy_section(ope: dict[str, Any] | None) -> list[str]:
    if not ope or "trained" not in ope:
        return []
    lines = [
        "## Off-policy estimate on holdout logs",
        "",
        "| policy | turns | logged mean | IS mean | self-normalised | ESS | zero-weight | trusted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("reference", "trained"):
        e = ope[name]
        lines.append(
            f"| {name} | {e['turns']} | {_fmt(e['logged_mean_reward'])} | {_fmt(e['importance_sampled'])} | "
            f"{_fmt(e['self_normalised'])} | {_fmt(e['effective_sample_size'])} | "
            f"{_fmt(e['zero_weight_fraction'])} | {e['trusted']} |"
        )
    return [*lines, "", "The reference row is a control: it estimates the logging policy itself.", ""]


def _samples_section(samples: dict[str, Any]) -> list[str]:
    if not samples.get("before"):
        return []
    lines = ["## Samples (same prompts and seeds)", ""]
    for before, after in zip(samples["before"], samples["after"], strict=True):
        lines += [
            f"**{before['npc_id']}**, conversation `{before['conversation_id']}` turn {before['turn_index']}",
            "",
            f"- logged (reward {_fmt(before['logged_reward'])}): {before['logged']!r}",
            f"- before{_judged(before)}: {before['text']!r}",
            f"- after{_judged(after)}: {after['text']!r}",
            "",
        ]
    return lines


def _phases_section(phases: dict[str, float] | None, wall_s: float) -> list[str]:
    """Where the run's time went up to this report (the phases of ``phase_timer.py``)."""
    if not phases:
        return []
    lines = ["## Where the time went", "", "| phase | seconds | share |", "|---|---|---|"]
    for name, seconds in sorted(phases.items(), key=lambda item: -item[1]):
        if seconds > 0:
            lines.append(f"| {name} | {seconds:.1f} | {100 * seconds / max(wall_s, 1e-9):.1f}% |")
    return [*lines, ""]


def write_markdown(path: Path, summary: dict[str, Any]) -> None:
    """``report.md``: what was trained from, the reward model, the monitors, the off-policy
    estimate, the sample lines and the time by phase, each section only when the run has it."""
    lines = [
        *_header(summary),
        *_reward_model_section(summary.get("reward_model")),
        *_monitors_section(summary["metrics"]),
        *_off_policy_section(summary.get("off_policy")),
        *_samples_section(summary.get("samples") or {}),
        *_phases_section(summary.get("phases_s"), summary["time_s"]),
    ]
    atomic_write(path, "\n".join(lines))
