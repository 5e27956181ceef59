"""``npcrl train``: play logs + bundle -> PPO -> HF checkpoint -> exported bundle + report.

Output directory layout::

    OUT/run.json            arguments and config of the run (a resume must match them, or raise only
                            ppo.iterations to extend it), finished_iterations once checkpoint/ is written
    OUT/state/ckpt-NNNNNN/  resumable checkpoints (the newest ``run.keep_checkpoints``)
    OUT/report/             metrics.jsonl, training.png, samples.json, off_policy.json, data.json, report.md
    OUT/checkpoint/         the trained model as an HF directory (safetensors) + value_head.safetensors
    OUT/bundle/             the exported bundle (unless run.export_quant = "none")

Under torchrun every rank trains; rank 0 alone writes files.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npcrl.errors import BundleError, TrainConfigError, TrainError
from npcrl.reward.spec import default_reward_spec, load_reward_spec
from npcrl.runtime.bundle import Bundle, load_bundle
from npcrl.train.config import TrainConfig
from npcrl.train.data import TrainingData, load_training_data

if TYPE_CHECKING:
    from npcrl.train.onpolicy import RewardScorer

RUN_FILE = "run.json"


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    bundle: Path | None
    report: Path
    metrics: list[dict[str, Any]]
    data: TrainingData
    off_policy: dict[str, Any]


def _log(message: str) -> None:
    print(f"[npcrl train] {message}", flush=True)


def tokenizer_sha256(bundle: Bundle) -> str:
    return str(bundle.manifest.files[bundle.manifest.tokenizer_file]["sha256"])


def accepted_bundle_ids(bundle: Bundle, extra_bundles: list[str]) -> tuple[set[str], list[str]]:
    """Bundle ids whose logged token ids mean what the training bundle's tokenizer says.

    The bundle itself, the ancestors recorded in its provenance (trained bundles keep their
    parent's tokenizer), and any extra bundle whose tokenizer file has the same hash.
    """
    lineage = [str(i) for i in bundle.manifest.provenance.get("tokenizer_lineage", [])]
    accepted = {bundle.bundle_id, *lineage}
    mine = tokenizer_sha256(bundle)
    for path in extra_bundles:
        try:
            other = load_bundle(path, verify=False)
        except BundleError as exc:
            raise TrainError(f"data.extra_bundles: {exc}") from exc
        if tokenizer_sha256(other) != mine:
            raise TrainError(f"data.extra_bundles: {path} has a different tokenizer than {bundle.root}")
        accepted.add(other.bundle_id)
    return accepted, [bundle.bundle_id, *lineage]


def _iterations(config: dict[str, Any]) -> Any:
    return config.get("ppo", {}).get("iterations")


def _without_iterations(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "ppo": {k: v for k, v in config.get("ppo", {}).items() if k != "iterations"}}


def _check_out(out: Path, resume: bool, run_record: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """Refuse an output directory that is in use (every rank checks, so all of them stop together).

    Returns (extends, the recorded run.json or None when not resuming); extends is True when the
    resume extends the run: the config differs from the recorded one only by a larger
    ``ppo.iterations``. Sampling seeds depend on the iteration number and nothing is scheduled by
    the total, so an extended run ends where an uninterrupted longer one would."""
    record_path = out / RUN_FILE
    if not resume:
        if out.exists() and any(out.iterdir()):
            hint = " (pass --resume to continue it)" if record_path.is_file() else ""
            raise TrainError(f"{out}: output directory is not empty{hint}")
        return False, None
    if not record_path.is_file():
        raise TrainError(f"{out}: nothing to resume ({RUN_FILE} is missing)")
    previous = json.loads(record_path.read_text(encoding="utf-8"))
    for key in ("logs", "bundle", "base_weights", "reward_model"):
        if previous.get(key) != run_record.get(key):
            raise TrainError(
                f"{out}/{RUN_FILE}: the run was started with a different {key} "
                f"({previous.get(key)!r}, now {run_record.get(key)!r}); resume with the same arguments"
            )
    # Read the recorded config back through the parser, so keys added since it was written take
    # their defaults instead of counting as a change.
    try:
        before = TrainConfig.from_dict(previous.get("config", {}), where=f"{out}/{RUN_FILE}").to_dict()
    except TrainConfigError as exc:
        raise TrainError(f"{out}/{RUN_FILE}: the recorded config no longer parses ({exc})") from exc
    now = run_record["config"]
    extends = False
    if before != now:
        was, will = _iterations(before), _iterations(now)
        raised = isinstance(was, int) and isinstance(will, int) and will > was
        if not raised or _without_iterations(before) != _without_iterations(now):
            raise TrainError(
                f"{out}/{RUN_FILE}: the run was started with a different config; resume with the same "
                "config, or change only ppo.iterations (raised) to extend it"
            )
        extends = True
    if (out / "checkpoint").exists() and not extends:
        # checkpoint/ is the result of a run of ``finished_iterations``; an extension that was killed
        # before it wrote its own still has iterations to go.
        done, will = previous.get("finished_iterations"), _iterations(now)
        if not (isinstance(done, int) and isinstance(will, int) and will > done):
            raise TrainError(
                f"{out}: this run already finished (checkpoint/ exists); raise ppo.iterations to extend it"
            )
    return extends, previous


def finished_bundle(out: Path) -> Path | None:
    """The exported bundle of a run in ``out`` that finished, or None (unfinished, or not exported)."""
    record_path = out / RUN_FILE
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    finished = "finished_iterations" in record and (out / "bundle").is_dir()
    return out / "bundle" if finished else None


def _write_run_record(out: Path, run_record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = (out / RUN_FILE).with_suffix(".tmp")
    tmp.write_text(json.dumps(run_record, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, out / RUN_FILE)


def train(
    logs: str | Path,
    bundle_dir: str | Path,
    out: str | Path,
    config: TrainConfig,
    base_model: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    scorer: tuple[RewardScorer, dict[str, Any]] | None = None,
) -> TrainResult | None:
    """Run the whole pipeline; returns None on ranks other than 0.

    ``scorer`` is an already built reward scorer and its record, used instead of loading
    ``config.reward_model.path``: an object with ``predict_sequences(prompts, responses, batch)``
    (as ``RewardModel``) and a dict with at least ``tensors_sha256`` (what identifies it in the run
    record). Benchmarks plug scorers that are not a saved predictor in here."""
    import torch

    from npcrl.train import checkpoint as ckpt
    from npcrl.train.distributed import Dist
    from npcrl.train.onpolicy import FreshRollouts, logged_lines
    from npcrl.train.policy import build_policy, resolve_base_weights
    from npcrl.train.ppo import PPOTrainer
    from npcrl.train.report import METRICS_FILE, write_metrics
    from npcrl.train.reward_model import load_reward_model

    started = time.perf_counter()
    dist = Dist.from_environment()
    out = Path(out).expanduser().resolve()
    bundle = load_bundle(bundle_dir)
    base = resolve_base_weights(bundle, base_model)
    spec = load_reward_spec(config.data.reward_spec) if config.data.reward_spec else default_reward_spec()
    accepted, lineage = accepted_bundle_ids(bundle, config.data.extra_bundles)
    data = load_training_data(logs, spec, accepted, bundle.manifest.vocab_size, config.data, config.seed)
    # Loaded up front in both modes, so a bad path fails before any training: in the on-policy mode it
    # gives the rewards, in the logged mode it only judges the report's samples.
    reward_model: RewardScorer | None
    reward_record: dict[str, Any] | None
    if scorer is not None:
        reward_model, reward_record = scorer
    else:
        reward_model, reward_record = (
            load_reward_model(config.reward_model.path, bundle) if config.reward_model.path else (None, None)
        )
    if config.data.mode == "reward_model" and reward_model is None:
        raise TrainError(
            "reward_model.path = None: on-policy training needs a reward model directory "
            "(reward_model.retrain_each_round is read by npcrl loop only)"
        )
    run_record: dict[str, Any] = {
        "logs": str(Path(logs).expanduser().resolve()),
        "bundle": str(bundle.root.resolve()),
        "bundle_id": bundle.bundle_id,
        "base_weights": str(base.resolve()),
        "config": config.to_dict(),
        "reward_model": reward_record["tensors_sha256"] if reward_record else None,
        "world_size": dist.world,
    }
    if resume:
        ckpt.restore_retired(out / "checkpoint")  # a run killed while replacing it
    extends, previous = _check_out(out, resume, run_record)
    if extends:
        assert previous is not None
        history = [*previous.get("extended_from_iterations", []), _iterations(previous["config"])]
        run_record = {**run_record, "extended_from_iterations": history}
        if "finished_iterations" in previous:  # checkpoint/ stays the shorter run's until this one ends
            run_record["finished_iterations"] = previous["finished_iterations"]
    elif previous is not None:
        run_record = previous  # a plain resume goes on under the record it was started with
    dist.barrier()  # every rank has checked before rank 0 writes into the directory
    if dist.is_main:
        if extends:
            _log(
                f"extending the run from {run_record['extended_from_iterations'][-1]} to {config.ppo.iterations} iterations"
            )
        if previous is None or extends:
            _write_run_record(out, run_record)
        _log(data.report.summary())
    dist.barrier()

    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.seed)
    policy = build_policy(base, config.model, config.seed)
    tokenizer = policy.tokenizer
    pad_id = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else bundle.manifest.special_tokens.eos_token_ids[0]
    )
    fresh = None
    if config.data.mode == "reward_model":
        assert reward_model is not None  # checked above
        fresh = FreshRollouts(
            reward_model,
            bundle.manifest.special_tokens.eos_token_ids,
            config,
            dist,
            logged_lines([*data.train, *data.holdout], tokenizer),
        )
    trainer = PPOTrainer(policy, data.train, config, dist, pad_id, progress=progress, fresh=fresh)
    fingerprint = data.fingerprint()
    state_dir, report_dir = out / "state", out / "report"
    if resume:
        ckpt.clean_staging(state_dir)
        found = ckpt.list_checkpoints(state_dir)
        if found:
            trainable, optimizer, state = ckpt.load_checkpoint(found[-1])
            if state.get("data_fingerprint") != fingerprint:
                raise TrainError(
                    f"{found[-1]}: the play logs changed since this run started; start a new run in another --out"
                )
            trainer.restore(trainable, optimizer, state, str(found[-1]))
            if dist.is_main:
                _log(f"resumed from {found[-1].name} ({trainer.iteration}/{trainer.total_iterations} iterations)")
    if dist.is_main:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "data.json").write_text(json.dumps(data.report.to_dict(), indent=1), encoding="utf-8")
        source = "logged responses" if fresh is None else "fresh samples scored by the reward model"
        _log(
            f"{config.model.mode} training of {sum(p.numel() for _, p in policy.trainable_parameters()) / 1e6:.2f}M "
            f"parameters, {trainer.total_iterations} iterations of {config.ppo.rollout_turns} turns ({source})"
        )

    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=trainer.total_iterations, initial=trainer.iteration, desc="ppo", dynamic_ncols=True)
    while trainer.iteration < trainer.total_iterations:
        record = trainer.run_iteration()
        if not dist.is_main:
            continue
        write_metrics(report_dir / METRICS_FILE, trainer.metrics)
        last = trainer.iteration == trainer.total_iterations
        if trainer.iteration % config.run.checkpoint_every == 0 or last:
            state = {**trainer.loop_state(), "data_fingerprint": fingerprint}
            ckpt.save_checkpoint(
                state_dir,
                trainer.iteration,
                trainer.trainable_state(),
                trainer.optimizer,
                state,
                config.run.keep_checkpoints,
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl_per_turn']:.3f}")
        else:
            _log(
                f"iteration {record['iteration']}/{trainer.total_iterations}: reward {record['reward_mean']:.3f} "
                f"kl {record['kl_per_turn']:.4f} clip {record['clip_frac']:.3f} {record['time_s']:.1f}s"
            )
    if bar is not None:
        bar.close()
    dist.barrier()
    if not dist.is_main:
        dist.close()
        return None
    judge = (reward_model, reward_record) if reward_model is not None and reward_record is not None else None
    result = _finish(out, bundle, base, policy, trainer, data, config, lineage, pad_id, started, judge)
    _write_run_record(out, {**run_record, "finished_iterations": trainer.iteration})
    dist.close()
    return result


def _finish(
    out: Path,
    bundle: Bundle,
    base: Path,
    policy: Any,
    trainer: Any,
    data: TrainingData,
    config: TrainConfig,
    lineage: list[str],
    pad_id: int,
    started: float,
    judge: tuple[Any, dict[str, Any]] | None = None,
) -> TrainResult:
    """Rank 0: evaluate, write the HF checkpoint, export the bundle, write the report."""
    from npcrl.train.checkpoint import write_final_checkpoint
    from npcrl.train.evaluate import evaluate_holdout, sample_lines
    from npcrl.train.finite import require_finite_tensors
    from npcrl.train.report import PLOT_FILE, plot_metrics, write_markdown

    # Before the report files too: a model with a NaN weight is not evaluated, saved or exported.
    require_finite_tensors(policy.module.named_parameters(), f"{out}: nothing written", "parameters")
    report_dir = out / "report"
    _log("evaluating on holdout logs")
    off_policy = evaluate_holdout(policy, data.holdout, pad_id, config.run.ope_log_weight_clip)
    samples: dict[str, Any] = {"before": [], "after": []}
    if config.run.sample_prompts:
        for name, reference in (("before", True), ("after", False)):
            samples[name] = sample_lines(
                policy,
                data.holdout or data.train,
                config.run.sample_prompts,
                config.run.sample_tokens,
                config.seed,
                reference,
                judge[0] if judge is not None else None,
            )
    reward_model_summary = _reward_model_summary(config, judge, samples)
    (report_dir / "off_policy.json").write_text(json.dumps(off_policy, indent=1), encoding="utf-8")
    (report_dir / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False), encoding="utf-8")

    checkpoint = out / "checkpoint"
    write_final_checkpoint(policy, checkpoint)  # an extended run replaces its shorter self's

    last = trainer.metrics[-1] if trainer.metrics else {}
    provenance = {
        "trainer": "npcrl offline PPO" if config.data.mode == "logged" else "npcrl on-policy PPO (reward model)",
        "parent_bundle": bundle.bundle_id,
        "base_weights": str(base),
        "tokenizer_lineage": lineage,
        "logs": {"dir": data.report.log_dir, "files": data.report.log_files},
        "data": {k: v for k, v in data.report.to_dict().items() if k not in ("log_files",)},
        "config": config.to_dict(),
        "iterations": trainer.iteration,
        "final_metrics": last,
        "off_policy": off_policy,
    }
    if reward_model_summary is not None:
        provenance["reward_model"] = reward_model_summary
    bundle_path: Path | None = None
    bundle_id = None
    if config.run.export_quant != "none":
        from exporters.export import export_bundle

        _log(f"exporting {config.run.export_quant} bundle")
        exported = export_bundle(
            checkpoint,
            out / "bundle",
            quant=config.run.export_quant,
            parent=bundle.bundle_id,
            provenance=provenance,
            graph=config.run.export_graph,
            overwrite=True,  # a bundle/ left by a run killed mid-export is ours to replace
        )
        bundle_path, bundle_id = exported.root, exported.bundle_id
    (report_dir / "provenance.json").write_text(json.dumps(provenance, indent=1), encoding="utf-8")
    if trainer.metrics:
        plot_metrics(trainer.metrics, report_dir / PLOT_FILE)
    summary = {
        "parent_bundle": bundle.bundle_id,
        "base_weights": str(base),
        "bundle": str(bundle_path) if bundle_path else None,
        "bundle_id": bundle_id,
        "data_summary": data.report.summary(),
        "time_s": time.perf_counter() - started,
        "metrics": trainer.metrics,
        "off_policy": off_policy,
        "samples": samples,
        "mode": config.data.mode,
        "reward_model": reward_model_summary,
    }
    write_markdown(report_dir / "report.md", summary)
    _log(f"done: {checkpoint}" + (f", bundle {bundle_path} ({bundle_id})" if bundle_path else ""))
    return TrainResult(
        out=out,
        checkpoint=checkpoint,
        bundle=bundle_path,
        report=report_dir,
        metrics=trainer.metrics,
        data=data,
        off_policy=off_policy,
    )


def _reward_model_summary(
    config: TrainConfig, judge: tuple[Any, dict[str, Any]] | None, samples: dict[str, Any]
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
