"""On-policy PPO with a reward model at the ceiling: how far one round could go if the predictor
read lines as well as the simulated players' own features allow.

The product's reward model reads tokens (``npcrl reward-model train``); its held-out skill on a
few hundred turns is small (docs/RESULTS.md). This diagnostic swaps it for the best linear
predictor of a turn's reward from the simulator's features of the line (asks back, offers a
quest, lore, in character, length, repetition), each weighed per player profile, fitted by ridge
on the same logs with the penalty chosen by cross-validation over conversations
(``reward_ceiling.py`` prints its skill). Fresh lines are post-processed as the game does before
their features are read. Everything else is ``npcrl train`` in the on-policy mode with the given
config: same sampler, PPO update, KL penalty, export.

What it answers: if PPO with this scorer does not raise engagement in one round either, the
predictor is not what limits the on-policy mode (the update budget or the KL guard is); if it
does, a better predictor is worth building. It is a diagnostic, not a product path: a game's
players are not a feature function.

Usage: python bench/onpolicy_ceiling.py --logs DIR --bundle B --out DIR --config onpolicy.toml
(``data.mode = "reward_model"``; ``reward_model.path`` is not read), then evaluate ``DIR/bundle``
with ``npcrl eval`` as any candidate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from simulator_features import (  # noqa: E402
    FeatureRow,
    cross_validated_ridge,
    design_row,
    logged_feature_rows,
    profile_design,
)


class SimulatorFeatureScorer:
    """Scores (prompt, response) pairs of logged prompts by ridge on the simulator's line features."""

    def __init__(self, rows: list[FeatureRow], personas: dict, tokenizer, folds: int = 5) -> None:
        from npcrl.sim.features import FEATURES

        self.names = FEATURES
        self.profiles = sorted({row.profile for row in rows})
        self.personas = personas
        self.tokenizer = tokenizer
        self.context = {row.prompt_ids: row for row in rows}
        fit = cross_validated_ridge(profile_design(rows, self.profiles), rows, folds)
        self.weights, self.bias = fit.weights, fit.bias
        self.cv = {"penalty": fit.penalty, "pearson_r": fit.pearson_r, "mse_skill": fit.mse_skill, "turns": len(rows)}
        digest = hashlib.sha256(np.concatenate([self.weights, [self.bias]]).tobytes()).hexdigest()
        self.record = {"tensors_sha256": digest, "metrics": {"holdout": self.cv}}

    def line_score(self, prompt: Sequence[int], response: Sequence[int]) -> float:
        from npcrl.agent.postprocess import postprocess_line
        from npcrl.sim.features import line_features

        row = self.context.get(tuple(prompt))
        if row is None:
            raise KeyError("a prompt that is not in the logs the scorer was fitted on")
        persona = self.personas[row.npc_id]
        text = postprocess_line(
            self.tokenizer.decode(list(response)),
            npc_name=persona.name,
            special_tokens=self.tokenizer.special_token_strings,
        )
        features = line_features(text, persona, row.earlier_lines)
        return float(design_row(features, row.profile, self.profiles, self.names) @ self.weights + self.bias)

    def predict_sequences(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], batch: int = 8
    ) -> list[float]:
        return [self.line_score(p, r) for p, r in zip(prompts, responses, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", required=True, help="training config with data.mode = 'reward_model'")
    parser.add_argument("--personas", default=None, help="persona directory (default: the built-in NPCs)")
    args = parser.parse_args()

    from npcrl.agent.persona import builtin_personas, load_personas
    from npcrl.runtime.bundle import load_bundle
    from npcrl.runtime.tokenizer import BundleTokenizer
    from npcrl.train.config import load_train_config
    from npcrl.train.run import train

    config = load_train_config(args.config)
    if config.data.mode != "reward_model":
        raise SystemExit(f"{args.config}: data.mode must be 'reward_model' for on-policy PPO")
    bundle = load_bundle(args.bundle)
    special = bundle.manifest.special_tokens
    tokenizer = BundleTokenizer.from_file(
        bundle.tokenizer_path, None, special.special_token_strings, special.special_token_ids
    )
    personas = load_personas(args.personas) if args.personas else builtin_personas()
    scorer = SimulatorFeatureScorer(logged_feature_rows(args.logs, personas), personas, tokenizer)
    print(f"[ceiling scorer] {json.dumps(scorer.cv)}", flush=True)
    train(args.logs, args.bundle, args.out, config, scorer=(scorer, scorer.record))


if __name__ == "__main__":
    main()
