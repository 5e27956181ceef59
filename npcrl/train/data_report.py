"""What a training run's data stage found: every count of ``report/data.json`` (``DataReport``),
and the reasons a logged turn is not trained on (``DROP_REASONS``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Reasons a logged turn is not trained on, in the order they are checked.
DROP_REASONS = (
    "conflicting_records",  # its conversation holds two different records of one identity: which is true is unknown
    "unscorable_events",  # an event the reward spec cannot score (a value-scaled kind without a value)
    "filtered_or_fallback",  # the player saw a replacement line, not the model's (never trained on)
    "resampled",  # shown only after earlier samples contradicted the card, and those samples are not
    # trained on (an older log without them, or penalize_card_contradictions off): alone it is a draw *given* it
    # passed the check, whose probability the log does not hold, so its importance weight is unknown
    "other_tokenizer",  # logged by a bundle whose tokenizer is not the training bundle's
    "greedy",  # drawn greedily: the behaviour policy is a point mass, no importance weight exists
    "too_short",
    "too_long",
    "invalid",  # ids outside the vocabulary, non-finite log-probs
)


@dataclass
class DataReport:
    log_dir: str
    log_files: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    corrupt_records_skipped: int = 0
    invalid_records_skipped: int = 0
    """of corrupt_records_skipped: whole records refused on decode (a bad field, a non-finite number)"""
    corrupt_bytes: int = 0
    torn_tail_bytes: int = 0
    unknown_record_kinds: int = 0
    duplicate_records: int = 0
    """records read again (a copied or concatenated file), counted once"""
    conflicting_records: int = 0
    """records whose identity was read before with other content; their conversations are dropped"""
    repeats: list[str] = field(default_factory=list)
    """the first duplicates and conflicts, each with both places (file@offset)"""
    conversations: int = 0
    turns_logged: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    train_conversations: int = 0
    holdout_conversations: int = 0
    train_turns: int = 0
    holdout_turns: int = 0
    train_reward_mean: float | None = None
    holdout_reward_mean: float | None = None
    bundles: dict[str, int] = field(default_factory=dict)
    """usable turns per logging bundle id"""
    rejected_samples_logged: int = 0
    """samples the agent rejected for contradicting the persona card, logged beside their turns"""
    rejected_samples_dropped: dict[str, int] = field(default_factory=dict)
    """of those, the ones not trained on, per reason (``DROP_REASONS``; "not_used": training without them)"""
    train_rejected_samples: int = 0
    holdout_rejected_samples: int = 0
    shown_tokens: dict[str, Any] | None = None
    """with ``data.train_tokens = "shown"``: how the lines were cut to what their players saw (``ShownSummary``)"""
    rejected_tokens: dict[str, Any] | None = None
    """with ``data.rejected_tokens = "to_contradiction"``: how the rejected samples were ended at their
    first contradiction (``ContradictionCutSummary``)"""
    reward_baseline: dict[str, Any] | None = None
    """logged mode: what ``data.reward_baseline`` took out of the training rewards (``BaselineSummary``);
    the reward means above are the rewards as logged"""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v) or "none"
        return (
            (
                f"{self.log_dir}: {len(self.log_files)} files, {self.records} records "
                f"({self.corrupt_records_skipped} corrupt skipped, {self.torn_tail_bytes} torn-tail bytes); "
                f"{self.turns_logged} turns logged, dropped: {dropped}; "
                f"train {self.train_turns} turns / {self.train_conversations} conversations, "
                f"holdout {self.holdout_turns} / {self.holdout_conversations}"
            )
            + self._rejected_summary()
            + self._repeat_warning()
        )

    def _rejected_summary(self) -> str:
        if not self.rejected_samples_logged:
            return ""
        used = self.train_rejected_samples + self.holdout_rejected_samples
        return (
            f"; {self.rejected_samples_logged} rejected (card-contradicting) samples logged, {used} trained on as "
            f"contradictions (train {self.train_rejected_samples}, holdout {self.holdout_rejected_samples})"
        )

    def _repeat_warning(self) -> str:
        if not (self.duplicate_records or self.conflicting_records):
            return ""
        first = f" (first: {self.repeats[0]})" if self.repeats else ""
        return (
            f"\nwarning: {self.duplicate_records} duplicate record(s) counted once, {self.conflicting_records}"
            f" conflicting record(s) skipped, their conversations dropped{first}"
        )
