"""The model of one resumable checkpoint of a training run, as an HF directory (LoRA merged in).

A run keeps its newest ``run.keep_checkpoints`` checkpoints (``OUT/state/ckpt-NNNNNN``), which hold
only what trains (LoRA weights, value head) and the optimizer. To compare a shorter run with the
full one, or to ship an earlier iteration when a later one drifted, ``checkpoint_model`` rebuilds
the policy the run trained (its recorded base weights and ``[model]`` config), loads the
checkpoint's weights into it and writes the model as ``OUT/checkpoint`` is written at a run's end
(safetensors, tokenizer, value head). ``npcrl export`` then turns it into a bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

from npcrl.errors import TrainError
from npcrl.train.checkpoint import PREFIX, copy_trainable, list_checkpoints, load_checkpoint, write_final_checkpoint
from npcrl.train.config import TrainConfig
from npcrl.train.policy import build_policy
from npcrl.train.run_record import RUN_FILE


def find_checkpoint(run_dir: Path, iteration: int | None) -> Path:
    """The checkpoint of ``iteration`` in ``run_dir`` (the newest when None); a clear error naming
    the ones kept when it is gone."""
    found = list_checkpoints(run_dir / "state")
    if not found:
        raise TrainError(f"{run_dir / 'state'}: no checkpoint (is {run_dir} a training run's --out?)")
    if iteration is None:
        return found[-1]
    wanted = run_dir / "state" / f"{PREFIX}{iteration:06d}"
    if wanted not in found:
        kept = ", ".join(str(int(p.name[len(PREFIX) :])) for p in found)
        raise TrainError(
            f"{wanted}: no such checkpoint; this run keeps iterations {kept} (run.keep_checkpoints keeps more)"
        )
    return wanted


def checkpoint_model(run_dir: Path, out: Path, iteration: int | None = None) -> Path:
    """Write the model of checkpoint ``iteration`` of the run in ``run_dir`` (newest when None) as an
    HF directory at ``out``, which must not exist yet; returns the checkpoint it came from."""
    if out.exists():
        raise TrainError(f"{out}: already exists; choose a new directory")
    record_path = run_dir / RUN_FILE
    if not record_path.is_file():
        raise TrainError(f"{run_dir}: not a training run ({RUN_FILE} is missing)")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        config = TrainConfig.from_record(record["config"], where=f"{record_path}: config")
        base = Path(record["base_weights"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainError(f"{record_path}: cannot read the run's record: {exc}") from exc
    if not (base / "config.json").is_file():
        raise TrainError(f"{record_path}: base_weights {base} is not an HF directory any more (config.json missing)")
    checkpoint = find_checkpoint(run_dir, iteration)
    trainable, _, _ = load_checkpoint(checkpoint)
    policy = build_policy(base, config.model, config.seed)
    copy_trainable(policy, trainable, str(checkpoint))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_final_checkpoint(policy, out)
    return checkpoint
