"""The personas a server knows: the built-in cards plus a game's own directory, and the inline
cards a client may send with ``open`` (fields only: a client never names a file)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from npcrl.agent.persona import Persona, builtin_personas, load_personas, persona_from_card
from npcrl.errors import PersonaError

INLINE_PREFIX = "inline-"
"""ids of inline personas start with this, so the play log tells them from the server's cards"""


def server_personas(directory: Path | None) -> dict[str, Persona]:
    """The built-in personas, and the cards in ``directory`` (a card there replaces a built-in one
    of the same id)."""
    personas = builtin_personas()
    if directory is not None:
        personas.update(load_personas(directory))
    return personas


def inline_persona(card: Any) -> Persona:
    """A persona from a client's card fields (as in a persona TOML file), checked exactly as a card
    file is; its id is derived from its name. Raises ``PersonaError`` naming the field at fault."""
    if not isinstance(card, dict):
        raise PersonaError("field 'persona' must be an object of persona card fields")
    name = card.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PersonaError("persona: field 'name' must be a non-empty string")
    return persona_from_card(inline_id(name), card, "persona")


def inline_id(name: str) -> str:
    """``inline-<name as letters, digits and '-'>``, within the 40 characters a persona id may have."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "npc"
    return (INLINE_PREFIX + slug)[:40].rstrip("-")
