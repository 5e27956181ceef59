"""PPO update cost on the real model: npcrl's trainer with LoRA and with full fine-tuning, side by
side with TRL's PPO (``trl.experimental.ppo``, trl 1.12) on the same prompts and response length.

One batch of ``--turns`` logged turns (prompts: chat-templated player lines; responses: sampled by
the q8 bundle through the game runtime, exactly ``--response-tokens`` long) is scored and updated
once (1 epoch, one minibatch). Each configuration runs in its own process so peak RSS is its own.
Our trainer learns from logs and does not generate; TRL's update generates its own responses
first, so its generation time is reported apart and the comparable numbers are "score + train".

TRL needs its own environment (``bash scripts/setup_trl_venv.sh`` creates ``.venv-trl``); without
it the TRL row is skipped.

Usage: python bench/bench_train.py [--turns 8] [--response-tokens 64] [--updates 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAYER_LINES = (
    "Good day! What do you sell here?",
    "Can you fix the blade of my old sword?",
    "Is there any work I could help with in the village?",
    "What do you think of the captain of the guard?",
    "Have you heard anything about the wolves in the forest?",
    "How much for a new horseshoe?",
    "Who taught you your craft?",
    "Thank you, I will be back tomorrow.",
)
SYSTEM = "You are Brom, the blacksmith of Oakrest. You are gruff but kind. Answer in one or two sentences."


def make_batch(bundle: Path, turns: int, response_tokens: int) -> list[dict]:
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.runtime.sampler import SamplerConfig

    model = OnnxCausalLM(bundle)
    out = []
    for k in range(turns):
        line = PLAYER_LINES[k % len(PLAYER_LINES)]
        prompt = model.tokenizer.encode_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": line}])
        config = SamplerConfig(temperature=0.7, top_p=0.9, max_new_tokens=response_tokens, seed=k)
        result = model.generate(prompt, config, ignore_eos=True).run()
        out.append(
            {
                "prompt_ids": prompt,
                "response_ids": result.token_ids,
                "logprobs": result.logprobs,
                "full_logprobs": result.full_logprobs,
                "sampler": config.to_dict(),
                "bundle_id": model.bundle_id,
            }
        )
    return out


def worker(batch_file: Path, mode: str, updates: int, model_dir: Path) -> dict:
    """One configuration: score + update the batch ``updates`` times (the first is a warm-up)."""
    import torch

    from npcrl.train.config import ModelConfig, PPOConfig, TrainConfig
    from npcrl.train.data import TrainingTurn
    from npcrl.train.distributed import Dist
    from npcrl.train.policy import build_policy
    from npcrl.train.ppo import PPOTrainer

    rows = json.loads(batch_file.read_text())
    turns = [
        TrainingTurn(
            conversation_id=f"c{k}",
            turn_index=0,
            npc_id="brom",
            bundle_id=r["bundle_id"],
            prompt_ids=tuple(r["prompt_ids"]),
            response_ids=tuple(r["response_ids"]),
            behaviour_logprobs=tuple(r["logprobs"]),
            full_logprobs=tuple(r["full_logprobs"]),
            temperature=0.7,
            sampler=r["sampler"],
            reward=float(k % 2),
        )
        for k, r in enumerate(rows)
    ]
    n = len(turns)
    lr = 5e-5 if mode == "lora" else 1e-5
    config = TrainConfig(
        model=ModelConfig(mode=mode),
        ppo=PPOConfig(
            rollout_turns=n, minibatch_turns=n, micro_batch_turns=n, epochs=1, iterations=updates, learning_rate=lr
        ),
    ).validate()
    policy = build_policy(model_dir, config.model, 0)
    trainer = PPOTrainer(policy, turns, config, Dist(), policy.tokenizer.pad_token_id)
    timings = []
    for _ in range(updates):
        t0 = time.perf_counter()
        rollout = trainer.score(trainer.rollout_turns(trainer.iteration))
        t1 = time.perf_counter()
        trainer.advantages(rollout)
        trainer.update(rollout)
        trainer.iteration += 1
        t2 = time.perf_counter()
        timings.append((t1 - t0, t2 - t1))
    measured = timings[1:] or timings
    score_s = sum(t[0] for t in measured) / len(measured)
    train_s = sum(t[1] for t in measured) / len(measured)
    tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in turns)
    return {
        "name": f"npcrl {mode}",
        "trainable_params_m": sum(p.numel() for _, p in policy.trainable_parameters()) / 1e6,
        "batch": n,
        "prompt_tokens_mean": sum(len(t.prompt_ids) for t in turns) / n,
        "response_tokens": len(turns[0].response_ids),
        "generation_s": 0.0,
        "scoring_s": score_s,
        "training_s": train_s,
        "training_tokens_per_s": tokens / train_s,
        "score_and_train_s": score_s + train_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def run_json(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--updates", type=int, default=2, help="per configuration; the first is a warm-up")
    parser.add_argument("--modes", default="lora,full,trl-lora,trl-full")
    parser.add_argument("--worker", choices=("lora", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--batch-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.batch_file, args.worker, args.updates, args.model_dir)))
        return

    from exporters.fetch import fetch_default_model
    from npcrl.paths import default_bundle_dir

    model_dir = fetch_default_model()
    bundle = default_bundle_dir("q8")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = Path(tmp) / "batch.json"
        batch = make_batch(bundle, args.turns, args.response_tokens)
        batch_file.write_text(json.dumps(batch))
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps([r["prompt_ids"] for r in batch]))
        trl_python = ROOT / ".venv-trl" / "bin" / "python"
        for mode in args.modes.split(","):
            print(f"running {mode} ...", file=sys.stderr, flush=True)
            if mode in ("lora", "full"):
                cmd = [sys.executable, __file__, "--worker", mode, "--batch-file", str(batch_file)]
                cmd += ["--model-dir", str(model_dir), "--updates", str(args.updates)]
            elif not trl_python.exists():
                print(f"  skipped: {trl_python} missing (bash scripts/setup_trl_venv.sh)", file=sys.stderr)
                continue
            else:
                cmd = [str(trl_python), str(ROOT / "bench" / "trl_ppo.py"), "--model", str(model_dir)]
                cmd += ["--prompts", str(prompts_file), "--response-tokens", str(args.response_tokens)]
                cmd += ["--updates", str(args.updates)] + (["--lora"] if mode == "trl-lora" else [])
            row = run_json(cmd)
            row.setdefault("name", mode)
            row["name"] = mode if mode.startswith("trl") else row["name"]
            rows.append(row)

    base = next((r for r in rows if r["name"] == "npcrl lora"), rows[0])
    print(f"\nbatch {args.turns} turns x {args.response_tokens} response tokens; seconds per update (after warm-up)")
    header = f"{'config':<12} {'gen s':>7} {'score s':>8} {'train s':>8} {'score+train':>12} {'train tok/s':>12} {'vs npcrl lora':>14} {'peak RSS MB':>12}"
    print(header)
    for r in rows:
        total = r.get("score_and_train_s") or (r["scoring_s"] + r["training_s"])
        print(
            f"{r['name']:<12} {r['generation_s']:>7.2f} {r['scoring_s']:>8.2f} {r['training_s']:>8.2f} {total:>12.2f} "
            f"{r['training_tokens_per_s']:>12.0f} {total / (base.get('score_and_train_s') or 1):>13.2f}x {r['peak_rss_mb']:>12.0f}"
        )
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "bench_train.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
