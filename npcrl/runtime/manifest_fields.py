"""Typed, bounded reading of ``manifest.json`` fields: each failure is a ``BundleError`` naming the field.

The runtime sizes buffers and loops from these numbers, so each has an upper bound far above any
real model and far below what would exhaust memory (a layer count of 1e9 once meant building two
billion tensor names). ``bool`` is refused wherever a number is expected (JSON ``true`` is not 1).
"""

from __future__ import annotations

import re
from typing import Any

from npcrl.errors import BundleError

MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_HEAD_DIM = 1024
MAX_VOCAB = 1 << 22  # 4M tokens; the largest vocabularies today are about 256k
MAX_POSITIONS = 1 << 24
MAX_PARAMETERS = 1 << 44
MAX_FILES = 256
MAX_NAME_CHARS = 255
MAX_TEXT_CHARS = 1 << 20  # chat template, special-token strings
MAX_SPECIAL_TOKENS = 1 << 16
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,128}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def integer(value: Any, field: str, where: str, low: int, high: int) -> int:
    """An int in [low, high]; floats, strings and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{where}: field {field!r} = {_show(value)} must be an integer")
    if not low <= value <= high:
        raise BundleError(f"{where}: field {field!r} = {value} is outside [{low}, {high}]")
    return value


def optional_integer(value: Any, field: str, where: str, low: int, high: int) -> int | None:
    return None if value is None else integer(value, field, where, low, high)


def boolean(value: Any, field: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise BundleError(f"{where}: field {field!r} = {_show(value)} must be true or false")
    return value


def text(value: Any, field: str, where: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise BundleError(f"{where}: field {field!r} = {_show(value)} must be a string")
    if len(value) > max_chars:
        raise BundleError(f"{where}: field {field!r} is {len(value)} characters long (at most {max_chars})")
    return value


def optional_text(value: Any, field: str, where: str, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    return None if value is None else text(value, field, where, max_chars)


def mapping(value: Any, field: str, where: str, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """A JSON object; with ``allowed``, a key outside it is refused by name."""
    if not isinstance(value, dict):
        raise BundleError(f"{where}: field {field!r} must be a JSON object, not {type(value).__name__}")
    if allowed is not None:
        unknown = sorted(str(key) for key in value if key not in allowed)
        if unknown:
            raise BundleError(f"{where}: field {field!r} has unknown key {unknown[0]!r}")
    return value


def integer_list(value: Any, field: str, where: str, high: int, max_items: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise BundleError(f"{where}: field {field!r} must be a list, not {type(value).__name__}")
    if len(value) > max_items:
        raise BundleError(f"{where}: field {field!r} has {len(value)} items (at most {max_items})")
    return tuple(integer(item, f"{field}[{i}]", where, 0, high) for i, item in enumerate(value))


def text_list(value: Any, field: str, where: str, max_items: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BundleError(f"{where}: field {field!r} must be a list, not {type(value).__name__}")
    if len(value) > max_items:
        raise BundleError(f"{where}: field {field!r} has {len(value)} items (at most {max_items})")
    return tuple(text(item, f"{field}[{i}]", where, 1024) for i, item in enumerate(value))


def tensor_name_pattern(value: Any, field: str, where: str) -> str:
    """A past/present name pattern: ``{layer}`` and ``{kind}`` once each and nothing else in braces
    (a pattern is passed to ``str.format``, whose ``{layer.attr}`` syntax reaches attributes)."""
    pattern = text(value, field, where, 128)
    plain = pattern.replace("{layer}", "L", 1).replace("{kind}", "K", 1)
    if pattern.count("{layer}") != 1 or pattern.count("{kind}") != 1 or not _TENSOR_NAME.fullmatch(plain):
        raise BundleError(
            f"{where}: field {field!r} = {pattern!r} must hold '{{layer}}' and '{{kind}}' once each "
            "and otherwise only letters, digits and _.:/-"
        )
    return pattern


def file_entry(name: Any, entry: Any, where: str) -> dict[str, Any]:
    """One ``files`` entry: ``{"sha256": 64 lowercase hex digits, "bytes": size}``."""
    field = f"files.{name}"
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        raise BundleError(f"{where}: file name {_show(name)} must be 1 to {MAX_NAME_CHARS} characters")
    mapping(entry, field, where, frozenset({"sha256", "bytes"}))
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise BundleError(f"{where}: field '{field}.sha256' = {_show(digest)} must be 64 lowercase hex digits")
    size = integer(entry.get("bytes"), f"{field}.bytes", where, 0, 1 << 48)
    return {"sha256": digest, "bytes": size}


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def model_info(value: Any, where: str) -> dict[str, Any]:
    """``model``: free-form export facts; the keys the runtime and trainer read are type-checked."""
    info = dict(mapping(value, "model", where))
    limits = {"max_position_embeddings": MAX_POSITIONS, "hidden_size": 1 << 20, "num_parameters": MAX_PARAMETERS}
    for key, high in limits.items():
        if key in info:
            integer(info[key], f"model.{key}", where, 0, high)
    for key in ("source", "architecture", "model_type", "family", "graph"):
        if key in info:
            text(info[key], f"model.{key}", where, 4096)
    if info.get("graph", "torch") not in ("fused", "torch"):
        raise BundleError(f"{where}: field 'model.graph' = {info['graph']!r} is not 'fused' or 'torch'")
    return info
