"""What players did with a bundle's lines, and what those lines looked like, from play logs alone.

``log_metrics`` reads a play-log directory, scores every turn with a ``RewardSpec`` (the same
scoring the trainer uses, ``npcrl.reward.engagement``) and summarises engagement and line quality. The
pieces (``distinct_n``, ``repetition_flags``, ``bootstrap_ci``, ...) are pure functions, so each
number in an evaluation report can be checked by hand.

The engagement confidence interval resamples **conversations**, not turns: turns of one
conversation share a player, a mood and a persona, and the reward spec's discount spreads one event
over several earlier turns, so turn rewards within a conversation are correlated. Resampling turns
would treat them as independent and give an interval that is too narrow; conversations are the
independent units the game produces.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import npcrl.evaluation.metric_names as names
from npcrl.agent.persona import Persona, builtin_personas
from npcrl.errors import LogFormatError
from npcrl.evaluation.contradictions import card_contradiction_rate
from npcrl.evaluation.shares import require_one_set_of_players
from npcrl.playlog import NpcTurn, read_log_dir
from npcrl.reward.engagement import ConversationLog, group_conversations, score_conversation
from npcrl.reward.spec import RewardSpec

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
REPETITION_N = 3
REPETITION_THRESHOLD = 0.5
"""a line repeats when more than this share of its 3-grams occurred in earlier lines"""
# Letters and digits, with inner apostrophes kept ("it'll", "don't"): punctuation is not a word.
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
# Bound on the (resamples x conversations) index matrix drawn at once, so memory stays small.
_BOOTSTRAP_CHUNK_CELLS = 4_000_000


def word_tokens(text: str) -> list[str]:
    """Lowercase word tokens of a line: runs of letters/digits (any script), inner apostrophes kept,
    punctuation dropped. The unit of line length in words, distinct-n and repetition."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The contiguous n-grams of one line, in order, with repeats (none if the line is shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(lines: Sequence[Sequence[str]], n: int) -> float:
    """Unique n-grams / total n-grams over all lines (n-grams never span two lines).

    1.0 means no n-gram was ever reused; a model that says the same things over and over drifts
    toward 0. NaN when the lines hold no n-gram at all (undefined, not perfect)."""
    total = 0
    unique: set[tuple[str, ...]] = set()
    for line in lines:
        grams = ngrams(line, n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else math.nan


def repeated_share(line: Sequence[str], earlier: Sequence[Sequence[str]], n: int = REPETITION_N) -> float:
    """Share of ``line``'s n-grams (counted with multiplicity) that occur in the ``earlier`` lines;
    for a line too short to hold an n-gram, 1.0 when an earlier line has exactly its words (0.0 when
    empty). ``repetition_flags`` marks a line whose share is above the threshold."""
    seen = {gram for e in earlier for gram in ngrams(e, n)}
    return _share(tuple(line), ngrams(line, n), seen, {tuple(e) for e in earlier})


def _share(
    words: tuple[str, ...], grams: list[tuple[str, ...]], seen: set[tuple[str, ...]], earlier: set[tuple[str, ...]]
) -> float:
    """``repeated_share`` given the earlier lines' n-grams and word tuples (``repetition_flags`` keeps them
    as it goes, so a conversation is read once)."""
    if not grams:
        return float(bool(words) and words in earlier)
    return sum(gram in seen for gram in grams) / len(grams)


def repetition_flags(
    lines: Sequence[Sequence[str]], n: int = REPETITION_N, threshold: float = REPETITION_THRESHOLD
) -> list[bool]:
    """For each line of one conversation (in order): does it mostly repeat what came before?

    A line repeats when more than ``threshold`` of its n-grams (counted with multiplicity) occur in
    earlier lines of the conversation. A line too short to hold an n-gram repeats when an earlier
    line has exactly the same words; an empty line never repeats."""
    seen: set[tuple[str, ...]] = set()
    earlier: set[tuple[str, ...]] = set()
    flags = []
    for line in lines:
        words, grams = tuple(line), ngrams(line, n)
        share = _share(words, grams, seen, earlier)
        flags.append(share > threshold if grams else share == 1.0)
        seen.update(grams)
        earlier.add(words)
    return flags


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample ``values`` with replacement
    ``resamples`` times (numpy ``default_rng(seed)``, so a report is reproducible) and take the
    central ``confidence`` share of the resampled means."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D sequence of values, got shape {data.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    n = data.size
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        index = rng.integers(0, n, size=(stop - start, n))  # (resamples in this chunk, n)
        means[start:stop] = data[index].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


@dataclass(frozen=True)
class LogMetrics:
    """Engagement and line statistics of the conversations in a play-log directory.

    Only conversations with at least one logged NPC turn count. Reward sums include filtered and
    fallback turns (their reward is capped at 0 by the spec: the player saw a canned line). The line
    statistics (length, distinct-n, repetition) cover only lines the model produced and the player
    saw, i.e. turns neither filtered nor answered with a fallback: canned lines say nothing about
    the model's language."""

    conversations: int
    """conversations with at least one NPC turn"""
    turns: int
    """NPC turns in those conversations"""
    reward_per_conversation: float
    """mean over conversations of the sum of its turn rewards (the engagement a conversation earned)"""
    reward_per_conversation_ci: tuple[float, float]
    """95% percentile-bootstrap interval of that mean, conversations resampled (see the module doc)"""
    reward_per_turn: float
    """mean turn reward over all NPC turns, filtered and fallback turns included"""
    conversation_length: float
    """mean NPC turns per conversation"""
    walk_away_rate: float
    """share of conversations with at least one ``walk_away`` event"""
    filtered_rate: float
    """share of NPC turns that were filtered or answered with a fallback line"""
    model_lines: int
    """turns whose shown line the model produced (the lines the statistics below describe)"""
    words_per_line: float
    """mean word tokens per model line (NaN without model lines)"""
    tokens_per_line: float
    """mean generated tokens per model line, as logged in ``response_ids`` (EOS included when hit)"""
    distinct_1: float
    """unique words / words over all model lines (NaN when there are none)"""
    distinct_2: float
    """unique word bigrams / bigrams over all model lines (bigrams never span two lines)"""
    repetition_rate: float
    """share of model lines more than half of whose word 3-grams occurred in earlier model lines of
    the same conversation (lines under 3 words: an exact repeat of an earlier line)"""
    card_contradiction_rate: float = math.nan
    """share of NPC turns whose model sample contradicted the persona card: a shown model line
    ``card_contradictions`` flags, or a turn the agent logged as resampled or replaced for a
    contradiction (so the number is the model's, whether the agent resampled or not); other fallback
    and filtered turns count as not contradicting. Only conversations whose card is known (by the
    persona hash of their start record) count; NaN when there are none"""

    def as_dict(self) -> dict[str, float | tuple[float, float, float]]:
        """The metrics as report rows: label -> number, or (mean, low, high) for the engagement interval."""
        low, high = self.reward_per_conversation_ci
        return {
            names.CONVERSATIONS: float(self.conversations),
            names.NPC_TURNS: float(self.turns),
            names.ENGAGEMENT: (self.reward_per_conversation, low, high),
            names.REWARD_PER_TURN: self.reward_per_turn,
            names.CONVERSATION_LENGTH: self.conversation_length,
            names.WALK_AWAY_RATE: self.walk_away_rate,
            names.FILTERED_RATE: self.filtered_rate,
            names.WORDS_PER_LINE: self.words_per_line,
            names.TOKENS_PER_LINE: self.tokens_per_line,
            names.DISTINCT_1: self.distinct_1,
            names.DISTINCT_2: self.distinct_2,
            names.REPETITION_RATE: self.repetition_rate,
            names.CARD_CONTRADICTIONS: self.card_contradiction_rate,
        }

    def to_json(self) -> dict[str, object]:
        """Plain JSON-ready values (the CI as a two-item list)."""
        data: dict[str, object] = asdict(self)
        data["reward_per_conversation_ci"] = list(self.reward_per_conversation_ci)
        return data


def _is_model_line(turn: NpcTurn) -> bool:
    return not (turn.filtered or turn.fallback)


def conversation_metrics(
    conversations: Sequence[ConversationLog],
    spec: RewardSpec,
    seed: int = 0,
    where: str = "play logs",
    personas: Sequence[Persona] | None = None,
) -> LogMetrics:
    """``LogMetrics`` of already grouped conversations (those without NPC turns are skipped);
    ``where`` names the source in the error raised when no NPC turn is left. ``personas``: the
    cards the NPCs played, for the contradiction share (default: the shipped ones)."""
    kept = [log for log in conversations if log.turns]
    if not kept:
        raise LogFormatError(f"{where}: no conversation with a logged NPC turn; nothing to evaluate")
    rewards_per_conversation: list[float] = []
    turn_rewards: list[float] = []
    walked_away = 0
    filtered = 0
    model_lines: list[list[str]] = []
    model_tokens: list[int] = []
    repeated: list[bool] = []
    for log in kept:
        scored = score_conversation(log, spec)
        rewards_per_conversation.append(math.fsum(r.reward for r in scored))
        turn_rewards.extend(r.reward for r in scored)
        walked_away += any(event.kind == "walk_away" for event in log.events)
        turns = [log.turns[i] for i in sorted(log.turns)]
        filtered += sum(not _is_model_line(t) for t in turns)
        lines = [word_tokens(t.text) for t in turns if _is_model_line(t)]
        model_lines.extend(lines)
        model_tokens.extend(len(t.response_ids) for t in turns if _is_model_line(t))
        repeated.extend(repetition_flags(lines))
    n_turns = len(turn_rewards)
    return LogMetrics(
        conversations=len(kept),
        turns=n_turns,
        reward_per_conversation=_mean(rewards_per_conversation),
        reward_per_conversation_ci=bootstrap_ci(rewards_per_conversation, seed=seed),
        reward_per_turn=_mean(turn_rewards),
        conversation_length=n_turns / len(kept),
        walk_away_rate=walked_away / len(kept),
        filtered_rate=filtered / n_turns,
        model_lines=len(model_lines),
        words_per_line=_mean([len(line) for line in model_lines]),
        tokens_per_line=_mean(model_tokens),
        distinct_1=distinct_n(model_lines, 1),
        distinct_2=distinct_n(model_lines, 2),
        repetition_rate=_mean([float(flag) for flag in repeated]),
        card_contradiction_rate=card_contradiction_rate(
            kept, list(builtin_personas().values()) if personas is None else personas
        ),
    )


def log_metrics(
    log_dir: str | os.PathLike[str],
    spec: RewardSpec,
    seed: int = 0,
    *,
    bundle_id: str | None = None,
    personas: Sequence[Persona] | None = None,
) -> LogMetrics:
    """Engagement and line metrics of every conversation in the play logs of ``log_dir``.

    ``seed`` seeds the bootstrap. ``bundle_id`` keeps only conversations whose NPC turns all come
    from that bundle (logs of an A/B test hold several). ``personas``: the cards played, for the
    contradiction share (default: the shipped ones). Corrupt records are skipped by the log
    reader; an empty selection is an error naming the directory."""
    conversations = list(group_conversations(read_log_dir(log_dir)).values())
    where = str(Path(log_dir))
    if bundle_id is not None:
        conversations = [
            log for log in conversations if log.turns and all(t.bundle_id == bundle_id for t in log.turns.values())
        ]
        where += f" (bundle {bundle_id})"
    return conversation_metrics(conversations, spec, seed=seed, where=where, personas=personas)


def conversation_rewards(log_dir: str | os.PathLike[str], spec: RewardSpec) -> list[float]:
    """Reward earned by each conversation with an NPC turn in ``log_dir``, in log order (which is
    conversation order for ``npcrl simulate`` logs, whatever its concurrency)."""
    return rewards_of_conversations(group_conversations(read_log_dir(log_dir)).values(), spec)


def rewards_of_conversations(conversations: Iterable[ConversationLog], spec: RewardSpec) -> list[float]:
    """``conversation_rewards`` of already grouped conversations: the reward each one with an NPC
    turn earned, in the given order."""
    return [math.fsum(r.reward for r in score_conversation(log, spec)) for log in conversations if log.turns]


def paired_gain_of_logs(
    candidate_logs: str | os.PathLike[str], current_logs: str | os.PathLike[str], spec: RewardSpec, *, seed: int = 0
) -> tuple[float, float, float]:
    """``paired_gain`` of two evaluation log directories played with the same players and seeds
    (conversation k of one is paired with conversation k of the other)."""
    return paired_gain(conversation_rewards(candidate_logs, spec), conversation_rewards(current_logs, spec), seed=seed)


def pooled_rewards_of_logs(
    pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]], spec: RewardSpec
) -> tuple[list[float], list[float]]:
    """The (candidate, current) conversation rewards of several evaluations pooled, each pair of log
    directories one set of players played by both bundles: the sets are joined in order, so
    conversation k of each set stays paired with its counterpart. A pair of unequal length is
    refused by name (its sides are not one set of players)."""
    candidate: list[float] = []
    current: list[float] = []
    for candidate_logs, current_logs in pairs:
        ours, theirs = conversation_rewards(candidate_logs, spec), conversation_rewards(current_logs, spec)
        require_one_set_of_players((candidate_logs, len(ours)), (current_logs, len(theirs)))
        candidate += ours
        current += theirs
    return candidate, current


def paired_gain(candidate: Sequence[float], current: Sequence[float], *, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the per-conversation reward difference candidate - current.

    Evaluation plays conversation k with the same player, profile and seeds for every bundle, so
    the two runs are paired: the bootstrap of the differences removes the spread between players
    that makes the two bundles' own intervals wide and overlapping."""
    if len(candidate) != len(current):
        raise ValueError(
            f"paired comparison needs the same conversations: {len(candidate)} vs {len(current)} "
            "(evaluate both bundles with the same --conversations and --seed)"
        )
    differences = np.asarray(candidate, dtype=np.float64) - np.asarray(current, dtype=np.float64)
    low, high = bootstrap_ci(differences, seed=seed)
    return float(differences.mean()), low, high
