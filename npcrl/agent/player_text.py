"""What of a player's words a play log keeps: ``AgentConfig.player_text_storage``.

The model always sees what the player typed (sanitized); the log gets, per mode:

- ``"scrubbed"`` (default): the words with personal data masked (``npcrl.privacy.scrub``), in the
  turn's ``player_text``, in every logged prompt (re-rendered from the scrubbed conversation), in
  the ``reply`` event, and in the NPC's logged line;
- ``"none"``: no player words at all: ``player_text`` empty, each player line in a logged prompt
  rendered as ``WITHHELD``, ``reply`` events without text;
- ``"raw"``: everything as typed (a game that has the players' consent and its own safeguards).

An NPC line that repeats personal data (the model echoing an email back) is logged masked in the
first two modes, and its sampled token ids and log-probs are left out (they would decode to the
data); ``filter_reason`` says so and the trainer skips the turn as too short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from npcrl.agent.safety import delimit_player_text
from npcrl.privacy.scrub import normalise, scrub_text
from npcrl.validate import ConfigValueError

STORAGE_MODES = ("none", "scrubbed", "raw")
WITHHELD = "[player text withheld]"
"""what a logged prompt says in place of each player line in ``"none"`` mode"""
WITHHELD_TURN = delimit_player_text(WITHHELD)
RESPONSE_WITHHELD = "withheld:personal_data"
"""``filter_reason`` of a logged turn whose response ids were left out because they held personal data"""
# Slack scrubbed beyond the stored length, so a datum cut by the length cap is still masked whole.
_CUT_SLACK = 256


def check_storage_mode(key: str, value: Any) -> str:
    """``value`` if it is one of ``STORAGE_MODES``; a ``ConfigValueError`` naming ``key`` otherwise."""
    if not isinstance(value, str) or value not in STORAGE_MODES:
        raise ConfigValueError(key, value, "one of " + ", ".join(repr(mode) for mode in STORAGE_MODES))
    return value


def redact(text: str) -> str:
    """``text`` unchanged if it holds no personal data the scrubber finds, else scrubbed."""
    scrubbed = scrub_text(text)
    return text if scrubbed == normalise(text) else scrubbed


def holds_personal_data(text: str) -> bool:
    return redact(text) != text


@dataclass(frozen=True)
class PlayerTextStorage:
    """The storage rule of one mode, applied by the agent to everything it logs."""

    mode: str = "scrubbed"

    def __post_init__(self) -> None:
        check_storage_mode("player_text_storage", self.mode)

    @property
    def raw(self) -> bool:
        return self.mode == "raw"

    def player_text(self, text: str, max_chars: int) -> str:
        """The turn's ``player_text``: at most ``max_chars`` characters."""
        if self.mode == "none":
            return ""
        if self.raw:
            return text[:max_chars]
        return redact(text[: max_chars + _CUT_SLACK])[:max_chars]

    def stored_message(self, message: dict[str, str]) -> dict[str, str]:
        """A chat message of the model's prompt as the logged prompt renders it: every user turn
        is a player line, every assistant turn an NPC line (which may repeat one)."""
        role, content = message["role"], message["content"]
        if self.raw or role not in ("user", "assistant"):
            return message
        if role == "user" and self.mode == "none":
            return {"role": role, "content": WITHHELD_TURN}
        return {"role": role, "content": redact(content)}

    def npc_text(self, text: str) -> str:
        """An NPC line as the log keeps it (it may repeat what the player said)."""
        return text if self.raw else redact(text)

    def reply_data(self, clean: str) -> dict[str, Any]:
        """The ``data`` of the automatic ``reply`` event."""
        if self.mode == "none":
            return {"chars": len(clean)}
        return {"text": clean if self.raw else redact(clean), "chars": len(clean)}

    def withholds_response(self, *texts: str) -> bool:
        """Whether the sampled response (decoded as ``texts``) must not reach the log as token ids."""
        return not self.raw and any(holds_personal_data(text) for text in texts)
