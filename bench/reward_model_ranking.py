"""Does a saved reward model rank policies the way the players do?

Scores every usable turn of one or more play-log directories (e.g. the evaluation logs of a base
bundle and of trained candidates, same players and seeds) with a reward model saved by
``npcrl reward-model train``, and prints, per directory, the turns' mean logged reward next to the
model's mean prediction, the spread of its predictions, and its Pearson r with the rewards there.
A reward model that is fit to steer on-policy PPO should put the directories in the order of their
mean reward.

Usage: python bench/reward_model_ranking.py --reward-model RM --bundle B LOGS=BUNDLE [LOGS=BUNDLE ...]
(``BUNDLE`` is the bundle that wrote ``LOGS``; its turns are read with the reward model's tokenizer,
so it must share ``B``'s)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reward-model", required=True, help="directory written by npcrl reward-model train")
    parser.add_argument("--bundle", required=True, help="the bundle the reward model was trained with")
    parser.add_argument("logs", nargs="+", help="LOGS=BUNDLE: a play-log directory and the bundle that wrote it")
    args = parser.parse_args()

    from npcrl.bundle import load_bundle
    from npcrl.rewards import default_reward_spec
    from npcrl.train.config import DataConfig
    from npcrl.train.data import load_training_data
    from npcrl.train.reward_model import load_reward_model, regression_metrics
    from npcrl.train.run import accepted_bundle_ids

    bundle = load_bundle(args.bundle)
    model, _ = load_reward_model(args.reward_model, bundle)
    model.eval()
    for pair in args.logs:
        logs, sep, writer = pair.partition("=")
        if not sep:
            parser.error(f"{pair!r}: expected LOGS=BUNDLE")
        started = time.perf_counter()
        accepted, _ = accepted_bundle_ids(bundle, [writer])
        data = load_training_data(
            logs, default_reward_spec(), accepted, bundle.manifest.vocab_size, DataConfig(holdout_fraction=0.0), seed=0
        )
        predictions = model.predict(data.train, 8)
        m = regression_metrics(predictions, [t.reward for t in data.train], model.target_mean, threshold=0.0)
        r = "undefined" if m["pearson"] is None else f"{m['pearson']:.3f}"
        print(
            f"{logs}: {m['turns']} turns, mean reward {m['reward_mean']:.4f}, mean prediction "
            f"{m['prediction_mean']:.4f} (sd {np.std(predictions):.4f}), r {r}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
