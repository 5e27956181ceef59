"""Score play logs with a saved reward model: does it rank what the players did?

A reward model is judged once when it is trained (its held-out conversations). A game team also
wants to know how it does on logs it never saw — the next round's play, or the evaluation logs of
a base bundle and a trained candidate, where a predictor fit to steer on-policy PPO should put the
candidate that players liked better on top. ``score_logs`` reads each directory with the same
rules as training (the reward model's recorded ``[data]`` settings and reward spec, every
conversation, no holdout) and returns the turns' logged rewards next to the model's predictions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npcrl.errors import TrainError
from npcrl.reward.model_metrics import regression_metrics
from npcrl.reward.model_record import RECORD_FILE
from npcrl.reward.spec import default_reward_spec, load_reward_spec
from npcrl.runtime.bundle import load_bundle
from npcrl.train.config import TrainConfig
from npcrl.train.data import TrainingTurn, accepted_bundle_ids, load_training_data, tokenizer_sha256
from npcrl.train.finite import require_finite_rewards
from npcrl.train.reward_model import load_reward_model


@dataclass
class ScoredLogs:
    logs: str
    turns: list[TrainingTurn]
    predictions: list[float]
    metrics: dict[str, Any]
    """``regression_metrics`` against the reward model's training mean, plus ``prediction_sd``"""


def score_logs(
    reward_model_dir: str | Path,
    bundle_dirs: Sequence[str | Path],
    logs_dirs: Sequence[str | Path],
    spec_path: str | Path | None = None,
    batch: int = 8,
) -> list[ScoredLogs]:
    """Every usable turn of each ``logs_dirs`` entry, scored by the reward model.

    Turns are read when a bundle in ``bundle_dirs`` (or an ancestor it records) wrote them; every
    such bundle must share the reward model's tokenizer, since the model reads token ids. Rewards
    come from ``spec_path``, else the spec the reward model was trained with.
    """
    if not bundle_dirs:
        raise TrainError("score_logs: name at least one bundle whose logged turns to read")
    bundles = [load_bundle(path) for path in bundle_dirs]
    model, record = load_reward_model(reward_model_dir, bundles[0])  # refuses another tokenizer
    where = f"{Path(reward_model_dir).expanduser() / RECORD_FILE}"
    for bundle in bundles[1:]:
        if tokenizer_sha256(bundle) != record["tokenizer_sha256"]:
            raise TrainError(f"{where}: trained with another tokenizer than bundle {bundle.root}'s")
    accepted = set().union(*(accepted_bundle_ids(bundle, [])[0] for bundle in bundles))
    config = TrainConfig.from_record(record["config"], where=where)
    spec_path = spec_path or config.data.reward_spec
    if spec_path and not Path(spec_path).is_file():
        raise TrainError(f"{where}: the reward spec it was trained with, {spec_path}, is gone; pass another spec")
    spec = load_reward_spec(spec_path) if spec_path else default_reward_spec()
    every_conversation = dataclasses.replace(config.data, holdout_fraction=0.0)
    model.eval()
    scored = []
    for logs in logs_dirs:
        data = load_training_data(logs, spec, accepted, bundles[0].manifest.vocab_size, every_conversation, config.seed)
        predictions = model.predict(data.train, batch)
        require_finite_rewards(
            [t.key for t in data.train], predictions, f"{logs}: {reward_model_dir}", "predicted reward"
        )
        metrics = regression_metrics(
            predictions, [t.reward for t in data.train], model.target_mean, config.reward_model.engaged_threshold
        )
        metrics["prediction_sd"] = float(np.std(predictions))
        scored.append(ScoredLogs(str(logs), data.train, predictions, metrics))
    return scored


def check_new_file(path: str | Path) -> Path:
    """``path`` as a file that can be created: it must not exist (nothing written is overwritten)."""
    path = Path(path).expanduser()
    if path.exists():
        raise TrainError(f"{path}: already exists; predictions are written to a new file")
    if not path.parent.is_dir():
        raise TrainError(f"{path}: its directory does not exist")
    return path


def write_predictions(scored: Sequence[ScoredLogs], path: str | Path) -> Path:
    """One JSON line per scored turn, to a new file."""
    path = check_new_file(path)
    with path.open("x", encoding="utf-8") as f:
        for result in scored:
            for turn, prediction in zip(result.turns, result.predictions, strict=True):
                row = {
                    "logs": result.logs,
                    "conversation_id": turn.conversation_id,
                    "turn_index": turn.turn_index,
                    "npc_id": turn.npc_id,
                    "bundle_id": turn.bundle_id,
                    "reward": turn.reward,
                    "prediction": prediction,
                }
                f.write(json.dumps(row) + "\n")
    return path
