"""On-policy rollout sampling on real play-log prompts: HF generate one turn at a time (how fresh
lines were drawn before ``npcrl.train.sampling``) against ``sample_responses`` (rows grouped by
persona prefix, the prefix run once, the rows decoded together), side by side in one process.

Takes ``--turns`` training turns (a seeded sample of the logs' train split, personas mixed as in a
PPO rollout) and answers each prompt with the turn's own sampler settings, up to ``--tokens`` new
tokens, with a LoRA policy whose adapter has moved (so its extra matmuls are paid as in training).
The two ways draw different random numbers, so their lines differ; both print how many tokens they
produced, and the speed is compared per generated token as well as per rollout.

Usage: python bench/bench_onpolicy_sampling.py --logs DIR --bundle BUNDLE [--turns 16] [--micro 8]
(logs from e.g. ``npcrl simulate --bundle BUNDLE --conversations 16 --logs DIR --max-new-tokens 40``)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from npcrl.bundle import load_bundle
    from npcrl.sampler import SamplerConfig
    from npcrl.train.config import DataConfig, ModelConfig
    from npcrl.train.data import load_training_data
    from npcrl.train.policy import _decoder, _lm_head, build_policy, resolve_base_weights
    from npcrl.train.run import accepted_bundle_ids, default_reward_spec
    from npcrl.train.sampling import sample_responses
    from npcrl.train.shared_prefix import group_by_prefix

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    accepted, _ = accepted_bundle_ids(bundle, [])
    data = load_training_data(
        args.logs, default_reward_spec(), accepted, bundle.manifest.vocab_size, DataConfig(holdout_fraction=0.0), 0
    )
    picked = np.random.default_rng(0).permutation(len(data.train))[: args.turns]
    turns = [data.train[int(i)] for i in picked]
    policy = build_policy(resolve_base_weights(bundle, None), ModelConfig(mode="lora"), seed=0)
    with torch.no_grad():
        for name, param in policy.module.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    eos = set(bundle.manifest.special_tokens.eos_token_ids)
    prompts = [list(t.prompt_ids) for t in turns]
    samplers = [dataclasses.replace(SamplerConfig.from_dict(t.sampler), seed=i) for i, t in enumerate(turns)]
    print(
        f"{len(turns)} turns, prompt {np.mean([len(p) for p in prompts]):.0f} tokens per turn, up to "
        f"{args.tokens} new tokens, micro-batch {args.micro}, {args.threads} threads"
    )

    started = time.perf_counter()
    one_by_one = []
    for prompt, sampler in zip(prompts, samplers, strict=True):
        ids = policy.generate(prompt, sampler, args.tokens, seed=int(sampler.seed or 0))
        stop = next((k + 1 for k, t in enumerate(ids) if t in eos), len(ids))
        one_by_one.append(ids[:stop])
    before_s = time.perf_counter() - started

    started = time.perf_counter()
    lm = policy.module.lm
    batched = []
    for group in group_by_prefix(list(range(len(turns))), prompts, args.micro):
        batched += sample_responses(
            _decoder(lm),
            _lm_head(lm),
            [prompts[i] for i in group],
            [samplers[i] for i in group],
            [args.tokens] * len(group),
            eos,
            policy.tokenizer.pad_token_id,
        )
    after_s = time.perf_counter() - started

    before_tokens = sum(len(x) for x in one_by_one)
    after_tokens = sum(len(x) for x in batched)
    print(f"HF generate, one turn at a time: {before_s:.1f} s, {before_tokens} tokens ({before_tokens / before_s:.1f}/s)")
    print(f"sample_responses, batched:       {after_s:.1f} s, {after_tokens} tokens ({after_tokens / after_s:.1f}/s)")
    print(
        f"speed-up: {before_s / after_s:.2f}x per rollout, "
        f"{(after_tokens / after_s) / (before_tokens / before_s):.2f}x per generated token"
    )


if __name__ == "__main__":
    main()
