"""Resumable training checkpoints: trainable weights, value head, optimizer and loop state.

A checkpoint is a directory ``ckpt-NNNNNN`` (the number of finished iterations) holding
``trainable.safetensors`` (every parameter that trains, value head included), ``optimizer.safetensors``
plus the optimizer's scalar settings in ``state.json`` with the loop state (KL controller, metrics
so far, data fingerprint). Only safetensors and JSON are written and read: no pickles.

It is written into a temporary directory, fsynced, and renamed into place, so a run killed at
any instant (SIGKILL included) leaves the previous checkpoint intact and never a half one. A
checkpoint whose weights or optimizer state hold a NaN or an infinity is refused before anything
is written.

The run's final HF directory (``OUT/checkpoint``) is replaced the same way
(``npcrl.durable.replace_dir``): the new one is complete and fsynced before the old one moves
aside, and a run killed between the two renames gets the old one back from
``npcrl.durable.restore_set_aside`` when it resumes.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from npcrl.durable import replace_dir, set_aside_path
from npcrl.errors import TrainConfigError, TrainError
from npcrl.train.finite import require_finite_tensors
from npcrl.train.policy import VALUE_HEAD_FILE, Policy, save_value_head

PREFIX = "ckpt-"
_NAME = re.compile(rf"^{PREFIX}(\d{{6}})$")
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


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
    final = state_dir / f"{PREFIX}{iteration:06d}"
    opt_tensors, opt_settings = _optimizer_to_flat(optimizer.state_dict())
    where = f"{final}: not written"
    require_finite_tensors(trainable.items(), where, "trainable parameters")
    require_finite_tensors(opt_tensors.items(), where, "optimizer state")
    state_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=state_dir))
    try:
        save_file({k: v.detach().contiguous().clone() for k, v in trainable.items()}, str(staging / TRAINABLE_FILE))
        save_file(opt_tensors, str(staging / OPTIMIZER_FILE))
        state = {"iteration": iteration, "optimizer": opt_settings, **loop_state}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        replace_dir(staging, final)  # replaces a rerun iteration's after resuming from an older checkpoint
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


def copy_trainable(policy: Policy, trainable: dict[str, torch.Tensor], where: str) -> None:
    """Copy a checkpoint's trainable tensors into ``policy``; refused, naming ``where``, when their
    names are not the policy's (a checkpoint of another ``model.mode`` or LoRA setting)."""
    params = dict(policy.trainable_parameters())
    if set(params) != set(trainable):
        missing = sorted(set(params) - set(trainable))[:3]
        extra = sorted(set(trainable) - set(params))[:3]
        raise TrainConfigError(
            f"{where}: checkpoint parameters do not match this model (missing {missing}, unexpected {extra}); "
            "was it written with a different model.mode or LoRA setting?"
        )
    reshaped = [name for name, tensor in trainable.items() if tensor.shape != params[name].shape][:3]
    if reshaped:
        raise TrainConfigError(
            f"{where}: checkpoint parameters {reshaped} have other shapes than this model's; "
            "was it written with a different LoRA rank or base model?"
        )
    with torch.no_grad():
        for name, tensor in trainable.items():
            params[name].copy_(tensor)


def clean_staging(state_dir: Path) -> None:
    """Remove the staging directories, and the replaced checkpoints set aside, a killed run left behind."""
    if state_dir.is_dir():
        aside = set_aside_path(state_dir / f"{PREFIX}*").name
        for pattern in (".staging-*", aside):
            for leftover in state_dir.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)


def write_final_checkpoint(policy: Policy, final: Path) -> None:
    """Write the trained model at ``final``: an HF directory (LoRA merged in, safetensors) plus the
    value head, replacing an earlier one only once the new one is complete.

    Every parameter, and every merged weight, is checked finite first: a bad model never replaces
    a good one, and nothing is written for it.
    """
    where = f"{final}: not written"
    require_finite_tensors(policy.module.named_parameters(), where, "parameters")
    merged: Any = policy.merged_lm()  # a transformers model (save_pretrained, config)
    require_finite_tensors(merged.state_dict().items(), where, "merged weights")
    merged.config.use_cache = True
    for leftover in final.parent.glob(f".{final.name}-staging*"):  # of a run killed while writing
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-staging-", dir=final.parent))
    try:
        merged.save_pretrained(str(staging), safe_serialization=True)
        policy.tokenizer.save_pretrained(str(staging))
        if getattr(merged, "generation_config", None) is not None:
            merged.generation_config.save_pretrained(str(staging))
        save_value_head(policy.module.value_head, staging / VALUE_HEAD_FILE)
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
