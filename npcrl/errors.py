"""The project's own exceptions: every failure a user can cause names the file or field at fault."""

from __future__ import annotations


class NpcrlError(Exception):
    """Base class of every error npcrl raises on purpose."""


class BundleError(NpcrlError):
    """A model bundle is missing, malformed, tampered with or unsafe to load."""


class GenerationError(NpcrlError):
    """The model failed while generating (bad input, engine failure)."""


class ModelSourceError(NpcrlError):
    """A base model (HF directory, hub id or GGUF) cannot be found, read or used."""
