"""From play-log directories to training turns: read, score, filter, split by conversation.

Every turn that does not reach training is counted under the reason it was dropped, so a run's
report says exactly what the logs held. Pure Python and numpy (no torch).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npcrl.agent.consistency import RESAMPLED
from npcrl.errors import BundleError, LogFormatError, RewardSpecError, TrainDataError, TrainError
from npcrl.playlog import LogReader, NpcTurn, RecordIndex
from npcrl.playlog.reader import list_log_files
from npcrl.reward.engagement import ConversationLog, TurnReward, group_conversations, score_conversation
from npcrl.reward.spec import RewardSpec
from npcrl.runtime.bundle import Bundle, load_bundle, sha256_file
from npcrl.train.config import DataConfig
from npcrl.train.data_report import DataReport

_MAX_REPEATS = 20  # duplicates and conflicts listed in the report (all are counted)


@dataclass(frozen=True)
class TrainingTurn:
    """One NPC turn as the trainer sees it: one turn is one episode (its reward ends it)."""

    conversation_id: str
    turn_index: int
    npc_id: str
    bundle_id: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    behaviour_logprobs: tuple[float, ...]
    """mu: log-probs of the distribution each token was drawn from (after penalty and truncation)"""
    full_logprobs: tuple[float, ...]
    """the bundle's temperature-scaled full softmax, logged beside mu"""
    temperature: float
    sampler: dict[str, Any]
    reward: float
    persona_hash: str = ""
    """the persona card the NPC played (its conversation's start record); "" when not logged"""
    player_id: str = ""
    """the player's id as logged (a pseudonym unless raw ids were opted into); "" when not logged"""
    text: str = ""
    """the line the player was shown (``NpcTurn.text``); "" for a rejected sample, which logs no text"""
    rejected_sample: int = 0
    """0: the sample the player saw; k >= 1: the turn's k-th logged sample that the agent rejected
    for contradicting the persona card (``NpcTurn.rejected_samples``), rewarded with the spec's
    ``contradiction_reward``"""
    first_draw: bool = True
    """whether this sample is its turn's first draw from the logged policy: a shown line the agent did not
    draw again, or a turn's first rejected sample. First draws are unconditional samples of the logged
    policy, so the share of them that contradict the card estimates its contradiction rate
    (``npcrl.train.contradiction_multiplier``); a later draw was made only because an earlier one failed"""

    @property
    def key(self) -> str:
        base = f"{self.conversation_id}#{self.turn_index}"
        return f"{base}/rejected-{self.rejected_sample}" if self.rejected_sample else base


@dataclass
class TrainingData:
    train: list[TrainingTurn]
    holdout: list[TrainingTurn]
    report: DataReport

    def fingerprint(self) -> str:
        """Identifies the exact training set: a resumed run refuses logs that changed underneath it."""
        digest = hashlib.sha256()
        for turn in self.train:
            digest.update(f"{turn.key}:{len(turn.prompt_ids)}:{len(turn.response_ids)}:{turn.reward!r};".encode())
        return digest.hexdigest()


def _drop_reason(
    turn: NpcTurn,
    trainable: bool,
    accepted_bundles: set[str],
    vocab_size: int,
    config: DataConfig,
    with_rejected: bool,
) -> str | None:
    if not trainable:
        return "filtered_or_fallback"
    if (turn.filter_reason or "").startswith(RESAMPLED) and not (with_rejected and turn.rejected_samples):
        return "resampled"
    if turn.bundle_id not in accepted_bundles:
        return "other_tokenizer"
    return _sample_drop_reason(turn.prompt_ids, turn.__dict__, vocab_size, config)


def _sample_drop_reason(
    prompt_ids: Sequence[int], sample: dict[str, Any], vocab_size: int, config: DataConfig
) -> str | None:
    """Why one sample (a turn's fields, or one of its rejected samples) cannot be trained on."""
    temperature = float(sample["sampler"].get("temperature", 0.0) or 0.0)
    if temperature <= 0.0:
        return "greedy"
    response = sample["response_ids"]
    if len(response) < config.min_response_tokens:
        return "too_short"
    if len(prompt_ids) + len(response) > config.max_sequence_tokens or not prompt_ids:
        return "too_long" if prompt_ids else "invalid"
    if max([*prompt_ids, *response]) >= vocab_size:
        return "invalid"
    values = list(sample["logprobs"]) + list(sample["full_logprobs"])
    if not all(math.isfinite(v) and v <= 1e-6 for v in values):
        return "invalid"
    return None


def split_conversations(conversation_ids: list[str], holdout_fraction: float, seed: int) -> set[str]:
    """Holdout conversation ids: the first ceil(fraction * n) in a seeded hash order (stable as logs grow)."""
    if holdout_fraction <= 0 or len(conversation_ids) < 2:
        return set()
    ranked = sorted(conversation_ids, key=lambda cid: hashlib.sha256(f"{seed}:{cid}".encode()).hexdigest())
    count = min(len(ranked) - 1, max(1, math.ceil(holdout_fraction * len(ranked))))
    return set(ranked[:count])


def log_directories(log_dirs: str | Path | Sequence[str | Path]) -> list[Path]:
    """One play-log directory or several, as a list of paths."""
    return [Path(log_dirs)] if isinstance(log_dirs, (str, Path)) else [Path(d) for d in log_dirs]


def load_training_data(
    log_dirs: str | Path | Sequence[str | Path],
    spec: RewardSpec,
    accepted_bundles: set[str],
    vocab_size: int,
    config: DataConfig,
    seed: int,
    *,
    with_rejected: bool = False,
) -> TrainingData:
    """Read every ``*.npl`` file in ``log_dirs`` (one play-log directory, or several pooled) and
    return the usable turns split train/holdout.

    ``with_rejected``: also each turn's logged samples that contradicted the persona card, as
    training turns of their own rewarded with the spec's ``contradiction_reward``; a turn shown
    after such samples is then kept too. Every draw of the model for the turn is then in the data,
    which is what makes the set unbiased (docs/TRAINING.md); without them a resampled turn is dropped.

    Raises TrainDataError when a directory holds no log files, when two pooled directories hold
    the same conversation (their records would merge), or when no turn is usable, naming the counts.
    """
    dirs = log_directories(log_dirs)
    if not dirs:
        raise TrainDataError("no play-log directory to train on")
    report = DataReport(log_dir=", ".join(str(d) for d in dirs))
    conversations, conflicting = _read_conversations(dirs, report)
    report.conversations = len(conversations)
    usable: dict[str, list[TrainingTurn]] = {}
    for cid in sorted(conversations):
        start = conversations[cid].start
        persona = start.persona_hash if start is not None else ""
        player = start.player_id if start is not None else ""
        turns = _scored_turns(conversations[cid], spec, report)
        for turn, reward in turns:
            reason = "conflicting_records" if cid in conflicting else None
            shown_reason = reason or _drop_reason(
                turn, reward.trainable, accepted_bundles, vocab_size, config, with_rejected
            )
            if shown_reason is not None:
                report.dropped[shown_reason] += 1
            else:
                report.bundles[turn.bundle_id] = report.bundles.get(turn.bundle_id, 0) + 1
                usable.setdefault(cid, []).append(_training_turn(cid, turn, float(reward.reward), persona, player))
            if turn.bundle_id not in accepted_bundles:
                reason = reason or "other_tokenizer"
            if not with_rejected:
                reason = "not_used"
            rejected = _rejected_turns(
                turn, (persona, player), reason, spec.contradiction_reward, vocab_size, config, report
            )
            if rejected:
                usable.setdefault(cid, []).extend(rejected)
    if not usable:
        raise TrainDataError(f"{report.log_dir}: no usable training turns. {report.summary()}")
    return _split(usable, config.holdout_fraction, seed, report)


def _scored_turns(log: ConversationLog, spec: RewardSpec, report: DataReport) -> list[tuple[NpcTurn, TurnReward]]:
    """Each logged turn of a conversation with its reward, counted as logged; none when the
    conversation holds an event the spec cannot score."""
    report.turns_logged += len(log.turns)
    try:
        rewards = score_conversation(log, spec)
    except RewardSpecError:
        report.dropped["unscorable_events"] += len(log.turns)
        return []
    return [(log.turns[reward.turn_index], reward) for reward in rewards]


def _rejected_turns(
    turn: NpcTurn,
    card_and_player: tuple[str, str],
    unusable: str | None,
    reward: float,
    vocab_size: int,
    config: DataConfig,
    report: DataReport,
) -> list[TrainingTurn]:
    """The turn's rejected samples that can be trained on, each rewarded with ``reward``, marked with
    its conversation's (persona hash, player id) and counted in the report; ``unusable``: why none
    of them can be (a ``DROP_REASONS`` entry, or "not_used" when training leaves them out)."""
    out = []
    dropped = report.rejected_samples_dropped
    for k, sample in enumerate(turn.rejected_samples, start=1):
        report.rejected_samples_logged += 1
        why = unusable or _sample_drop_reason(turn.prompt_ids, sample, vocab_size, config)
        if why is not None:
            dropped[why] = dropped.get(why, 0) + 1
            continue
        out.append(
            TrainingTurn(
                conversation_id=turn.conversation_id,
                turn_index=turn.turn_index,
                npc_id=turn.npc_id,
                bundle_id=turn.bundle_id,
                prompt_ids=tuple(turn.prompt_ids),
                response_ids=tuple(sample["response_ids"]),
                behaviour_logprobs=tuple(sample["logprobs"]),
                full_logprobs=tuple(sample["full_logprobs"]),
                temperature=float(sample["sampler"]["temperature"]),
                sampler=dict(sample["sampler"]),
                reward=reward,
                persona_hash=card_and_player[0],
                player_id=card_and_player[1],
                rejected_sample=k,
                first_draw=k == 1,
            )
        )
    return out


def _training_turn(
    conversation_id: str, turn: NpcTurn, reward: float, persona_hash: str, player_id: str
) -> TrainingTurn:
    return TrainingTurn(
        conversation_id=conversation_id,
        turn_index=turn.turn_index,
        npc_id=turn.npc_id,
        bundle_id=turn.bundle_id,
        prompt_ids=tuple(turn.prompt_ids),
        response_ids=tuple(turn.response_ids),
        behaviour_logprobs=tuple(turn.logprobs),
        full_logprobs=tuple(turn.full_logprobs),
        temperature=float(turn.sampler["temperature"]),
        sampler=dict(turn.sampler),
        reward=reward,
        persona_hash=persona_hash,
        player_id=player_id,
        text=turn.text,
        first_draw=not turn.rejected_samples and not (turn.filter_reason or "").startswith(RESAMPLED),
    )


def _split(
    usable: dict[str, list[TrainingTurn]], holdout_fraction: float, seed: int, report: DataReport
) -> TrainingData:
    """The usable turns split train/holdout by conversation, with the report's split counts filled in."""
    holdout_ids = split_conversations(list(usable), holdout_fraction, seed)
    report.holdout_conversations = len(holdout_ids)
    report.train_conversations = len(usable) - len(holdout_ids)
    train = [t for cid in sorted(usable) if cid not in holdout_ids for t in usable[cid]]
    holdout = [t for cid in sorted(usable) if cid in holdout_ids for t in usable[cid]]
    shown = [t for t in train if not t.rejected_sample], [t for t in holdout if not t.rejected_sample]
    report.train_turns, report.holdout_turns = len(shown[0]), len(shown[1])
    report.train_rejected_samples = len(train) - len(shown[0])
    report.holdout_rejected_samples = len(holdout) - len(shown[1])
    # the means of the turns players saw: comparable with runs and logs without rejected samples
    report.train_reward_mean = _mean([t.reward for t in shown[0]])
    report.holdout_reward_mean = _mean([t.reward for t in shown[1]])
    return TrainingData(train=train, holdout=holdout, report=report)


def _read_conversations(dirs: list[Path], report: DataReport) -> tuple[dict[str, ConversationLog], set[str]]:
    """The conversations in ``dirs`` and the ids of those holding conflicting records; fills the
    report's file list and read counts. Each record counts once, across directories too."""
    conversations: dict[str, ConversationLog] = {}
    found_in: dict[str, Path] = {}
    conflicting: set[str] = set()
    index = RecordIndex()  # one for all directories: a file copied into two of them counts once
    for log_dir in dirs:
        try:
            files = list_log_files(log_dir)
        except LogFormatError as exc:
            raise TrainDataError(str(exc)) from exc
        if not files:
            raise TrainDataError(f"{log_dir}: no play-log files (*.npl) to train on")
        report.log_files += [
            {"name": p.name, "path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files
        ]
        reader = LogReader(log_dir, index=index)
        for cid, log in group_conversations(reader).items():
            if cid in found_in:
                raise TrainDataError(
                    f"{log_dir}: conversation {cid} is also in {found_in[cid]}; "
                    "pooled log directories must hold different conversations"
                )
            found_in[cid] = log_dir
            conversations[cid] = log
        stats = reader.stats
        report.records += stats.records
        report.corrupt_records_skipped += stats.corrupt_skipped
        report.invalid_records_skipped += stats.invalid_records
        report.corrupt_bytes += stats.corrupt_bytes
        report.torn_tail_bytes += stats.torn_tail_bytes
        report.unknown_record_kinds += stats.unknown_kinds
        report.duplicate_records += stats.duplicates
        report.conflicting_records += stats.conflicts
        report.repeats += [r.describe() for r in stats.repeats[: _MAX_REPEATS - len(report.repeats)]]
        conflicting |= stats.conflicting_conversations
    return conversations, conflicting


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def tokenizer_sha256(bundle: Bundle) -> str:
    """The hash of the bundle's tokenizer file: two bundles with the same one read the same token ids."""
    return str(bundle.manifest.files[bundle.manifest.tokenizer_file]["sha256"])


def accepted_bundle_ids(bundle: Bundle, extra_bundles: list[str]) -> tuple[set[str], list[str]]:
    """Bundle ids whose logged token ids mean what the training bundle's tokenizer says, and the
    bundle's tokenizer lineage (itself first, then its recorded ancestors).

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
