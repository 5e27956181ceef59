"""Is a learned reward a cleaner signal than the logged one? A reward probe against the noiseless score.

A logged turn's reward is a noisy reaction to the line (``logged_ceiling.py``). A reward model
trained on the logged rewards could, in principle, average that noise away: its prediction for a
line would then follow what the line is worth to its player better than the line's own reward does,
and training on predictions would waste less of the KL budget on noise. This script measures it on
simulated play, where what a line is worth is known: its noiseless score under its player's profile
(``bias + weights . features``).

The probe is the product's data-efficient reward model (``npcrl reward-model train`` with a frozen
backbone, mean pooling and a ridge head): one forward pass gives each training turn's pooled
features, and each turn is predicted by a ridge fitted on the other conversation folds (the penalty
chosen on the same folds). It prints the correlation of the logged reward and of the probe's
out-of-fold prediction with the noiseless score, over all turns and within each kind of player.

Usage: python bench/probe_denoise.py --logs DIR --bundle B [--features-cache F.npy] [--folds 5]
(simulated logs, e.g. a loop round's ``logs``; the forward pass takes ~4 minutes per 800 turns on
two cores, and the cache keeps its result)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from logged_ceiling import noiseless_scores  # noqa: E402
from simulator_features import logged_feature_rows  # noqa: E402


def training_turns(logs: str, bundle: Any) -> list[Any]:
    """Every shown turn the trainer would read from ``logs`` (no holdout, no rejected samples)."""
    from npcrl.reward.spec import default_reward_spec
    from npcrl.train.config import DataConfig
    from npcrl.train.data import accepted_bundle_ids, load_training_data

    accepted, _ = accepted_bundle_ids(bundle, [])
    config = DataConfig(holdout_fraction=0.0)
    data = load_training_data(logs, default_reward_spec(), accepted, bundle.manifest.vocab_size, config, 0)
    return [turn for turn in data.train if not turn.rejected_sample]


def probe_features(turns: list[Any], bundle: Any, cache: str | None) -> np.ndarray:
    """(N, H): the frozen backbone's mean-pooled response states of each turn, from ``cache`` if it has them."""
    if cache and Path(cache).is_file():
        features = np.load(cache)
        if features.shape[0] != len(turns):
            raise SystemExit(f"{cache}: {features.shape[0]} rows, but the logs give {len(turns)} turns")
        return features
    from npcrl.train.config import ModelConfig, RewardModelConfig
    from npcrl.train.policy import resolve_base_weights
    from npcrl.train.reward_model import build_reward_model
    from npcrl.train.reward_model_train import pooled_features

    settings = RewardModelConfig(backbone="frozen", pooling="mean", head_fit="ridge")
    model, _ = build_reward_model(resolve_base_weights(bundle, None), settings, ModelConfig(), 0)
    features = pooled_features(model, turns, 4)
    if cache:
        np.save(cache, features)
    return features


def out_of_fold(features: np.ndarray, rewards: np.ndarray, conversations: list[str], folds: int) -> np.ndarray:
    """Each turn's ridge prediction from the other folds, in standardised reward units."""
    from npcrl.reward.model_data import conversation_folds
    from npcrl.reward.ridge import select_ridge_penalty

    targets = (rewards - rewards.mean()) / rewards.std()
    predictions, _, best = select_ridge_penalty(features, targets, conversation_folds(conversations, folds, 0))
    return np.asarray(predictions[best])


def within(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` less their group's mean."""
    out = values.astype(float).copy()
    for group in set(groups):
        out[groups == group] -= out[groups == group].mean()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--features-cache", default=None, help=".npy file for the pooled features")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from npcrl.agent.persona import builtin_personas
    from npcrl.runtime.bundle import load_bundle

    torch.set_num_threads(args.threads)
    rows = logged_feature_rows(args.logs, builtin_personas())
    scores = noiseless_scores(rows)
    profile_of = {(row.conversation_id, row.turn_index): row.profile for row in rows}
    bundle = load_bundle(args.bundle)
    turns = training_turns(args.logs, bundle)
    keys = [(turn.conversation_id, turn.turn_index) for turn in turns]
    rewards = np.array([turn.reward for turn in turns])
    score = np.array([scores[key] for key in keys])
    profiles = np.array([profile_of[key] for key in keys])
    probe = out_of_fold(probe_features(turns, bundle, args.features_cache), rewards, [k[0] for k in keys], args.folds)

    def r(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1])

    print(f"{len(turns)} training turns; the probe's out-of-fold r with the logged reward {r(probe, rewards):.3f}")
    print(f"{'':16}{'turns':>6}{'r(logged, score)':>18}{'r(probe, score)':>17}")
    print(f"{'all':16}{len(turns):6d}{r(rewards, score):18.3f}{r(probe, score):17.3f}")
    wr, wp, ws = within(rewards, profiles), within(probe, profiles), within(score, profiles)
    print(f"{'within profile':16}{len(turns):6d}{r(wr, ws):18.3f}{r(wp, ws):17.3f}")
    for name in sorted(set(profiles)):
        m = profiles == name
        print(f"{name:16}{int(m.sum()):6d}{r(rewards[m], score[m]):18.3f}{r(probe[m], score[m]):17.3f}")


if __name__ == "__main__":
    main()
