"""The stages of one loop round that make something: simulated play, the reward model, the trained
candidate and the evaluation logs.

Each runs only when ``round-N/stages.json`` does not record it finished (``RoundStages``), so a
resumed round goes on from its last finished stage. Simulation and evaluation are seeded per
conversation: a cut-off one keeps the conversations it finished and plays the rest, which are the
conversations an uninterrupted stage would have played.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npcrl.durable import set_aside
from npcrl.loop.settings import PROBE_SEED_OFFSET, LoopSettings
from npcrl.loop.state import RoundStages, placed_path, recorded_path

if TYPE_CHECKING:
    from npcrl.evaluation.run import EvalSettings
    from npcrl.playlog import PlayLogWriter
    from npcrl.reward.spec import RewardSpec
    from npcrl.runtime.model import OnnxCausalLM

Gain = tuple[float, float, float]


@dataclass(frozen=True)
class LoopInputs:
    """What every round of a run reads: its settings, its directory, and what they load once."""

    settings: LoopSettings
    out: Path
    spec: RewardSpec
    """the reward spec that scores the evaluation logs"""
    base_model: OnnxCausalLM
    """the base bundle, loaded: every evaluation's KL reference"""

    def round_dir(self, number: int) -> Path:
        return self.out / f"round-{number}"


def simulate_stage(inputs: LoopInputs, stages: RoundStages, model: OnnxCausalLM, number: int) -> None:
    """Round ``number``'s training data: the current bundle plays simulated players."""
    from npcrl.playlog import PlayLogWriter
    from npcrl.sim.simulate import simulate

    settings, logs = inputs.settings, stages.folder / "logs"
    if not stages.start("simulate", output=logs):
        return
    seed = simulation_seed(settings, number)
    with PlayLogWriter(logs) as writer:
        first = kept_conversations(stages, "simulate", writer, model.bundle_id, seed, settings.conversations)
        simulate(
            model,
            settings.personas,
            settings.players,
            writer,
            settings.conversations,
            seed,
            agent_config=settings.agent_config(),
            system_prompts=settings.system_prompts,
            concurrency=settings.concurrency,
            first=first,
        )
    stages.finish("simulate")


def simulation_seed(settings: LoopSettings, number: int) -> int:
    """The seed of round ``number``'s simulated play (each round plays new conversations)."""
    return settings.seed + number


def kept_conversations(
    stages: RoundStages, name: str, writer: PlayLogWriter, bundle_id: str, seed: int, limit: int
) -> int:
    """The conversations a cut-off attempt of stage ``name`` finished, copied into ``writer`` so
    that they are not played again; how many (0 when the stage was not cut off)."""
    from npcrl.sim.resume import keep_finished

    cut_off = stages.cut_off_output(name)
    if cut_off is None:
        return 0
    kept = keep_finished(cut_off, writer, bundle_id, seed, limit)
    print(f"[npcrl loop] {stages.folder.name}: {name} keeps the {kept} conversations it had finished", flush=True)
    return kept


def train_stage(inputs: LoopInputs, stages: RoundStages, current: Path, number: int) -> Path:
    """The round's candidate bundle, trained from ``current`` on the round's logs (after a reward
    model of its own, when the training config asks for one each round)."""
    config = inputs.settings.train_config
    if config.data.mode == "reward_model" and config.reward_model.retrain_each_round:
        reward_model = reward_model_stage(inputs, stages, current, number)
        config = replace(config, reward_model=replace(config.reward_model, path=str(reward_model)))
    # a cut-off training run resumes from its checkpoint (train_or_resume), so its output stays
    if stages.start("train_and_export", output=stages.folder / "train", resumes_output=True):
        trained = train_or_resume(
            stages.folder / "logs", current, stages.folder / "train", config, inputs.settings.personas
        )
        stages.finish("train_and_export", recorded_path(trained, stages.folder))
    return placed_path(stages.result("train_and_export"), stages.folder)


def reward_model_stage(inputs: LoopInputs, stages: RoundStages, current: Path, number: int) -> Path:
    """A reward model trained on this round's logs (and, with ``pool_rounds``, every earlier round's)."""
    from npcrl.train.reward_model_train import train_reward_model

    config, output = inputs.settings.train_config, stages.folder / "reward-model"
    if stages.start("reward_model", output=output):
        # Earlier rounds' logs come from this bundle or its ancestors, so their turns are accepted.
        pooled = range(1, number + 1) if config.reward_model.pool_rounds else [number]
        logs = [inputs.round_dir(k) / "logs" for k in pooled]
        train_reward_model(logs, current, output, config, progress=False)
        stages.finish("reward_model")
    return output


def train_or_resume(logs: Path, current: Path, train_dir: Path, config: Any, personas: Sequence[Any] = ()) -> Path:
    """Train the round's candidate; a run a stop interrupted goes on from its last checkpoint.
    ``personas``: the cards the round's NPCs played (the on-policy card check knows them)."""
    from npcrl.train.run import train
    from npcrl.train.run_record import RUN_FILE, finished_bundle

    if (train_dir / RUN_FILE).is_file():
        finished = finished_bundle(train_dir)
        if finished is not None:
            return finished  # the stop came after training, before the stage was recorded
        trained = train(logs, current, train_dir, config, progress=False, resume=True, personas=personas)
    else:
        set_aside(train_dir)
        trained = train(logs, current, train_dir, config, progress=False, personas=personas)
    assert trained is not None and trained.bundle is not None  # the loop exports every round
    return trained.bundle


def evaluate_stage(
    inputs: LoopInputs, stages: RoundStages, name: str, model: OnnxCausalLM, eval_settings: EvalSettings
) -> dict[str, Any]:
    """Stage ``name``: ``model`` plays the players of ``eval_settings`` into ``round-N/<dir>/<side>``
    (``evaluate_current`` -> ``eval/current``, ``confirm_candidate`` -> ``confirm/candidate``); its rows."""
    from npcrl.evaluation.run import evaluate_bundle

    if stages.start(name, output=stage_logs(stages.folder, name)):
        settings = inputs.settings
        cut_off = stages.cut_off_output(name)
        if cut_off is not None:
            print(
                f"[npcrl loop] {stages.folder.name}: {name} keeps the conversations finished in {cut_off}", flush=True
            )
        rows = evaluate_bundle(
            model,
            stage_logs(stages.folder, name),
            settings.personas,
            settings.players,
            inputs.spec,
            eval_settings,
            inputs.base_model,
            settings.system_prompts,
            resume_from=cut_off,
        )
        stages.finish(name, rows)
    return dict(stages.result(name))


def probe_stage(inputs: LoopInputs, stages: RoundStages, name: str, model: OnnxCausalLM) -> dict[str, Any]:
    """Stage ``name`` (``probe_current``, ``probe_candidate``): ``model`` answers the persona probe
    (``npcrl.evaluation.persona_probe``, ``guards.persona_probe_lines`` lines per persona); its rows.
    The probe logs nothing, so a cut-off probe plays again from its start."""
    from npcrl.evaluation.persona_probe import probe_personas

    if stages.start(name):
        settings = inputs.settings
        probe = probe_personas(
            model,
            settings.personas,
            settings.agent_config(),
            settings.guards.persona_probe_lines,
            seed=settings.seed + PROBE_SEED_OFFSET,
            concurrency=settings.concurrency,
            system_prompts=settings.system_prompts,
        )
        stages.finish(name, probe.rows())
    return dict(stages.result(name))


def stage_logs(folder: Path, name: str) -> Path:
    """Where an evaluation stage's play logs go: ``evaluate_X`` -> ``eval/X``, ``confirm_X`` -> ``confirm/X``."""
    kind, side = name.split("_", 1)
    return folder / ("eval" if kind == "evaluate" else kind) / side


def paired_gain_or_nan(candidate_logs: Path, current_logs: Path, spec: RewardSpec, seed: int) -> Gain:
    """The paired gain (mean, 95% CI) of the candidate's conversations over the current bundle's."""
    from npcrl.evaluation.metrics import paired_gain_of_logs

    try:
        return paired_gain_of_logs(candidate_logs, current_logs, spec, seed=seed)
    except ValueError:  # a conversation without NPC turns on one side: no pairing (never significant)
        return (math.nan, math.nan, math.nan)


def contradiction_rise_or_nan(candidate_logs: Path, current_logs: Path, personas: Sequence[Any]) -> Gain:
    """The paired rise of the play's card-contradiction share (``CARD_CONTRADICTIONS_RISE``); NaN
    where the evaluations do not pair, or hold no line of a known card."""
    from npcrl.evaluation.contradictions import paired_contradiction_rise_of_logs

    try:
        return paired_contradiction_rise_of_logs(candidate_logs, current_logs, personas)
    except ValueError:
        return (math.nan, math.nan, math.nan)


def pooled_gain_or_nan(
    pairs: Sequence[tuple[Path, Path]], spec: RewardSpec, seed: int
) -> tuple[float, float, Gain, int]:
    """The candidate's and the current bundle's mean reward per conversation over the (candidate
    logs, current logs) ``pairs`` pooled, the paired gain over all their pairs, and how many pairs."""
    from npcrl.evaluation.metrics import paired_gain, pooled_rewards_of_logs

    try:
        candidate, current = pooled_rewards_of_logs(pairs, spec)
        if not candidate:
            raise ValueError("no conversation with an NPC turn")
        gain = paired_gain(candidate, current, seed=seed)
    except ValueError:  # as paired_gain_or_nan: sets that do not pair are never a win
        return math.nan, math.nan, (math.nan, math.nan, math.nan), 0
    return math.fsum(candidate) / len(candidate), math.fsum(current) / len(current), gain, len(candidate)
