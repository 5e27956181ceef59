"""How an NPC speaks: the agent's settings and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from npcrl.agent.player_text import check_storage_mode
from npcrl.runtime.sampler import SamplerConfig
from npcrl.validate import ConfigValueError, check_bool, check_number, check_optional

# Stop as soon as the model starts a new chat turn or speaks for the player.
DEFAULT_STOPS = ("<|im_start|>", "\nPlayer:", "\nTraveller:", "\nTraveler:", "\nUser:", "\nYou:")
BUILTIN_EVENTS = ("reply", "rating", "walk_away", "quest_accepted", "trade")
MAX_CONVERSATION_ID = 128
MAX_CONSISTENCY_RETRIES = 16


@dataclass(frozen=True)
class AgentConfig:
    """How an NPC speaks. Defaults are the settings that gave in-character lines on SmolLM2-135M."""

    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(
            temperature=0.7, top_p=0.9, repetition_penalty=1.1, max_new_tokens=60, stop_strings=DEFAULT_STOPS
        )
    )
    """sampling settings of every NPC turn (logged with each turn)"""
    prompt_token_budget: int = 1024
    """max prompt tokens: the persona is always kept, the oldest exchanges are dropped first"""
    history_drop_margin: int = 160
    """when a prompt outgrows ``prompt_token_budget``, the oldest exchanges are dropped until this many
    tokens are free (at most half the budget), so the next turns append to the conversation's cache
    instead of dropping one exchange, and prefilling everything after the persona again, each turn;
    0: drop as few as fit"""
    time_budget_s: float | None = 20.0
    """a turn still generating after this many seconds is cancelled and answered with a fallback;
    None: no limit (headless play, where a wall-clock limit makes results depend on machine load)"""
    max_line_chars: int = 280
    """length cap of a displayed NPC line"""
    max_player_chars: int = 300
    """player input is cut to this many characters"""
    reuse_persona_prefix: bool = True
    """start every turn from cached KV: the persona's system turn and user header (computed once per
    persona and bundle) and, within a conversation, everything up to the player's new line"""
    player_text_storage: str = "scrubbed"
    """what of the player's words the play log keeps: "scrubbed" (personal data masked), "none" (no
    player words at all) or "raw" (as typed); the model always sees them as typed (docs/PRIVACY.md)"""
    consistency_retries: int | None = 2
    """a line that contradicts the persona card (``npcrl.agent.consistency``: another name, trade or
    home) is sampled again at most this many times within the turn's time budget, and replaced by a
    fallback line when every sample contradicts; 0: replaced at once; None: lines are not checked"""

    def __post_init__(self) -> None:
        # ConfigValueError is a ValueError naming the field and value; upper bounds are far above use.
        if not isinstance(self.sampler, SamplerConfig):
            raise ConfigValueError("sampler", self.sampler, "a SamplerConfig")
        check_number("prompt_token_budget", self.prompt_token_budget, 2, 1 << 20, integer=True)
        if self.prompt_token_budget <= self.sampler.max_new_tokens:
            raise ValueError(
                f"prompt_token_budget={self.prompt_token_budget} must exceed sampler.max_new_tokens="
                f"{self.sampler.max_new_tokens}"
            )
        check_number("history_drop_margin", self.history_drop_margin, 0, 1 << 20, integer=True)
        check_optional("time_budget_s", self.time_budget_s, 0.0, 86_400.0, low_open=True)
        check_number("max_line_chars", self.max_line_chars, 1, 100_000, integer=True)
        check_number("max_player_chars", self.max_player_chars, 1, 100_000, integer=True)
        check_bool("reuse_persona_prefix", self.reuse_persona_prefix)
        check_storage_mode("player_text_storage", self.player_text_storage)
        check_optional("consistency_retries", self.consistency_retries, 0, MAX_CONSISTENCY_RETRIES, integer=True)


def with_sampler(config: AgentConfig, **changes: Any) -> AgentConfig:
    """A copy of ``config`` with sampler fields changed (e.g. ``seed=1`` for reproducible tests)."""
    return replace(config, sampler=replace(config.sampler, **changes))


def capped_config(max_new_tokens: int | None) -> AgentConfig:
    """The agents' default settings with each line capped at ``max_new_tokens`` tokens (None: the
    default cap): what simulated play, evaluation and the persona probe give their NPCs."""
    config = AgentConfig()
    return config if max_new_tokens is None else with_sampler(config, max_new_tokens=max_new_tokens)
