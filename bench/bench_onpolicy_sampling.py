"""On-policy rollout sampling on real play-log prompts: HF generate one turn at a time (how fresh
lines were drawn before ``npcrl.train.sampling``) against ``sample_responses`` (rows grouped by
persona prefix, the prefix run once, the rows decoded together), side by side in one process.

Takes ``--turns`` training turns (a seeded sample of the logs' train split, personas mixed as in a
PPO rollout) and answers each prompt with the turn's own sampler settings, up to ``--tokens`` new
tokens, with a LoRA policy whose adapter has moved (so its extra matmuls are paid as in training).
The two ways draw different random numbers, so their lines differ; both print how many tokens they
produced, and the speed is compared per generated token as well as per rollout.

Usage: python bench/bench_onpolicy_sampling.py --logs DIR --bundle BUNDLE [--turns 16] [--micro 8]
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import logged_turns  # noqa: E402


def main() -> None:
    parser = logged_turns.parser(__doc__, micro=8)
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args()

    import numpy as np
    import torch

    from npcrl.runtime.sampler import SamplerConfig
    from npcrl.train.policy import decoder_of, lm_head_of
    from npcrl.train.sampling import sample_responses
    from npcrl.train.shared_prefix import group_by_prefix

    torch.set_num_threads(args.threads)
    bundle, turns = logged_turns.sample_train_turns(args.logs, args.bundle, args.turns)
    policy = logged_turns.moved_lora_policy(bundle)
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
            decoder_of(lm),
            lm_head_of(lm),
            [prompts[i] for i in group],
            [samplers[i] for i in group],
            [args.tokens] * len(group),
            eos,
            policy.tokenizer.pad_token_id,
        )
    after_s = time.perf_counter() - started

    before_tokens = sum(len(x) for x in one_by_one)
    after_tokens = sum(len(x) for x in batched)
    print(
        f"HF generate, one turn at a time: {before_s:.1f} s, {before_tokens} tokens ({before_tokens / before_s:.1f}/s)"
    )
    print(f"sample_responses, batched:       {after_s:.1f} s, {after_tokens} tokens ({after_tokens / after_s:.1f}/s)")
    print(
        f"speed-up: {before_s / after_s:.2f}x per rollout, "
        f"{(after_tokens / after_s) / (before_tokens / before_s):.2f}x per generated token"
    )


if __name__ == "__main__":
    main()
