"""The end of a training run (rank 0): evaluate the trained policy on the holdout logs, write the
HF checkpoint, export the bundle and write the report.

A model with a NaN weight is refused before any of it: it is not evaluated, saved or exported.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npcrl.runtime.bundle import Bundle
from npcrl.train.checkpoint import write_final_checkpoint
from npcrl.train.config import TrainConfig
from npcrl.train.data import TrainingData
from npcrl.train.evaluate import evaluate_holdout, sample_lines
from npcrl.train.finite import require_finite_tensors
from npcrl.train.onpolicy import RewardScorer
from npcrl.train.policy import Policy
from npcrl.train.ppo import PPOTrainer
from npcrl.train.report import PLOT_FILE, plot_metrics, write_json, write_markdown


def log(message: str) -> None:
    print(f"[npcrl train] {message}", flush=True)


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    bundle: Path | None
    report: Path
    metrics: list[dict[str, Any]]
    data: TrainingData
    off_policy: dict[str, Any]


@dataclass
class TrainedRun:
    """Everything the end of a run reads: what it trained from, and the trained policy."""

    out: Path
    bundle: Bundle
    base: Path
    config: TrainConfig
    data: TrainingData
    lineage: list[str]
    """the tokenizer lineage the exported bundle records (the parent first)"""
    policy: Policy
    trainer: PPOTrainer
    pad_id: int
    started: float
    """``time.perf_counter()`` when the run started"""
    judge: tuple[RewardScorer, dict[str, Any]] | None = None
    """the reward model (and its record) that scores the report's samples"""

    @property
    def report_dir(self) -> Path:
        return self.out / "report"


@dataclass
class Evaluation:
    off_policy: dict[str, Any]
    samples: dict[str, Any]
    reward_model: dict[str, Any] | None


def evaluate_run(run: TrainedRun) -> Evaluation:
    """The off-policy estimate on the holdout logs and sample lines before and after training."""
    log("evaluating on holdout logs")
    config, timer = run.config, run.trainer.timer
    with timer.phase("off_policy"):
        off_policy = evaluate_holdout(run.policy, run.data.holdout, run.pad_id, config.run.ope_log_weight_clip)
    samples: dict[str, Any] = {"before": [], "after": []}
    if config.run.sample_prompts:
        for name, reference in (("before", True), ("after", False)):
            with timer.phase("samples"):
                samples[name] = sample_lines(
                    run.policy,
                    run.data.holdout or run.data.train,
                    config.run.sample_prompts,
                    config.run.sample_tokens,
                    config.seed,
                    reference,
                    run.judge[0] if run.judge is not None else None,
                )
    return Evaluation(off_policy, samples, reward_model_summary(config, run.judge, samples))


def reward_model_summary(
    config: TrainConfig, judge: tuple[RewardScorer, dict[str, Any]] | None, samples: dict[str, Any]
) -> dict[str, Any] | None:
    """Which reward model was used and how it scores the report's samples before and after training."""
    if judge is None:
        return None
    _, record = judge
    out: dict[str, Any] = {
        "path": config.reward_model.path,
        "role": "reward" if config.data.mode == "reward_model" else "judge of the report samples",
        "tensors_sha256": record["tensors_sha256"],
        "holdout_metrics": record.get("metrics", {}).get("holdout"),
    }
    for name in ("before", "after"):
        scores = [s["reward_model_score"] for s in samples.get(name, []) if "reward_model_score" in s]
        out[f"sample_score_mean_{name}"] = sum(scores) / len(scores) if scores else None
    return out


def provenance(run: TrainedRun, evaluation: Evaluation) -> dict[str, Any]:
    """What the exported bundle records about how it was trained."""
    config, data, trainer = run.config, run.data, run.trainer
    turns_read, passes_run = trainer.turns_read()
    out = {
        "trainer": "npcrl offline PPO" if config.data.mode == "logged" else "npcrl on-policy PPO (reward model)",
        "parent_bundle": run.bundle.bundle_id,
        "base_weights": str(run.base),
        "tokenizer_lineage": run.lineage,
        "logs": {"dir": data.report.log_dir, "files": data.report.log_files},
        "data": {k: v for k, v in data.report.to_dict().items() if k not in ("log_files",)},
        "config": config.to_dict(),
        "precision": trainer.policy.module.precision,
        "iterations": trainer.iteration,
        "most_iterations": trainer.total_iterations,
        "kl_stop_reached": trainer.kl_stop_reached(),
        "rollout_turns": trainer.config.ppo.rollout_turns,
        "minibatch_turns": trainer.config.ppo.minibatch_turns,
        "batch_scale": trainer.batch_scale,
        "turns_read": turns_read,
        "passes_run": round(passes_run, 3),
        "final_metrics": trainer.metrics[-1] if trainer.metrics else {},
        "off_policy": evaluation.off_policy,
    }
    if evaluation.reward_model is not None:
        out["reward_model"] = evaluation.reward_model
    return out


def export(run: TrainedRun, checkpoint: Path, recorded: dict[str, Any]) -> tuple[Path | None, str | None]:
    """(the exported bundle, its id), or (None, None) with ``run.export_quant = "none"``."""
    quant = run.config.run.export_quant
    if quant == "none":
        return None, None
    from exporters.export import export_bundle  # the exporter pulls in ONNX tooling only this step needs

    log(f"exporting {quant} bundle")
    bundle_dir = run.out / "bundle"
    exported = export_bundle(
        checkpoint,
        bundle_dir,
        quant=quant,
        parent=run.bundle.bundle_id,
        provenance=recorded,
        graph=run.config.run.export_graph,
        overwrite=True,  # a bundle/ left by a run killed mid-export is ours to replace
        # "../checkpoint": the next round trains from these weights wherever the run is moved to
        recorded_source=os.path.relpath(checkpoint, bundle_dir),
    )
    return exported.root, exported.bundle_id


def write_summary(run: TrainedRun, evaluation: Evaluation, bundle_path: Path | None, bundle_id: str | None) -> None:
    """The plots and ``report.md``."""
    metrics = run.trainer.metrics
    if metrics:
        plot_metrics(metrics, run.report_dir / PLOT_FILE)
    elapsed = time.perf_counter() - run.started
    summary = {
        "parent_bundle": run.bundle.bundle_id,
        "base_weights": str(run.base),
        "bundle": str(bundle_path) if bundle_path else None,
        "bundle_id": bundle_id,
        "data_summary": run.data.report.summary(),
        "time_s": elapsed,
        "phases_s": run.trainer.timer.summary(elapsed),
        "metrics": metrics,
        "off_policy": evaluation.off_policy,
        "samples": evaluation.samples,
        "mode": run.config.data.mode,
        "reward_model": evaluation.reward_model,
    }
    write_markdown(run.report_dir / "report.md", summary)


def finish(run: TrainedRun) -> TrainResult:
    """Rank 0: evaluate, write the HF checkpoint, export the bundle, write the report."""
    # Before the report files too: a model with a NaN weight is not evaluated, saved or exported.
    require_finite_tensors(run.policy.module.named_parameters(), f"{run.out}: nothing written", "parameters")
    evaluation = evaluate_run(run)
    timer = run.trainer.timer
    with timer.phase("report"):
        write_json(run.report_dir / "off_policy.json", evaluation.off_policy)
        write_json(run.report_dir / "samples.json", evaluation.samples, ensure_ascii=False)
    checkpoint = run.out / "checkpoint"
    with timer.phase("final_checkpoint"):
        write_final_checkpoint(run.policy, checkpoint)  # an extended run replaces its shorter self's
    recorded = provenance(run, evaluation)
    with timer.phase("export"):
        bundle_path, bundle_id = export(run, checkpoint, recorded)
    with timer.phase("report"):
        write_json(run.report_dir / "provenance.json", recorded)
        write_summary(run, evaluation, bundle_path, bundle_id)
    log(f"done: {checkpoint}" + (f", bundle {bundle_path} ({bundle_id})" if bundle_path else ""))
    return TrainResult(
        out=run.out,
        checkpoint=checkpoint,
        bundle=bundle_path,
        report=run.report_dir,
        metrics=run.trainer.metrics,
        data=run.data,
        off_policy=evaluation.off_policy,
    )
