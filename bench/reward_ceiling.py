"""How predictable is a logged turn's reward at all? A reference for any learned reward model.

The simulated players react to a few text features of each NPC line (``npcrl.sim.features``) plus
Gaussian noise, and events (ratings, quests) are drawn at random. This script cross-validates
the reward model's own ridge regression over its conversation folds (``npcrl.reward.ridge``)
on the *simulator's own features* of each line, and prints the Pearson r and MSE skill of the
grid's best penalty (chosen on the same folds: slightly optimistic, which is what a ceiling should
be) next to each feature's correlation with the reward.

A learned predictor sees only tokens, never these features, so its held-out skill should be read
against this ceiling, not against 1.

Usage: python bench/reward_ceiling.py --logs DIR [--folds 5] [--personas DIR]
(simulated logs, e.g. the ``logs`` folder of an ``npcrl loop`` round)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--personas", default=None, help="persona directory (default: the built-in NPCs)")
    args = parser.parse_args()

    from simulator_features import cross_validated_ridge, logged_feature_rows, profile_design

    from npcrl.agent.persona import builtin_personas, load_personas
    from npcrl.sim.features import FEATURES

    personas = load_personas(args.personas) if args.personas else builtin_personas()
    rows = logged_feature_rows(args.logs, personas)
    x = np.array([[row.features[name] for name in FEATURES] for row in rows])
    y = np.array([row.reward for row in rows])
    conversations = {row.conversation_id for row in rows}
    print(f"{len(y)} turns in {len(conversations)} conversations; reward mean {y.mean():.3f}, sd {y.std():.3f}")
    for k, name in enumerate(FEATURES):
        r = f"{np.corrcoef(x[:, k], y)[0, 1]:+.3f}" if x[:, k].std() > 0 else "n/a (constant)"
        print(f"  {name:<15} mean {x[:, k].mean():.3f}  r with reward {r}")

    with_profile = profile_design(rows, sorted({row.profile for row in rows}))
    for label, design in (("the line's features", x), ("features x the player's profile", with_profile)):
        fit = cross_validated_ridge(design, rows, args.folds)
        print(
            f"ridge on {label}, {args.folds}-fold CV by conversation (best penalty "
            f"{fit.penalty:g}): Pearson r {fit.pearson_r:.3f}, MSE skill {fit.mse_skill:.3f}"
        )


if __name__ == "__main__":
    main()
