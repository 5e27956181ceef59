"""TRL's PPO update cost on the batch shape npcrl's trainer uses (the side-by-side anchor).

Runs TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` (the last TRL release that ships PPO) on CPU, fp32, with
the four models TRL's PPO needs: a policy, a frozen reference policy, a value model and a reward model. The
value and reward models are ``AutoModelForSequenceClassification`` (num_labels=1) built from the same weights
as the policy (their score heads are freshly initialised; the reward values do not matter, its forward cost is
part of TRL's scoring phase). One update = one rollout batch of all prompts, one PPO epoch, one mini-batch, no
gradient accumulation, so every update is exactly one optimiser step on ``batch`` sequences.

Each update is split into three phases by hooks on names in TRL's trainer module (see ``PhaseClock``):
  generation  entering TRL's ``unwrap_model_for_generation`` context -> leaving it (``batch_generation``:
              sampling ``--response-tokens`` tokens for the whole batch, KV cache, logits kept for logprobs)
  scoring     leaving that context -> the first gradient-enabled ``forward`` of the update, i.e. everything
              TRL does under ``torch.no_grad()`` before its optimisation loop: policy logprobs from the
              generation logits, the reference forward, the value forward, the reward forward, then KL
              rewards, GAE and advantage whitening
  training    the first gradient-enabled ``forward`` -> TRL's ``on_step_end`` callback: the optimisation loop
              (policy + value forward, backward, AdamW step), its statistics and the metrics log
Whatever else the update spends (fetching the batch, TRL's gc.collect after the step) is ``other_s``.

Responses are exactly ``--response-tokens`` long: no stop token, so nothing is truncated or masked. The
tokenizer's pad token is switched from ``<|im_end|>`` (which SmolLM2 uses as pad, and which every chat-templated
prompt contains; TRL treats every pad-id token as padding) to ``<|endoftext|>``, which is suppressed during
sampling so no response contains it.

Usage: .venv-trl/bin/python bench/trl_ppo.py --model DIR --prompts FILE.json --response-tokens N --updates K [--lora]
FILE.json is a JSON list of token-id lists (already chat-templated prompts). Logs go to stderr; the result is
one JSON line on stdout. Run ``scripts/setup_trl_venv.sh`` first: TRL lives in its own environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAD_TOKEN = "<|endoftext|>"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhaseClock:
    """Per-update phase timestamps, fed by hooks installed into TRL's PPO trainer module.

    ``PPOTrainer.train()`` looks its helpers up as globals of ``trl.experimental.ppo.ppo_trainer`` at call time,
    so replacing those module attributes wraps every call made by ``train()`` without copying any of its code:

    * ``unwrap_model_for_generation`` (context manager around the rollout's ``batch_generation`` call): its entry
      opens a new update and starts generation, its exit ends generation and starts scoring.
    * ``forward`` (TRL's model call helper): scoring calls it under ``torch.no_grad()`` (the reference policy, or
      the adapter-disabled policy with LoRA); the optimisation loop calls it with gradients enabled on the
      policy+value wrapper. The first gradient-enabled call of an update ends scoring and starts training.
    * ``get_reward`` (value and reward backbones + score head, no grad): timed only, for the scoring breakdown.
    * ``batch_generation``: timed and its output checked (response width, pad tokens), not a phase boundary.
    * a ``TrainerCallback``: ``on_step_end`` ends training (after the optimiser step, lr step and metrics log);
      ``on_train_end`` closes the last update.

    Every hook checks the update it belongs to, and ``finish`` refuses results whose update count or phase
    order does not match what was asked, so a TRL change that moves a call fails loudly instead of misreporting.
    """

    def __init__(self) -> None:
        self.updates: list[dict[str, float]] = []
        self.detail: list[dict[str, float]] = []
        self.checks: list[dict[str, int]] = []
        self.reward_model: object = None
        self.end: float | None = None

    def _cur(self) -> dict[str, float]:
        if not self.updates:
            raise RuntimeError("TRL hook fired outside an update: the hooked call order changed")
        return self.updates[-1]

    def gen_start(self) -> None:
        self.updates.append({"gen_start": time.perf_counter()})
        self.detail.append({"ref_forward_s": 0.0, "value_forward_s": 0.0, "reward_forward_s": 0.0})

    def gen_end(self) -> None:
        self._cur().setdefault("gen_end", time.perf_counter())

    def train_start(self) -> None:
        self._cur().setdefault("train_start", time.perf_counter())

    def step_end(self) -> None:
        self._cur().setdefault("step_end", time.perf_counter())

    def install(self, ppo_module, response_tokens: int, pad_token_id: int) -> None:
        import torch

        for name in ("unwrap_model_for_generation", "batch_generation", "forward", "get_reward"):
            if not callable(getattr(ppo_module, name, None)):
                raise RuntimeError(f"TRL's PPO trainer module has no {name}(): cannot hook its phases")
        orig_unwrap = ppo_module.unwrap_model_for_generation
        orig_batch_generation = ppo_module.batch_generation
        orig_forward = ppo_module.forward
        orig_get_reward = ppo_module.get_reward
        clock = self

        @contextlib.contextmanager
        def unwrap_model_for_generation(*args, **kwargs):
            clock.gen_start()
            with orig_unwrap(*args, **kwargs) as unwrapped:
                yield unwrapped
            clock.gen_end()

        def batch_generation(model, queries, *args, **kwargs):
            query_responses, logits = orig_batch_generation(model, queries, *args, **kwargs)
            responses = query_responses[:, queries.shape[1] :]
            clock.checks.append(
                {
                    "response_width": int(responses.shape[1]),
                    "pad_in_responses": int((responses == pad_token_id).sum()),
                }
            )
            return query_responses, logits

        def forward(model, *args, **kwargs):
            if torch.is_grad_enabled():
                clock.train_start()
                return orig_forward(model, *args, **kwargs)
            start = time.perf_counter()
            out = orig_forward(model, *args, **kwargs)
            clock.detail[-1]["ref_forward_s"] += time.perf_counter() - start
            return out

        def get_reward(model, *args, **kwargs):
            start = time.perf_counter()
            out = orig_get_reward(model, *args, **kwargs)
            key = "reward_forward_s" if model is clock.reward_model else "value_forward_s"
            clock.detail[-1][key] += time.perf_counter() - start
            return out

        ppo_module.unwrap_model_for_generation = unwrap_model_for_generation
        ppo_module.batch_generation = batch_generation
        ppo_module.forward = forward
        ppo_module.get_reward = get_reward

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class StepClock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.step_end()

            def on_train_end(self, args, state, control, **kwargs):
                clock.end = time.perf_counter()

        return StepClock()

    def finish(self, expected_updates: int) -> list[dict[str, float]]:
        """Phase durations per update, in seconds."""
        if len(self.updates) != expected_updates or self.end is None:
            raise RuntimeError(f"saw {len(self.updates)} updates, expected {expected_updates}: TRL's loop changed")
        rows = []
        for i, u in enumerate(self.updates):
            nxt = self.updates[i + 1]["gen_start"] if i + 1 < len(self.updates) else self.end
            keys = ("gen_start", "gen_end", "train_start", "step_end")
            if any(k not in u for k in keys) or sorted(u[k] for k in keys) != [u[k] for k in keys]:
                raise RuntimeError(f"update {i + 1}: phase marks missing or out of order: {u}")
            gen = u["gen_end"] - u["gen_start"]
            scoring = u["train_start"] - u["gen_end"]
            training = u["step_end"] - u["train_start"]
            total = nxt - u["gen_start"]
            rows.append(
                {
                    "total_s": total,
                    "generation_s": gen,
                    "scoring_s": scoring,
                    "training_s": training,
                    "other_s": total - gen - scoring - training,
                    **self.detail[i],
                }
            )
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="local HF safetensors dir (SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", required=True, type=Path, help="JSON list of token-id lists")
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--updates", type=int, default=2, help="PPO updates; the first is a warm-up when > 1")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (r=16, alpha=32, q/k/v/o_proj)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    prompts = json.loads(args.prompts.read_text())
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, list) and p for p in prompts)):
        raise SystemExit("--prompts must be a JSON list of non-empty token-id lists")
    if args.response_tokens < 1 or args.updates < 1:
        raise SystemExit("--response-tokens and --updates must be positive")

    # Everything TRL and transformers print to stdout (accelerate's banner, the metrics log) goes to stderr;
    # stdout carries only the final JSON line.
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        result = run(args, prompts)
    print(json.dumps(result), file=real_stdout, flush=True)


def load_tokenizer(args: argparse.Namespace, prompts: list[list[int]]) -> tuple[Any, int]:
    """The tokenizer, left-padding with ``PAD_TOKEN``, and that token's id."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(args.model)
    if PAD_TOKEN not in tokenizer.get_vocab():
        raise SystemExit(f"{PAD_TOKEN} is not in the tokenizer's vocabulary")
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    if any(pad_id in p for p in prompts):
        raise SystemExit(f"a prompt contains {PAD_TOKEN} (id {pad_id}), which this benchmark uses as padding")
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.padding_side = "left"  # TRL appends responses after the query block, so queries are left-padded
    return tokenizer, pad_id


def load_models(args: argparse.Namespace, pad_id: int) -> dict:
    """The policy, the reference (none with LoRA: the adapter-free base is the reference), value and reward models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    def load(cls, **kwargs):
        model = cls.from_pretrained(args.model, dtype=torch.float32, **kwargs)
        model.config.pad_token_id = pad_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad_id
        return model

    policy = load(AutoModelForCausalLM)
    # TRL builds its own GenerationConfig (temperature, top_k 0, top_p 1, max_new_tokens); since transformers 5
    # fields it leaves unset come from the model's generation config, so this keeps the pad token out of samples.
    policy.generation_config.suppress_tokens = [pad_id]
    return {
        "model": policy,
        "ref_model": None if args.lora else load(AutoModelForCausalLM),
        "value_model": load(AutoModelForSequenceClassification, num_labels=1),
        "reward_model": load(AutoModelForSequenceClassification, num_labels=1),
    }


def lora_config(args: argparse.Namespace) -> object | None:
    if not args.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )


def ppo_config(args: argparse.Namespace, batch: int, out_dir: str) -> object:
    """One PPO epoch over one mini-batch per update, fixed-length responses, nothing saved or evaluated."""
    from trl.experimental.ppo import PPOConfig

    return PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=1,
        local_rollout_forward_batch_size=batch,
        response_length=args.response_tokens,
        stop_token=None,
        stop_token_id=None,
        missing_eos_penalty=None,
        temperature=0.7,
        total_episodes=batch * args.updates,
        num_sample_generations=0,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=args.seed,
        dataloader_num_workers=0,
    )


def checked_updates(clock: PhaseClock, args: argparse.Namespace) -> list[dict[str, float]]:
    """Each update's phase times; raises if any update's responses were not exactly the asked length."""
    rows = clock.finish(args.updates)
    for i, (row, check) in enumerate(zip(rows, clock.checks, strict=True)):
        log(f"update {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()) + f"; {check}")
        if check["response_width"] != args.response_tokens or check["pad_in_responses"]:
            raise RuntimeError(f"responses are not exactly {args.response_tokens} unpadded tokens: {check}")
    return rows


def summary(args: argparse.Namespace, prompts: list[list[int]], rows: list[dict[str, float]], trainable: int) -> dict:
    import torch
    import trl

    batch = len(prompts)
    measured = rows[1:] if len(rows) > 1 else rows  # the first update warms up

    def mean(key: str) -> float:
        return sum(r[key] for r in measured) / len(measured)

    prompt_mean = sum(len(p) for p in prompts) / batch
    training_s = mean("training_s")
    return {
        "trl_version": trl.__version__,
        "updates": args.updates,
        "batch": batch,
        "prompt_tokens_mean": round(prompt_mean, 2),
        "prompt_tokens_padded": max(len(p) for p in prompts),
        "response_tokens": args.response_tokens,
        "seconds_per_update": round(mean("total_s"), 3),
        "generation_s": round(mean("generation_s"), 3),
        "scoring_s": round(mean("scoring_s"), 3),
        "training_s": round(training_s, 3),
        "other_s": round(mean("other_s"), 3),
        "scoring_detail": {k: round(mean(k), 3) for k in ("ref_forward_s", "value_forward_s", "reward_forward_s")},
        "warmup_update_s": round(rows[0]["total_s"], 3) if len(rows) > 1 else None,
        "training_tokens_per_s": round(batch * (prompt_mean + args.response_tokens) / training_s, 1),
        "trainable_params": trainable,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "lora": args.lora,
    }


def run(args: argparse.Namespace, prompts: list[list[int]]) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # PPO only exists under trl.experimental in 1.12
    import datasets
    import torch
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from transformers import set_seed
    from trl.experimental.ppo import PPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    batch = len(prompts)
    tokenizer, pad_id = load_tokenizer(args, prompts)
    models = load_models(args, pad_id)
    out_dir = tempfile.mkdtemp(prefix="trl-ppo-bench-")
    clock = PhaseClock()
    clock.install(ppo_module, args.response_tokens, pad_id)
    trainer = PPOTrainer(
        args=ppo_config(args, batch, out_dir),
        processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_dict({"input_ids": prompts}),
        callbacks=[clock.callback()],
        peft_config=lora_config(args),
        **models,
    )
    clock.reward_model = trainer.reward_model
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainable_policy = sum(p.numel() for p in trainer.model.policy.parameters() if p.requires_grad)
    log(
        f"trl {trl.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), batch {batch}, "
        f"response {args.response_tokens}, updates {args.updates}, lora {args.lora}, "
        f"trainable {trainable:,} (policy {trainable_policy:,}, value {trainable - trainable_policy:,})"
    )
    t0 = time.perf_counter()
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # nothing is saved there (save_strategy "no")
    log(f"train() took {time.perf_counter() - t0:.1f} s")
    return summary(args, prompts, checked_updates(clock, args), trainable)


if __name__ == "__main__":
    main()
