"""``npcrl train``: play logs + bundle -> PPO -> HF checkpoint -> exported bundle + report.

Output directory layout::

    OUT/run.json            arguments and config of the run (a resume must match them, or raise only
                            ppo.iterations to extend it), finished_iterations once checkpoint/ is written,
                            with the run's wall time and its split by phase (time_s, phases_s)
    OUT/state/ckpt-NNNNNN/  resumable checkpoints (the newest ``run.keep_checkpoints``)
    OUT/report/             metrics.jsonl, turn_credit.jsonl, training.png, samples.json, off_policy.json,
                            data.json, report.md
    OUT/checkpoint/         the trained model as an HF directory (safetensors) + value_head.safetensors
    OUT/bundle/             the exported bundle (unless run.export_quant = "none")

Under torchrun every rank trains; rank 0 alone writes files. The run's record is
``run_record``; its end (evaluation, checkpoint, export, report) is ``finish``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

import npcrl.train.checkpoint as ckpt
from npcrl.agent.persona import Persona, cards_by_hash
from npcrl.durable import restore_set_aside
from npcrl.errors import TrainError
from npcrl.reward.spec import RewardSpec, default_reward_spec, load_reward_spec
from npcrl.runtime.bundle import Bundle, load_bundle
from npcrl.train.config import TrainConfig
from npcrl.train.contradiction_tokens import cut_data_to_contradiction
from npcrl.train.cpu_precision import agreed_precision, cpu_name, precision_warning
from npcrl.train.data import TrainingData, accepted_bundle_ids, load_training_data
from npcrl.train.distributed import Dist
from npcrl.train.finish import TrainedRun, TrainResult, finish, log
from npcrl.train.onpolicy import FreshRollouts, RewardScorer, logged_lines
from npcrl.train.phase_timer import PhaseTimer, format_summary
from npcrl.train.policy import build_policy, resolve_base_weights
from npcrl.train.ppo import PPOTrainer
from npcrl.train.report import METRICS_FILE, write_json, write_metrics
from npcrl.train.reward_baseline import apply_reward_baseline
from npcrl.train.reward_model import load_reward_model
from npcrl.train.run_record import check_out, resumed_record, write_run_record
from npcrl.train.shown_tokens import bundle_cutter, cut_data_to_shown
from npcrl.train.turn_credit import TURN_CREDIT_FILE

Scorer = tuple[RewardScorer, dict[str, Any]]


def _reward_spec(config: TrainConfig) -> RewardSpec:
    return load_reward_spec(config.data.reward_spec) if config.data.reward_spec else default_reward_spec()


def _load_data(
    logs: str | Path, bundle: Bundle, config: TrainConfig, personas: Iterable[Persona] = ()
) -> tuple[TrainingData, list[str]]:
    """(the training turns and holdout, the bundle's tokenizer lineage); ``personas``: a game's own
    cards, besides the shipped ones."""
    spec = _reward_spec(config)
    accepted, lineage = accepted_bundle_ids(bundle, config.data.extra_bundles)
    with_rejected = config.data.mode == "logged" and config.data.penalize_card_contradictions
    data = load_training_data(
        logs, spec, accepted, bundle.manifest.vocab_size, config.data, config.seed, with_rejected=with_rejected
    )
    if config.data.train_tokens == "shown":
        cut_data_to_shown(data, bundle)
    if config.data.rejected_tokens == "to_contradiction":
        cut_data_to_contradiction(data, bundle, personas)
    if config.data.mode == "logged":
        data.train, summary = apply_reward_baseline(
            data.train, config.data.reward_baseline, config.data.baseline_prior_turns
        )
        data.report.reward_baseline = dataclasses.asdict(summary)
    return data, lineage


def _load_scorer(config: TrainConfig, bundle: Bundle, scorer: Scorer | None) -> Scorer | None:
    """The reward model, loaded up front in both modes so a bad path fails before any training: in
    the on-policy mode it gives the rewards, in the logged mode it only judges the report's samples."""
    if scorer is None and config.reward_model.path:
        scorer = load_reward_model(config.reward_model.path, bundle)
        learned_on = scorer[1].get("config", {}).get("data", {}).get("train_tokens", "sampled")
        if config.data.mode == "reward_model" and learned_on != config.data.train_tokens:
            raise TrainError(
                f"{config.reward_model.path}: the reward model learned from lines with data.train_tokens = "
                f"{learned_on!r}, but this run has {config.data.train_tokens!r}: it would score lines of a kind "
                "it never saw; train it again with this config"
            )
    if config.data.mode == "reward_model" and scorer is None:
        raise TrainError(
            "reward_model.path = None: on-policy training needs a reward model directory "
            "(reward_model.retrain_each_round is read by npcrl loop only)"
        )
    return scorer


def _new_run_record(
    out: Path,
    logs: str | Path,
    bundle: Bundle,
    base: Path,
    config: TrainConfig,
    scorer: Scorer | None,
    dist: Dist,
    cards: Mapping[str, Persona] | None,
) -> dict[str, Any]:
    """What ``run.json`` records of a run started now in ``out`` (a resume must match it, except
    ``precision``, what ``model.precision`` resolves to on these CPUs, which a resume keeps)."""
    return {
        "precision": agreed_precision(config.model.precision, dist),
        "persona_cards": sorted(cards) if cards is not None else None,
        "out": str(out),
        "logs": str(Path(logs).expanduser().resolve()),
        "bundle": str(bundle.root.resolve()),
        "bundle_id": bundle.bundle_id,
        "base_weights": str(base.resolve()),
        "config": config.to_dict(),
        "reward_model": scorer[1]["tensors_sha256"] if scorer else None,
        "world_size": dist.world,
    }


def _open_out(out: Path, resume: bool, run_record: dict[str, Any], dist: Dist, config: TrainConfig) -> dict[str, Any]:
    """Check the output directory on every rank, then (rank 0) record the run; the record it goes on under."""
    if resume:
        restore_set_aside(out / "checkpoint")  # a run killed while replacing it
    extends, previous = check_out(out, resume, run_record)
    run_record = resumed_record(run_record, extends, previous)
    dist.barrier()  # every rank has checked before rank 0 writes into the directory
    if dist.is_main:
        if extends:
            was = run_record["extended_from_iterations"][-1]
            log(f"extending the run from {was} to {config.ppo.iterations} iterations")
        if previous is None or extends:
            write_run_record(out, run_record)
    return run_record


def _build_trainer(
    base: Path,
    bundle: Bundle,
    config: TrainConfig,
    data: TrainingData,
    scorer: Scorer | None,
    dist: Dist,
    progress: bool,
    timer: PhaseTimer,
    precision: str,
    cards: Mapping[str, Persona] | None = None,
) -> PPOTrainer:
    """``precision``: what the body runs in ("fp32" or "bf16", the run's record's); ``cards``:
    persona hash -> the card fresh on-policy lines are checked against (None: no check)."""
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.seed)
    policy = build_policy(base, config.model, config.seed, precision)
    tokenizer = policy.tokenizer
    eos_ids = bundle.manifest.special_tokens.eos_token_ids
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    fresh = None
    if config.data.mode == "reward_model":
        assert scorer is not None  # checked by _load_scorer
        lines = logged_lines([*data.train, *data.holdout], tokenizer)
        penalty = _reward_spec(config).contradiction_reward
        cutter = bundle_cutter(bundle) if config.data.train_tokens == "shown" else None
        fresh = FreshRollouts(
            scorer[0], eos_ids, config, dist, lines, cards=cards, contradiction_reward=penalty, cutter=cutter
        )
    return PPOTrainer(policy, data.train, config, dist, pad_id, progress=progress, fresh=fresh, timer=timer)


def checked_cards(config: TrainConfig, personas: Iterable[Persona] = ()) -> dict[str, Persona] | None:
    """Persona hash -> card, for the on-policy check of fresh lines: the shipped cards and
    ``personas`` (a game's own, which the logs name by hash only); None where nothing is checked
    (the logged mode learns from the agent's own rejected samples, and the check may be off)."""
    if config.data.mode != "reward_model" or not config.data.penalize_card_contradictions:
        return None
    return cards_by_hash(personas)


def _resume(trainer: PPOTrainer, state_dir: Path, fingerprint: str, dist: Dist) -> None:
    """Continue from the newest checkpoint in ``state_dir``, if any, refusing changed logs."""
    ckpt.clean_staging(state_dir)
    found = ckpt.list_checkpoints(state_dir)
    if not found:
        restore_reference_states(trainer, state_dir)  # a run killed before its first checkpoint kept nothing
        return
    trainable, optimizer, state = ckpt.load_checkpoint(found[-1])
    if state.get("data_fingerprint") != fingerprint:
        raise TrainError(f"{found[-1]}: the play logs changed since this run started; start a new run in another --out")
    trainer.restore(trainable, optimizer, state, str(found[-1]))
    dropped = restore_reference_states(trainer, state_dir)
    if dist.is_main:
        log(f"resumed from {found[-1].name} ({trainer.iteration}/{trainer.total_iterations} iterations)")
        for line in dropped:
            log(f"warning: {line}")


def restore_reference_states(trainer: PPOTrainer, state_dir: Path) -> list[str]:
    """The kept reference states (``reference_cache``) up to the iteration resumed from; the lines
    saying which damaged files were dropped."""
    if trainer.reference is None:
        return []
    width = trainer.policy.module.value_head.in_features  # the hidden size
    shapes = {i: (len(turn.response_ids), width) for i, turn in enumerate(trainer.turns)}
    return trainer.reference.restore(state_dir, trainer.iteration, shapes)


def _iterate(trainer: PPOTrainer, config: TrainConfig, out: Path, fingerprint: str, bar: Any) -> None:
    """Run the remaining iterations; rank 0 writes the metrics and a checkpoint every
    ``run.checkpoint_every`` iterations and after the last, and closes ``bar`` after them."""
    is_main = trainer.dist.is_main
    while not trainer.finished():
        record = trainer.run_iteration()
        if not is_main:
            continue
        last = trainer.finished()
        with trainer.timer.phase("checkpoint"):
            if trainer.iteration % config.run.checkpoint_every == 0 or last:
                if trainer.reference is not None:  # first: a resume from this checkpoint reads them
                    trainer.reference.save(out / "state", trainer.iteration)
                state = {**trainer.loop_state(), "data_fingerprint": fingerprint}
                ckpt.save_checkpoint(
                    out / "state",
                    trainer.iteration,
                    trainer.trainable_state(),
                    trainer.optimizer,
                    state,
                    config.run.keep_checkpoints,
                )
        # The iteration's record carries its checkpoint time too (its copy in the checkpoint cannot).
        record["phases_s"].update(checkpoint=trainer.timer.take_iteration()["checkpoint"])
        write_metrics(out / "report" / METRICS_FILE, trainer.metrics)
        write_metrics(out / "report" / TURN_CREDIT_FILE, trainer.turn_credit)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl_per_turn']:.3f}")
        else:
            log(
                f"iteration {record['iteration']}/{trainer.total_iterations}: reward {record['reward_mean']:.3f} "
                f"kl {record['kl_per_turn']:.4f} clip {record['clip_frac']:.3f} {record['time_s']:.1f}s"
            )
    if bar is not None:
        bar.close()
    if is_main and trainer.kl_stop_reached():
        ppo = config.ppo
        read, passes = trainer.turns_read()
        unread = len(trainer.turns) - read
        log(
            f"stopped after {trainer.iteration} of at most {trainer.total_iterations} iterations: KL to the"
            f" reference reached ppo.kl_stop = {ppo.kl_stop} nats per turn (mean of the last {ppo.kl_stop_window});"
            f" {passes:.2f} passes over the {len(trainer.turns)} training turns"
            + (f", {unread} of them never read" if unread else "")
        )


def _start_report(
    trainer: PPOTrainer, config: TrainConfig, data: TrainingData, out: Path, progress: bool, resolved_now: str
) -> Any:
    """Rank 0: the report directory with data.json, a line on what trains; the progress bar or None.
    ``resolved_now``: what ``model.precision`` resolves to on these CPUs, which a resumed run may not
    train in (it keeps the precision it started in)."""
    (out / "report").mkdir(parents=True, exist_ok=True)
    write_json(out / "report" / "data.json", data.report.to_dict())
    source = "logged responses" if trainer.fresh is None else "fresh samples scored by the reward model"
    parameters = sum(p.numel() for _, p in trainer.policy.trainable_parameters()) / 1e6
    until = "" if config.ppo.kl_stop is None else f", stopping once KL per turn reaches {config.ppo.kl_stop}"
    rollout = f"{trainer.config.ppo.rollout_turns} turns"
    if trainer.batch_scale > 1:
        rollout += (
            f" ({trainer.batch_scale} x ppo.rollout_turns, minibatches of {trainer.config.ppo.minibatch_turns},"
            f" so that a pass takes at most {config.ppo.max_iterations_per_pass} iterations)"
        )
    precision = trainer.policy.module.precision
    started_in = ", as the run started" if precision != resolved_now else ""
    log(
        f"{config.model.mode} training of {parameters:.2f}M parameters in {precision}"
        f" (model.precision = {config.model.precision!r}{started_in}, CPU {cpu_name()}), {trainer.total_iterations}"
        f" iterations of {rollout} ({source}){until}"
    )
    warning = precision_warning(config.model.precision, precision)
    if warning is not None:
        log(f"warning: {warning}")
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=trainer.total_iterations, initial=trainer.iteration, desc="ppo", dynamic_ncols=True)


def train(
    logs: str | Path,
    bundle_dir: str | Path,
    out: str | Path,
    config: TrainConfig,
    base_model: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    scorer: Scorer | None = None,
    personas: Iterable[Persona] = (),
) -> TrainResult | None:
    """Run the whole pipeline; returns None on ranks other than 0. ``personas``: the game's own cards,
    known besides the shipped ones to the on-policy card check and ``data.rejected_tokens``.
    ``scorer``: a reward scorer (``predict_sequences(prompts, responses, batch)``, as ``RewardModel``)
    and its record (at least ``tensors_sha256``), used instead of loading ``config.reward_model.path``:
    benchmarks plug scorers that are not a saved predictor in here."""
    started = time.perf_counter()
    timer = PhaseTimer()
    dist = Dist.from_environment()
    out = Path(out).expanduser().resolve()
    personas = tuple(personas)  # read twice below
    with timer.phase("setup"):
        bundle = load_bundle(bundle_dir)
        base = resolve_base_weights(bundle, base_model)
        data, lineage = _load_data(logs, bundle, config, personas)
        scorer = _load_scorer(config, bundle, scorer)
        cards = checked_cards(config, personas)
        fresh = _new_run_record(out, logs, bundle, base, config, scorer, dist, cards)
        run_record = _open_out(out, resume, fresh, dist, config)
        precision = run_record["precision"]  # what the run started in
        if dist.is_main:
            log(data.report.summary())
        dist.barrier()
        trainer = _build_trainer(base, bundle, config, data, scorer, dist, progress, timer, precision, cards)
        fingerprint = data.fingerprint()
        if resume:
            _resume(trainer, out / "state", fingerprint, dist)
        bar = _start_report(trainer, config, data, out, progress, fresh["precision"]) if dist.is_main else None
    _iterate(trainer, config, out, fingerprint, bar)
    dist.barrier()
    if not dist.is_main:
        dist.close()
        return None
    run = TrainedRun(
        out=out,
        bundle=bundle,
        base=base,
        config=config,
        data=data,
        lineage=lineage,
        policy=trainer.policy,
        trainer=trainer,
        pad_id=trainer.pad_id,
        started=started,
        judge=scorer,
    )
    result = finish(run)
    _record_time(out, {**run_record, "finished_iterations": trainer.iteration}, timer, started)
    dist.close()
    return result


def _record_time(out: Path, run_record: dict[str, Any], timer: PhaseTimer, started: float) -> None:
    """Write the run's wall time by phase into ``run.json`` and print it. This process's own time:
    a resumed run's since its resume."""
    wall_s = time.perf_counter() - started
    phases = timer.summary(wall_s)
    write_run_record(out, {**run_record, "time_s": wall_s, "phases_s": phases})
    log(format_summary(phases, wall_s))
