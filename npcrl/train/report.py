"""The training report: metrics as JSONL, PNG plots, sample lines and a Markdown summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"
# (metric key, panel title): the monitors DESIGN.md asks every report to carry.
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


def write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    """Rewrite the whole file (a resumed run replaces lines past its checkpoint)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics), encoding="utf-8")
    os.replace(tmp, path)


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


def write_markdown(path: Path, summary: dict[str, Any]) -> None:
    lines = ["# Training report", ""]
    lines += [f"- parent bundle: `{summary['parent_bundle']}`", f"- base weights: `{summary['base_weights']}`"]
    if summary.get("bundle"):
        lines.append(f"- new bundle: `{summary['bundle']}` (id `{summary.get('bundle_id')}`)")
    lines += [f"- data: {summary['data_summary']}", f"- time: {summary['time_s']:.1f} s"]
    if summary.get("mode") == "reward_model":
        lines.append("- mode: on-policy PPO, fresh samples scored by the reward model (rollout reward = its score)")
    lines.append("")
    judge = summary.get("reward_model")
    if judge:
        holdout = judge.get("holdout_metrics") or {}
        lines += [
            "## Reward model",
            "",
            f"- `{judge['path']}` ({judge['role']}); held-out Pearson {_fmt(holdout.get('pearson'))}, "
            f"MSE skill {_fmt(holdout.get('mse_skill'))}",
            f"- mean predicted reward of the samples below: before {_fmt(judge['sample_score_mean_before'])}, "
            f"after {_fmt(judge['sample_score_mean_after'])}",
            "",
        ]
    metrics = summary["metrics"]
    if metrics:
        first, last = metrics[0], metrics[-1]
        lines += ["## Monitors (first → last iteration)", "", "| metric | first | last |", "|---|---|---|"]
        for key, title in PANELS:
            lines.append(f"| {title} | {_fmt(first.get(key))} | {_fmt(last.get(key))} |")
        lines += ["", f"![training curves]({PLOT_FILE})", ""]
    ope = summary.get("off_policy")
    if ope and "trained" in ope:
        lines += [
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
        lines += ["", "The reference row is a control: it estimates the logging policy itself.", ""]
    samples = summary.get("samples") or {}
    if samples.get("before"):
        lines += ["## Samples (same prompts and seeds)", ""]
        for before, after in zip(samples["before"], samples["after"], strict=True):
            lines += [
                f"**{before['npc_id']}**, conversation `{before['conversation_id']}` turn {before['turn_index']}",
                "",
                f"- logged (reward {_fmt(before['logged_reward'])}): {before['logged']!r}",
                f"- before{_judged(before)}: {before['text']!r}",
                f"- after{_judged(after)}: {after['text']!r}",
                "",
            ]
    path.write_text("\n".join(lines), encoding="utf-8")
