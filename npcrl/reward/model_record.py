"""A saved reward model's directory, apart from its tensors: the file names, the JSON record that
says what the model is and what it was trained on, and the checks a file passes before it is loaded.

``reward_model.safetensors`` holds the head and the trainable backbone tensors,
``reward_model.json`` the format, settings, the base weights it adapts with their sha256, the
tokenizer hash, target scaling and metrics, and ``metrics.json`` the metrics alone. Only
safetensors are ever loaded: a pickle is refused before it is opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npcrl.errors import TrainError
from npcrl.runtime.bundle import sha256_file

FORMAT = "npcrl-reward-model"
FORMAT_VERSION = 1
TENSORS_FILE = "reward_model.safetensors"
RECORD_FILE = "reward_model.json"
METRICS_FILE = "metrics.json"
HEAD_PREFIX = "head."
BACKBONE_PREFIX = "backbone."
# A pickle (what torch.save writes, alone or inside a zip) starts with one of these.
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")
# Fields every record holds; a record without one was not written by this format.
REQUIRED_FIELDS = (
    "backbone",
    "lora",
    "base_weights",
    "base_weights_sha256",
    "tokenizer_sha256",
    "pad_id",
    "target_mean",
    "target_std",
    "tensors_sha256",
)


def base_weights_sha256(base: Path) -> dict[str, str]:
    """sha256 of the files that define the backbone: config.json and every safetensors shard."""
    names = ["config.json", *sorted(p.name for p in base.glob("*.safetensors"))]
    return {name: sha256_file(base / name) for name in names}


def record_json(record: dict[str, Any]) -> str:
    """The text of ``reward_model.json``."""
    return json.dumps(record, indent=1, sort_keys=True)


def _record_path(path: Path) -> Path:
    """``path``/reward_model.json, once ``path`` is known to be a reward model directory."""
    if not path.exists():
        raise TrainError(f"{path}: no such reward model directory")
    if not path.is_dir():
        raise TrainError(
            f"{path}: is a file; a reward model is the directory written by `npcrl reward-model train --out` "
            f"(holding {RECORD_FILE} and {TENSORS_FILE})"
        )
    record_path = path / RECORD_FILE
    if not record_path.is_file():
        raise TrainError(f"{record_path}: missing; {path} is not a reward model directory")
    return record_path


def read_record(path: Path) -> dict[str, Any]:
    """The record of the reward model directory ``path``, with every required field present."""
    record_path = _record_path(path)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainError(f"{record_path}: cannot read JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise TrainError(f"{record_path}: not a reward model record (format is not {FORMAT!r})")
    if record.get("version") != FORMAT_VERSION:
        raise TrainError(f"{record_path}: version {record.get('version')!r}; this npcrl reads {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_FIELDS if key not in record]
    if missing:
        raise TrainError(f"{record_path}: missing field(s) {', '.join(missing)}")
    return record


def check_tensors_file(path: Path, expected_sha256: str) -> None:
    """Refuse a tensors file that is missing, a pickle, or not the one the record names."""
    if not path.is_file():
        raise TrainError(f"{path}: missing")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(PICKLE_MAGIC):
        raise TrainError(f"{path}: a pickle (torch.save) file, not safetensors; only safetensors are loaded")
    if sha256_file(path) != expected_sha256:
        raise TrainError(f"{path}: sha256 differs from the one recorded in {RECORD_FILE}; the file was modified")


def check_base_weights(record: dict[str, Any], where: Path) -> Path:
    """The base weights directory the record names, unchanged since training."""
    base = Path(str(record["base_weights"]))
    if not (base / "config.json").is_file():
        raise TrainError(f"{where}: its base weights {base} are gone (config.json is missing)")
    if base_weights_sha256(base) != record["base_weights_sha256"]:
        raise TrainError(f"{where}: the base weights in {base} changed since the reward model was trained")
    return base
