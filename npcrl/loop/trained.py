"""How far a round's training went, read back from its bundle's provenance, and the table cell that
says it: ``npcrl populations`` and ``npcrl curve`` show it beside each round's gain, so a reader
sees whether a KL stop ended the run, how much of the logs it read and in what rollouts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORDED = ("iterations", "most_iterations", "passes_run", "kl_stop_reached", "rollout_turns", "batch_scale")
"""the provenance fields kept (runs recorded before a field existed lack it)"""


def trained_how_far(train_dir: Path) -> dict[str, Any]:
    """The iterations a round's training ran, the most it could, its passes over the training turns,
    whether the KL stop ended it and its rollout size (and the factor ``ppo.max_iterations_per_pass``
    multiplied it by), from the provenance in ``train_dir``; empty where there is none."""
    path = train_dir / "report" / "provenance.json"
    if not path.is_file():
        return {}
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return {key: recorded[key] for key in RECORDED if key in recorded}


def training_cell(training: Mapping[str, Any]) -> str:
    """e.g. ``43 of ≤ 84 (2.05 passes), KL stop``, ``61 of ≤ 61``, ``55 of ≤ 219 (1.00 passes, 128
    turns each)`` where the rollout was scaled to the logs; ``-`` before the round trained. The
    passes over the training turns show a KL stop that left some of them unread (below 1)."""
    if "iterations" not in training:
        return "-"
    most = f" of ≤ {training['most_iterations']}" if "most_iterations" in training else ""
    details = [f"{training['passes_run']:.2f} passes"] if "passes_run" in training else []
    if training.get("batch_scale", 1) > 1:
        details.append(f"{training['rollout_turns']} turns each")
    shown = f" ({', '.join(details)})" if details else ""
    return f"{training['iterations']}{most}{shown}" + (", KL stop" if training.get("kl_stop_reached") else "")
