"""The exporter's own error."""

from __future__ import annotations

from npcrl.errors import NpcrlError


class ExportError(NpcrlError):
    """The export could not produce a bundle."""
