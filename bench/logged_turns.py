"""Real training turns for the training benchmarks: a seeded sample of a log directory's turns.

The logs come from e.g. ``npcrl simulate --bundle BUNDLE --conversations 16 --logs DIR --max-new-tokens 40``.
"""

from __future__ import annotations

import argparse
from typing import Any


def sample_train_turns(logs: str, bundle_dir: str, count: int, seed: int = 0) -> tuple[Any, list[Any]]:
    """(the loaded bundle, ``count`` turns drawn without replacement from all of ``logs``' usable
    turns), personas mixed as in a PPO rollout."""
    import numpy as np

    from npcrl.reward.spec import default_reward_spec
    from npcrl.runtime.bundle import load_bundle
    from npcrl.train.config import DataConfig
    from npcrl.train.data import accepted_bundle_ids, load_training_data

    bundle = load_bundle(bundle_dir)
    accepted, _ = accepted_bundle_ids(bundle, [])
    data = load_training_data(
        logs, default_reward_spec(), accepted, bundle.manifest.vocab_size, DataConfig(holdout_fraction=0.0), 0
    )
    picked = np.random.default_rng(seed).permutation(len(data.train))[:count]
    return bundle, [data.train[int(i)] for i in picked]


def parser(doc: str, micro: int) -> argparse.ArgumentParser:
    """The options these benchmarks share: --logs, --bundle, --turns, --micro, --threads."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--logs", required=True, help="play-log directory (e.g. written by npcrl simulate)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--turns", type=int, default=16)
    p.add_argument("--micro", type=int, default=micro)
    p.add_argument("--threads", type=int, default=2)
    return p


def moved_lora_policy(bundle: Any) -> Any:
    """The bundle's weights as a LoRA policy whose adapter has moved off zero (so its extra matmuls
    run, and the reference differs from the policy, as in training)."""
    import torch

    from npcrl.train.config import ModelConfig
    from npcrl.train.policy import build_policy, resolve_base_weights

    policy = build_policy(resolve_base_weights(bundle, None), ModelConfig(mode="lora"), seed=0)
    with torch.no_grad():
        for name, param in policy.module.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    return policy
