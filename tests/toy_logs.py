"""Real play logs of a toy task for trainer tests: a tiny bundle speaks through the ONNX runtime
(so the logged behaviour log-probs are the sampler's), and the "player" rewards a line when it
contains one chosen token."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter, read_log_dir
from npcrl.runtime.generation import GenerationResult
from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.sampler import SamplerConfig

TOY_SPEC = """
discount = 0.0
unknown_kinds = "ignore"

[rules.found]
weight = 1.0
"""

PLAYER_LINES = [
    "Hello there!",
    "What do you sell?",
    "Any news from the village?",
    "Can you fix my sword?",
    "Where is the inn?",
    "Tell me about the guard.",
    "Is the gate closed?",
    "Good morning, blacksmith.",
]
TOY_SAMPLER = SamplerConfig(temperature=1.0, top_p=0.95, max_new_tokens=8)


def toy_prompts(bundle: Path | OnnxCausalLM) -> list[list[int]]:
    tokenizer = (bundle if isinstance(bundle, OnnxCausalLM) else OnnxCausalLM(bundle)).tokenizer
    return [
        tokenizer.encode_chat([{"role": "system", "content": "You are Brom."}, {"role": "user", "content": line}])
        for line in PLAYER_LINES
    ]


def generate_turns(model: OnnxCausalLM, count: int, seed: int) -> list[tuple[list[int], GenerationResult]]:
    prompts = toy_prompts(model)
    out = []
    for k in range(count):
        prompt = prompts[k % len(prompts)]
        config = SamplerConfig(**{**TOY_SAMPLER.to_dict(), "seed": seed + k})
        result = model.generate(prompt, config, ignore_eos=True).run()
        out.append((prompt, result))
    return out


def pick_target(turns: list[tuple[list[int], GenerationResult]], rate: float = 0.3) -> int:
    """The token present in a share of responses closest to ``rate`` (a learnable, not trivial, target)."""
    presence: Counter[int] = Counter()
    for _, result in turns:
        presence.update(set(result.token_ids))
    n = len(turns)
    return min(presence, key=lambda t: (abs(presence[t] / n - rate), t))


def toy_turn(cid: str, k: int, bundle_id: str, prompt: list[int], result: Any, sampler: dict, now: float) -> NpcTurn:
    """The ``k``-th toy conversation's one NPC turn: ``result``'s sample answering ``prompt``."""
    return NpcTurn(
        conversation_id=cid,
        turn_index=0,
        npc_id="brom",
        bundle_id=bundle_id,
        player_text=PLAYER_LINES[k % len(PLAYER_LINES)],
        prompt_ids=list(prompt),
        response_ids=list(result.token_ids),
        logprobs=list(result.logprobs),
        full_logprobs=list(result.full_logprobs),
        text=result.text,
        stop_reason=result.stop_reason,
        sampler=sampler,
        latency_s=0.01,
        time_to_first_token_s=0.001,
        filtered=False,
        fallback=False,
        time=now + k,
    )


def write_toy_logs(bundle: Path, log_dir: Path, count: int, seed: int = 0) -> int:
    """Write ``count`` one-turn conversations; returns the target token id."""
    model = OnnxCausalLM(bundle)
    turns = generate_turns(model, count, seed)
    target = pick_target(turns)
    now = time.time()
    with PlayLogWriter(log_dir) as writer:
        for k, (prompt, result) in enumerate(turns):
            cid = f"toy-{seed}-{k:05d}"
            writer.append(
                ConversationStart(cid, "brom", "tester", "Brom", "toyhash", model.bundle_id, TOY_SAMPLER.to_dict(), now)
            )
            writer.append(toy_turn(cid, k, model.bundle_id, prompt, result, TOY_SAMPLER.to_dict(), now))
            if target in result.token_ids:
                writer.append(EngagementEvent(cid, 0, "found", 1.0, now + k + 0.5))
            writer.append(ConversationEnd(cid, "done", now + k + 1))
    return target


def toy_inputs(bundle: Path, root: Path, conversations: int) -> dict[str, Any]:
    """Play logs of ``conversations`` toy turns on ``bundle`` and the toy reward spec, under ``root``:
    what a training test needs besides its config (keys ``bundle``, ``logs``, ``spec``)."""
    write_toy_logs(bundle, root / "logs", conversations, seed=0)
    (root / "toy-rewards.toml").write_text(TOY_SPEC, encoding="utf-8")
    return {"bundle": bundle, "logs": root / "logs", "spec": root / "toy-rewards.toml"}


def policy_lm(trainer: Any, reference: bool) -> tuple[Any, Any]:
    """``trainer``'s language model, or its reference's, and the context it must run in."""
    policy = trainer.policy
    if reference:
        return policy.reference_lm_module(), policy.reference_context()
    return policy.module.lm, contextlib.nullcontext()


def target_rate(trainer: Any, toy: dict[str, Any], reference: bool = False, seed: int = 1234) -> float:
    """Share of freshly sampled 8-token lines (the logged sampler settings) of ``trainer``'s policy,
    or its reference, that hold the toy's rewarded token."""
    import torch  # the trainer tests' dependency; writing toy logs needs only the runtime

    lm, ctx = policy_lm(trainer, reference)
    hits = total = 0
    torch.manual_seed(seed)
    with ctx, torch.no_grad():
        for prompt in toy_prompts(toy["bundle"]):
            ids = torch.tensor([prompt])
            out = lm.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=TOY_SAMPLER.temperature,
                top_p=TOY_SAMPLER.top_p,
                max_new_tokens=TOY_SAMPLER.max_new_tokens,
                min_new_tokens=TOY_SAMPLER.max_new_tokens,
                num_return_sequences=32,
                pad_token_id=trainer.policy.tokenizer.pad_token_id,
            )
            for row in out[:, len(prompt) :].tolist():
                hits += toy["target"] in row
                total += 1
    return hits / total


def target_probability(trainer: Any, toy: dict[str, Any], reference: bool = False) -> float:
    """Mean probability ``trainer``'s policy (or its reference) gives the toy's token at each position
    of the logged NPC lines in ``toy["logs"]``, read with the lines as context: exact, where
    ``target_rate`` samples (its 8-token lines move by a few hits out of hundreds between runs)."""
    import torch

    lm, ctx = policy_lm(trainer, reference)
    means = []
    with ctx, torch.no_grad():
        for turn in read_log_dir(toy["logs"]):
            if isinstance(turn, NpcTurn):
                ids = torch.tensor([list(turn.prompt_ids) + list(turn.response_ids)])
                logits = lm(input_ids=ids).logits[0, len(turn.prompt_ids) - 1 : -1].float()
                means.append(torch.softmax(logits, -1)[:, toy["target"]].mean().item())
    return sum(means) / len(means)


def toy_config(mode: str = "full", iterations: int = 9, **ppo: Any) -> Any:
    """A training config under which a tiny model learns the toy task (``mode``: "full" or "lora";
    ``ppo``: PPO settings to change). It runs its iterations whatever the KL, over shuffled
    minibatches, in fp32 on any CPU (``precision = "auto"`` would train in bf16 where the CPU has
    bfloat16 units): the toy tests' thresholds were measured so, and a test of the KL stop sets it."""
    from npcrl.train.config import DataConfig, ModelConfig, PPOConfig, RunConfig, TrainConfig

    lr = 6e-4 if mode == "full" else 5e-3
    settings: dict[str, Any] = {
        "rollout_turns": 32,
        "minibatch_turns": 16,
        "micro_batch_turns": 8,
        "epochs": 2,
        "iterations": iterations,
        "learning_rate": lr,
        "kl_coef": 0.2,
        "minibatch_order": "shuffled",
        "kl_stop": None,
        **ppo,
    }
    return TrainConfig(
        seed=0,
        data=DataConfig(holdout_fraction=0.2),
        model=ModelConfig(mode=mode, lora_r=8, precision="fp32"),
        ppo=PPOConfig(**settings),
        run=RunConfig(threads=1, export_quant="none", sample_prompts=2, sample_tokens=8),
    ).validate()


def write_rejection_logs(bundle: Path, log_dir: Path, count: int, seed: int = 0, retries: int = 2) -> int:
    """Write ``count`` one-turn conversations played as the agent plays a line that contradicts the
    persona card, with a chosen token standing for the contradiction: a sample holding it is
    rejected and drawn again (at most ``retries`` times, each with its own seed), the first without
    it is shown, and every rejected sample is logged with its turn; no event follows, so a shown
    line's reward is 0. Returns the rejected token id."""
    model = OnnxCausalLM(bundle)
    forbidden = pick_target(generate_turns(model, count, seed))
    prompts = toy_prompts(model)
    now = time.time()
    with PlayLogWriter(log_dir) as writer:
        for k in range(count):
            cid = f"reject-{seed}-{k:05d}"
            prompt = prompts[k % len(prompts)]
            rejected: list[dict[str, Any]] = []
            for attempt in range(retries + 1):
                sampler = {**TOY_SAMPLER.to_dict(), "seed": seed + k + 100_003 * attempt}
                result: Any = model.generate(prompt, SamplerConfig(**sampler), ignore_eos=True).run()
                if forbidden not in result.token_ids:
                    break
                rejected.append(
                    {
                        "response_ids": list(result.token_ids),
                        "logprobs": list(result.logprobs),
                        "full_logprobs": list(result.full_logprobs),
                        "sampler": sampler,
                        "reason": "contradicts_card:name:Toy",
                    }
                )
            fell_back = forbidden in result.token_ids
            reason = (
                "contradicts_card:name:Toy"
                if fell_back
                else "resampled:contradicts_card:name:Toy"
                if rejected
                else None
            )
            writer.append(ConversationStart(cid, "brom", "tester", "Brom", "toyhash", model.bundle_id, sampler, now))
            turn = toy_turn(cid, k, model.bundle_id, prompt, result, sampler, now)
            turn.fallback, turn.filter_reason, turn.rejected_samples = fell_back, reason, rejected
            writer.append(turn)
            writer.append(ConversationEnd(cid, "done", now + k + 1))
    return forbidden
