"""Training forward/backward cost on real play logs, with and without running each micro-batch's
shared persona prefix once (``npcrl.train.shared_prefix``), side by side in one process.

Takes ``--turns`` training turns (a seeded sample of the logs' train split, so personas are mixed as
in a PPO rollout) and times, for each way:
* scoring: pi_old + reference log-probs, values and exact KL (``Policy.score``, no grad), and
* an update pass: forward + backward of every micro-batch (LoRA policy with value head).
"before" is the trainer as it was: micro-batches cut from the rollout in its shuffled order, every row
run whole. "after" groups rows by prompt prefix and runs the shared prefix once per micro-batch.
It also prints the largest difference in log-probs between the two (they compute the same thing).

Usage: python bench/bench_shared_prefix.py --logs DIR --bundle BUNDLE [--turns 16] [--micro 4]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import logged_turns  # noqa: E402


def main() -> None:
    parser = logged_turns.parser(__doc__, micro=4)
    args = parser.parse_args()

    import numpy as np
    import torch

    from npcrl.train import shared_prefix
    from npcrl.train.batching import collate
    from npcrl.train.policy import batch_inputs
    from npcrl.train.shared_prefix import group_by_prefix

    torch.set_num_threads(args.threads)
    bundle, turns = logged_turns.sample_train_turns(args.logs, args.bundle, args.turns)
    policy = logged_turns.moved_lora_policy(bundle)
    pad = policy.tokenizer.pad_token_id
    prompts = [t.prompt_ids for t in turns]
    rows = list(range(len(turns)))
    ways = {
        "before (whole rows, shuffled micro-batches)": [
            rows[i : i + args.micro] for i in range(0, len(rows), args.micro)
        ],
        "after (shared prefix, grouped micro-batches)": group_by_prefix(rows, prompts, args.micro),
    }
    tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in turns)
    print(
        f"{len(turns)} turns, {tokens} tokens (prompt {np.mean([len(p) for p in prompts]):.0f} + "
        f"response {np.mean([len(t.response_ids) for t in turns]):.0f} per turn), micro-batch {args.micro}, "
        f"{args.threads} threads"
    )
    results: dict[str, dict[str, float]] = {}
    logprobs: dict[str, dict[int, torch.Tensor]] = {}
    sharing_threshold = shared_prefix.MIN_SHARED_PREFIX
    for name, chunks in ways.items():
        share = name.startswith("after")
        shared_prefix.MIN_SHARED_PREFIX = sharing_threshold if share else 10**9  # "before": never share
        started = time.perf_counter()
        got: dict[int, torch.Tensor] = {}
        for chunk in chunks:
            batch = collate([turns[i] for i in chunk], pad)
            old, *_ = policy.score(batch, reference_is_policy=False)
            for row, i in enumerate(chunk):
                got[i] = old[row, : len(turns[i].response_ids)]
        score_s = time.perf_counter() - started
        started = time.perf_counter()
        for chunk in chunks:
            batch = collate([turns[i] for i in chunk], pad)
            lp, values, entropy = policy.module(*batch_inputs(batch))
            ((lp + values + entropy) * batch.mask).sum().backward()
        update_s = time.perf_counter() - started
        policy.module.zero_grad(set_to_none=True)
        results[name] = {"score": score_s, "update": update_s}
        logprobs[name] = got
        print(f"{name}: score {score_s:.1f} s, forward+backward {update_s:.1f} s", flush=True)
    before, after = (results[k] for k in ways)
    a, b = (logprobs[k] for k in ways)
    gap = max(float((a[i] - b[i]).abs().max()) for i in rows)
    print(
        f"speed-up: score {before['score'] / after['score']:.2f}x, forward+backward "
        f"{before['update'] / after['update']:.2f}x, total "
        f"{(before['score'] + before['update']) / (after['score'] + after['update']):.2f}x; "
        f"max |log-prob difference| {gap:.2e}"
    )


if __name__ == "__main__":
    main()
