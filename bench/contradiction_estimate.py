"""Does the trainer's estimate of a policy's contradiction share predict play? Each policy's
importance-weighted share of first draws contradicting the card, estimated from one set of logs,
beside the share measured on that policy's own play.

Over the logs' first draws (``TrainingTurn.first_draw``) a weighted share ``sum w c / sum w``, with
``c`` = 1 for a rejected sample, under three weights: ``pi / pi_ref``, what training changed (the
first policy named is the reference; the trainer's ``[contradiction]`` estimate uses this weight,
``npcrl.train.contradiction_multiplier``); ``pi / pi_b``, against the logging bundle's own softmax;
and the exact ``mu_new / mu`` (the logged sampler recomputed on the policy, ``npcrl.train.behaviour``).
A policy is a bundle (its weights found as training finds them) or a Hugging Face directory (for
example a kept checkpoint's, ``npcrl checkpoint-model``). "Played" is the share of NPC turns whose
first draw was rejected in a play-log directory the policy played (for a loop round:
``eval/current`` for the base, ``eval/candidate`` for the trained bundle).

Usage: python bench/contradiction_estimate.py --logs LOGS --logged-bundle BUNDLE
           REFERENCE=BUNDLE[@PLAYED_LOGS] [NAME=BUNDLE[@PLAYED_LOGS] ...] [--max-turns N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from npcrl.train.data import TrainingTurn
    from npcrl.train.policy import Policy

LOG_WEIGHT_CLIP = 5.0  # the trainer's default run.ope_log_weight_clip


def first_draws(logs: Path, bundle_dir: Path, max_turns: int | None, seed: int = 0) -> list[TrainingTurn]:
    """The usable first draws of ``logs`` (train and holdout alike), as the trainer loads them; at
    most ``max_turns``, drawn uniformly (which leaves the estimate unbiased)."""
    from npcrl.reward.spec import default_reward_spec
    from npcrl.runtime.bundle import load_bundle
    from npcrl.train.config import DataConfig
    from npcrl.train.data import load_training_data

    bundle = load_bundle(bundle_dir)
    data = load_training_data(
        logs, default_reward_spec(), {bundle.bundle_id}, bundle.manifest.vocab_size, DataConfig(), 0, with_rejected=True
    )
    turns = [t for t in data.train + data.holdout if t.first_draw]
    if max_turns is not None and len(turns) > max_turns:
        turns = random.Random(seed).sample(turns, max_turns)
    return turns


def log_weights(policy: Policy, turns: list[TrainingTurn], pad_id: int) -> dict[str, list[float]]:
    """Per turn, summed over its tokens: ``log_pi`` (the policy's full softmax at the logged
    temperature), ``full`` = log pi - log pi_b and ``exact`` = log mu_new - log mu."""
    import torch

    from npcrl.runtime.sampler import SamplerConfig
    from npcrl.train.batching import collate
    from npcrl.train.behaviour import sampler_logprobs
    from npcrl.train.shared_prefix import group_by_prefix

    out: dict[str, list[float]] = {key: [0.0] * len(turns) for key in ("log_pi", "full", "exact")}
    with torch.no_grad():
        for chunk in group_by_prefix(range(len(turns)), [t.prompt_ids for t in turns], 4):
            logits = policy.full_logits(collate([turns[i] for i in chunk], pad_id))
            for row, i in enumerate(chunk):
                turn = turns[i]
                steps = logits[row, : len(turn.response_ids)].double()
                tokens = torch.tensor(turn.response_ids)
                taken = torch.log_softmax(steps / turn.temperature, dim=-1).gather(1, tokens[:, None])[:, 0]
                sampler = SamplerConfig.from_dict(turn.sampler)
                mu_new = sampler_logprobs(steps, turn.prompt_ids, turn.response_ids, sampler)
                out["log_pi"][i] = float(taken.sum())
                out["full"][i] = float((taken - torch.tensor(turn.full_logprobs, dtype=torch.float64)).sum())
                out["exact"][i] = float((mu_new - torch.tensor(turn.behaviour_logprobs, dtype=torch.float64)).sum())
    return out


def played_share(log_dir: Path) -> tuple[float, int]:
    """The share of sampled NPC turns in ``log_dir`` whose first draw was rejected, and their count."""
    from npcrl.playlog import LogReader, NpcTurn

    turns = {(r.conversation_id, r.turn_index): r for r in LogReader(log_dir) if isinstance(r, NpcTurn)}
    sampled = [t for t in turns.values() if t.response_ids]
    return sum(1 for t in sampled if t.rejected_samples) / max(1, len(sampled)), len(sampled)


def estimate_rows(
    logs: Path, logged_bundle: Path, policies: dict[str, tuple[Path, Path | None]], max_turns: int | None
) -> list[dict[str, Any]]:
    """One row for the logs themselves (every weight 1) and one per policy."""
    from npcrl.runtime.bundle import MANIFEST_NAME, load_bundle
    from npcrl.train.config import ModelConfig
    from npcrl.train.evaluate import off_policy_estimate
    from npcrl.train.policy import build_policy, resolve_base_weights

    turns = first_draws(logs, logged_bundle, max_turns)
    contradicts = [1.0 if t.rejected_sample else 0.0 for t in turns]
    logged_played = played_share(logs)
    rows = [{"policy": "logged", "first_draws": len(turns), "estimate": sum(contradicts) / len(turns)}]
    rows[0].update({"played": logged_played[0], "played_turns": logged_played[1]})
    reference: list[float] | None = None
    for name, (bundle_dir, played) in policies.items():
        is_bundle = (bundle_dir / MANIFEST_NAME).exists()
        source = resolve_base_weights(load_bundle(bundle_dir), None) if is_bundle else bundle_dir
        policy = build_policy(source, ModelConfig(), 0)
        weights = log_weights(policy, turns, policy.tokenizer.pad_token_id)
        reference = weights["log_pi"] if reference is None else reference
        changed = [a - b for a, b in zip(weights["log_pi"], reference, strict=True)]
        by_ref = off_policy_estimate(changed, contradicts, LOG_WEIGHT_CLIP)
        by_full = off_policy_estimate(weights["full"], contradicts, LOG_WEIGHT_CLIP)
        by_exact = off_policy_estimate(weights["exact"], contradicts, LOG_WEIGHT_CLIP)
        row: dict[str, Any] = {"policy": name, "first_draws": len(turns), "estimate": by_ref.self_normalised}
        row.update({"ess": by_ref.effective_sample_size, "bundle_estimate": by_full.self_normalised})
        row.update({"exact_estimate": by_exact.self_normalised, "exact_ess": by_exact.effective_sample_size})
        row["exact_zero_weight"] = by_exact.zero_weight_fraction
        if played is not None:
            row["played"], row["played_turns"] = played_share(played)
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str, digits: int = 3) -> str:
    value = row.get(key)
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "policies",
        nargs="+",
        help="NAME=BUNDLE_OR_HF_DIR[@PLAYED_LOGS]: a policy, and logs it played; the first is the reference",
    )
    parser.add_argument("--logs", required=True, type=Path, help="the play logs the estimate is made from")
    parser.add_argument("--logged-bundle", required=True, type=Path, help="the bundle that wrote --logs")
    parser.add_argument("--max-turns", type=int, default=None, help="score at most this many first draws")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    policies: dict[str, tuple[Path, Path | None]] = {}
    for spec in args.policies:
        name, _, rest = spec.partition("=")
        bundle, _, played = rest.partition("@")
        if not name or not bundle:
            parser.error(f"{spec!r}: expected NAME=BUNDLE[@PLAYED_LOGS]")
        policies[name] = (Path(bundle), Path(played) if played else None)
    rows = estimate_rows(args.logs, args.logged_bundle, policies, args.max_turns)
    header = "| policy | first draws | pi / pi_ref | ESS | pi / pi_b | exact (mu_new / mu) | ESS | zero weight | played (turns) |"
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        played = f"{_cell(row, 'played')} ({row['played_turns']})" if "played" in row else ""
        cells = [row["policy"], str(row["first_draws"]), _cell(row, "estimate"), _cell(row, "ess", 0)]
        cells += [_cell(row, "bundle_estimate"), _cell(row, "exact_estimate"), _cell(row, "exact_ess", 0)]
        cells += [_cell(row, "exact_zero_weight"), played]
        print("| " + " | ".join(cells) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
