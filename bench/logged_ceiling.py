"""Logged-data PPO with a noiseless reward: can the update move the lines the players' way at all?

A logged turn's reward is drawn from the simulated player's reaction to the line: the profile's
score of the line (``bias + weights . features``, ``npcrl.sim.profiles``) plus Gaussian noise, turned
into a walk-away, a rating, a reply or a quest taken. This diagnostic trains ``npcrl train``'s
logged mode, unchanged (same turns, importance weights, KL penalty and stop, export), on each shown
line's *noiseless score* under its own player's profile instead of the reward the player gave it.
The samples the agent rejected for contradicting the card keep the reward spec's contradiction
reward, as in any logged run.

What it answers: if this round does not raise engagement on the players the real rounds are
evaluated on, the signal's noise is not what limits the logged mode on that population (the update
is); if it does, the reward's noise is. It is a diagnostic, not a product path: a game's players
are not a feature function. ``reward_ceiling.py`` prints how well the features predict the logged
rewards; this script prints how well the logged rewards follow the noiseless score.

Usage: python bench/logged_ceiling.py --logs DIR --bundle B --out DIR [--config train.toml] [--resume]
(simulated logs, e.g. a loop round's ``logs``), then evaluate ``DIR/bundle`` with ``npcrl eval`` as
any candidate.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from simulator_features import FeatureRow, logged_feature_rows  # noqa: E402


def noiseless_scores(rows: list[FeatureRow]) -> dict[tuple[str, int], float]:
    """(conversation id, turn index) -> the line's score under its player's profile, without noise."""
    from npcrl.sim.populations import shipped_profiles

    profiles = shipped_profiles()
    scores = {}
    for row in rows:
        profile = profiles[row.profile]
        weighted = sum(profile.weights.get(name, 0.0) * value for name, value in row.features.items())
        scores[(row.conversation_id, row.turn_index)] = profile.bias + weighted
    return scores


def with_noiseless_rewards(load: Callable[..., Any], scores: dict[tuple[str, int], float]) -> Callable[..., Any]:
    """``load`` (``load_training_data``) whose shown turns carry their noiseless score as reward."""
    import dataclasses

    def replaced(turns: list[Any]) -> list[Any]:
        out = []
        for turn in turns:
            if not turn.rejected_sample:
                key = (turn.conversation_id, turn.turn_index)
                if key not in scores:
                    raise SystemExit(f"turn {turn.key} has no simulator score (not a simulated player's?)")
                turn = dataclasses.replace(turn, reward=scores[key])
            out.append(turn)
        return out

    def load_with_scores(*args: Any, **kwargs: Any) -> Any:
        data = load(*args, **kwargs)
        data.train = replaced(data.train)  # the holdout keeps the players' rewards (off-policy estimate)
        return data

    return load_with_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=None, help="training config (default: the defaults)")
    parser.add_argument("--personas", default=None, help="persona directory (default: the built-in NPCs)")
    parser.add_argument("--resume", action="store_true", help="go on from --out's last checkpoint")
    args = parser.parse_args()

    import npcrl.train.run as run
    from npcrl.agent.persona import builtin_personas, load_personas
    from npcrl.train.config import load_train_config

    config = load_train_config(args.config)
    if config.data.mode != "logged":
        raise SystemExit(f"{args.config}: data.mode must be 'logged'")
    personas = load_personas(args.personas) if args.personas else builtin_personas()
    rows = logged_feature_rows(args.logs, personas)
    scores = noiseless_scores(rows)
    rewards = np.array([row.reward for row in rows])
    noiseless = np.array([scores[(row.conversation_id, row.turn_index)] for row in rows])
    summary = {
        "turns": len(rows),
        "score_mean": float(noiseless.mean()),
        "score_sd": float(noiseless.std()),
        "r_logged_reward_vs_score": float(np.corrcoef(rewards, noiseless)[0, 1]),
    }
    print(f"[noiseless reward] {json.dumps(summary)}", flush=True)
    run.load_training_data = with_noiseless_rewards(run.load_training_data, scores)  # type: ignore[attr-defined]
    run.train(args.logs, args.bundle, args.out, config, resume=args.resume)


if __name__ == "__main__":
    main()
