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


class PersonaError(NpcrlError):
    """A persona card cannot be read, is not valid TOML, or breaks a field's rule."""


class RewardSpecError(NpcrlError):
    """A reward spec is malformed or invalid, or events cannot be scored under it."""


class LogFormatError(NpcrlError):
    """A play log, or a record or directory meant for one, is malformed or unusable (names the file or field)."""


class TrainError(NpcrlError):
    """The trainer cannot go on (bad config, unusable logs, missing weights)."""


class TrainConfigError(TrainError):
    """A training config (file or values) is invalid; the message names the file and key."""


class TrainDataError(TrainError):
    """The play logs give no usable training data; the message says what was found and dropped."""


class LoopError(NpcrlError, ValueError):
    """``npcrl loop`` cannot start or resume (a setting out of range, an output directory in use)."""
