"""``OUT/run.json``: what a training run was started with, and which resumes of its output
directory are allowed.

A resume must match the recorded arguments and config, or raise only ``ppo.iterations`` to extend
the run; ``finished_iterations`` is recorded once ``checkpoint/`` is written. A run may be moved
(with its inputs that lie beside it, as a loop round's logs do) and resumed where it now lies: a
path argument matches when it is the recorded one, or the same path relative to the run's own
directory. Torch-free, so the loop can ask whether a run finished without loading the trainer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from npcrl.durable import atomic_write
from npcrl.errors import TrainConfigError, TrainError
from npcrl.train.config import TrainConfig

RUN_FILE = "run.json"
# The recorded arguments a resume must repeat: paths (the same place, or the same place relative
# to the run's directory ``out``), and the reward model's tensors' hash.
PATH_ARGUMENTS = ("logs", "bundle", "base_weights")
SAME_ARGUMENTS = (*PATH_ARGUMENTS, "reward_model", "persona_cards")
# Recorded since a later version: a record without one resumes under any value.
LATER_ARGUMENTS = ("persona_cards",)


def _same_argument(key: str, previous: dict[str, Any], now: dict[str, Any], out: Path) -> bool:
    was, will = previous.get(key), now.get(key)
    if was == will or (key in LATER_ARGUMENTS and key not in previous):
        return True
    recorded_out = previous.get("out")
    if key not in PATH_ARGUMENTS or not (isinstance(was, str) and isinstance(will, str) and recorded_out):
        return False
    # The run was moved: an input that moved with it lies where it lay relative to the run.
    return os.path.relpath(was, recorded_out) == os.path.relpath(will, out)


def recorded_iterations(config: dict[str, Any]) -> Any:
    return config.get("ppo", {}).get("iterations")


def _without_iterations(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "ppo": {k: v for k, v in config.get("ppo", {}).items() if k != "iterations"}}


def _check_fresh(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        hint = " (pass --resume to continue it)" if (out / RUN_FILE).is_file() else ""
        raise TrainError(f"{out}: output directory is not empty{hint}")


def _extends(out: Path, previous: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether config ``now`` extends the recorded one (only ``ppo.iterations``, raised); any
    other difference is refused."""
    # Read the recorded config back through the parser, so keys added since it was written take
    # their defaults instead of counting as a change.
    try:
        before = TrainConfig.from_record(previous.get("config", {}), where=f"{out}/{RUN_FILE}").to_dict()
    except TrainConfigError as exc:
        raise TrainError(f"{out}/{RUN_FILE}: the recorded config no longer parses ({exc})") from exc
    if before == now:
        return False
    was, will = recorded_iterations(before), recorded_iterations(now)
    raised = isinstance(was, int) and isinstance(will, int) and will > was
    if not raised or _without_iterations(before) != _without_iterations(now):
        raise TrainError(
            f"{out}/{RUN_FILE}: the run was started with a different config; resume with the same "
            "config, or change only ppo.iterations (raised) to extend it"
        )
    return True


def check_out(out: Path, resume: bool, run_record: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """Refuse an output directory that is in use (every rank checks, so all of them stop together).

    Returns (extends, the recorded run.json or None when not resuming); extends is True when the
    resume extends the run: the config differs from the recorded one only by a larger
    ``ppo.iterations``. Sampling seeds depend on the iteration number and nothing is scheduled by
    the total, so an extended run ends where an uninterrupted longer one would."""
    if not resume:
        _check_fresh(out)
        return False, None
    record_path = out / RUN_FILE
    if not record_path.is_file():
        raise TrainError(f"{out}: nothing to resume ({RUN_FILE} is missing)")
    previous = json.loads(record_path.read_text(encoding="utf-8"))
    for key in SAME_ARGUMENTS:
        if not _same_argument(key, previous, run_record, out):
            raise TrainError(
                f"{out}/{RUN_FILE}: the run was started with a different {key} "
                f"({previous.get(key)!r}, now {run_record.get(key)!r}); resume with the same arguments"
            )
    extends = _extends(out, previous, run_record["config"])
    if (out / "checkpoint").exists() and not extends and "finished_iterations" in previous:
        # checkpoint/ is the result of a run of ``finished_iterations``; an extension that was killed
        # before it wrote its own still has iterations to go. Without ``finished_iterations`` the run
        # stopped in its finish (the export failed, say) after writing checkpoint/: a resume
        # finishes it from its last checkpoint.
        done, will = previous.get("finished_iterations"), recorded_iterations(run_record["config"])
        if not (isinstance(done, int) and isinstance(will, int) and will > done):
            raise TrainError(
                f"{out}: this run already finished (checkpoint/ exists); raise ppo.iterations to extend it"
            )
    return extends, previous


def resumed_record(run_record: dict[str, Any], extends: bool, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The record the run goes on under: a plain resume keeps the one it was started with; an
    extension records the iterations it extends and, until it ends, the shorter run's finish.
    Either way the run keeps the ``precision`` it started in (a record from before it was recorded
    takes the one resolved now)."""
    if previous is None:
        return run_record
    if not extends:  # the paths of where the run lies now (it may have been moved)
        here = {key: run_record[key] for key in (*PATH_ARGUMENTS, "out") if key in run_record}
        return {"precision": run_record.get("precision"), **previous, **here}
    history = [*previous.get("extended_from_iterations", []), recorded_iterations(previous["config"])]
    extended = {**run_record, "extended_from_iterations": history}
    if "precision" in previous:  # the run goes on in what it started in, whatever this CPU has
        extended["precision"] = previous["precision"]
    if "finished_iterations" in previous:  # checkpoint/ stays the shorter run's until this one ends
        extended["finished_iterations"] = previous["finished_iterations"]
    return extended


def finished_bundle(out: Path) -> Path | None:
    """The exported bundle of a run in ``out`` that finished, or None (unfinished, or not exported)."""
    record_path = out / RUN_FILE
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    finished = "finished_iterations" in record and (out / "bundle").is_dir()
    return out / "bundle" if finished else None


def write_run_record(out: Path, run_record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / RUN_FILE, json.dumps(run_record, indent=1, sort_keys=True))
