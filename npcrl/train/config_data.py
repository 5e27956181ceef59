"""The ``[data]`` section of the training config: which logged turns become training data, and how.

Kept apart from ``config`` to keep each module short; ``TrainConfig`` there holds it, and
``from npcrl.train.config import DataConfig`` still works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npcrl.train.config_ranges import check as _check
from npcrl.train.config_ranges import check_fields as _check_fields
from npcrl.train.config_ranges import check_path as _check_path

DATA_MODES = ("logged", "reward_model")
BASELINE_GROUPS = ("none", "player", "conversation")
TRAIN_TOKENS = ("sampled", "shown")
REJECTED_TOKENS = ("sampled", "to_contradiction")


@dataclass
class DataConfig:
    """Which logged turns become training data."""

    reward_spec: str | None = None
    """reward spec TOML (see npcrl.reward.spec); None = the built-in default spec"""
    holdout_fraction: float = 0.1
    """share of conversations kept out of training for the off-policy estimate and samples"""
    max_sequence_tokens: int = 1024
    """turns whose prompt + response is longer are dropped (counted): the agent's prompt budget is 1024"""
    min_response_tokens: int = 1
    """turns with fewer response tokens are dropped (an empty line carries no policy gradient)"""
    extra_bundles: list[str] = field(default_factory=list)
    """more bundle directories whose logged turns share the training bundle's tokenizer (checked by hash)"""
    mode: str = "logged"
    """'logged' (offline PPO on the logged responses and their rewards) or 'reward_model' (on-policy PPO:
    the current policy answers the logged prompts and the reward model at reward_model.path scores it)"""
    penalize_card_contradictions: bool = True
    """lines that contradict the persona card get the reward spec's contradiction_reward. Logged mode: the
    samples the agent rejected for it (logged with their turn) are trained on, and so the turn shown
    after them; reward_model mode: a fresh line that contradicts its conversation's card (a shipped
    persona) is scored so instead of by the reward model. False: neither (logged mode then drops
    resampled turns, as for logs written before rejected samples were logged)"""

    reward_baseline: str = "none"
    """logged mode: 'player' judges each line's reward against the same player's other lines, 'conversation'
    against its conversation's other lines, 'none' against all lines alike (npcrl.train.reward_baseline)"""
    baseline_prior_turns: float = 8.0
    """turns' worth of the shared mean each baseline starts from: a player with few turns keeps most of it"""
    train_tokens: str = "sampled"
    """'shown': each logged line ends at the last token of what its player was shown, where its reward lands
    (npcrl.train.shown_tokens); 'sampled': every sampled token, the unseen tail after the shown line too"""
    rejected_tokens: str = "sampled"
    """logged mode: 'to_contradiction' ends each rejected sample at the word where it first contradicts its card,
    so the penalty lands there and not on the words after it (npcrl.train.contradiction_tokens); 'sampled':
    the whole sample (or what the agent would have shown of it, with train_tokens = 'shown')"""

    def validate(self) -> None:
        _check_fields(self, "data.")
        _check(self.mode in DATA_MODES, "data.mode", self.mode, "'logged' or 'reward_model'")
        baseline = self.reward_baseline
        _check(baseline in BASELINE_GROUPS, "data.reward_baseline", baseline, "'none', 'player' or 'conversation'")
        _check(
            baseline == "none" or self.mode == "logged", "data.reward_baseline", baseline, "'none' in reward_model mode"
        )
        _check(self.train_tokens in TRAIN_TOKENS, "data.train_tokens", self.train_tokens, "'sampled' or 'shown'")
        rejected = self.rejected_tokens
        _check(rejected in REJECTED_TOKENS, "data.rejected_tokens", rejected, "'sampled' or 'to_contradiction'")
        _check(
            rejected == "sampled" or (self.mode == "logged" and self.penalize_card_contradictions),
            "data.rejected_tokens",
            rejected,
            "'sampled' in reward_model mode or without penalize_card_contradictions (no rejected samples to cut)",
        )
        _check_path("data.reward_spec", self.reward_spec)
        _check(isinstance(self.extra_bundles, list), "data.extra_bundles", self.extra_bundles, "a list of paths")
        for bundle in self.extra_bundles:
            _check_path("data.extra_bundles[]", bundle)
