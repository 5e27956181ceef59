"""Resumable training checkpoints: trainable weights, value head, optimizer and loop state.

A checkpoint is a directory ``ckpt-NNNNNN`` (the number of finished iterations) holding
``trainable.safetensors`` (every parameter that trains, value head included), ``optimizer.safetensors``
plus the optimizer's scalar settings in ``state.json`` with the loop state (KL controller, metrics
so far, data fingerprint). Only safetensors and JSON are written and read: no pickles.

It is written into a temporary directory, fsynced, and renamed into place, so a run killed at
any instant (SIGKILL included) leaves the previous checkpoint intact and never a half one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from npcrl.errors import TrainError

PREFIX = "ckpt-"
_NAME = re.compile(rf"^{PREFIX}(\d{{6}})$")
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().clone()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in settings.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": settings["param_groups"]}


def save_checkpoint(
    state_dir: Path,
    iteration: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loop_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``iteration`` atomically and keep only the ``keep`` newest."""
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_dir / f"{PREFIX}{iteration:06d}"
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=state_dir))
    try:
        save_file({k: v.detach().contiguous().clone() for k, v in trainable.items()}, str(staging / TRAINABLE_FILE))
        opt_tensors, opt_settings = _optimizer_to_flat(optimizer.state_dict())
        save_file(opt_tensors, str(staging / OPTIMIZER_FILE))
        state = {"iteration": iteration, "optimizer": opt_settings, **loop_state}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        for name in (TRAINABLE_FILE, OPTIMIZER_FILE, STATE_FILE):
            _fsync_file(staging / name)
        if final.exists():  # a rerun of an iteration after resuming from an older checkpoint
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(state_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(state_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(state_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (staging directories of a killed run are ignored)."""
    if not state_dir.is_dir():
        return []
    found = [p for p in state_dir.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(trainable tensors, optimizer state_dict, loop state) of the checkpoint at ``path``."""
    try:
        trainable = load_file(str(path / TRAINABLE_FILE))
        opt_tensors = load_file(str(path / OPTIMIZER_FILE))
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise TrainError(f"{path}: cannot read the checkpoint: {exc}") from exc
    optimizer = _optimizer_from_flat(opt_tensors, state.pop("optimizer"))
    return trainable, optimizer, state


def clean_staging(state_dir: Path) -> None:
    """Remove staging directories a killed run left behind."""
    if state_dir.is_dir():
        for leftover in state_dir.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
