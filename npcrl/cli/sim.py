"""``npcrl simulate``: simulated players talk to the NPCs of a bundle and leave play logs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from npcrl.cli.args import (
    add_command,
    add_concurrent_argument,
    add_players_arguments,
    non_negative_int,
    player_profiles,
    positive_int,
)
from npcrl.sim.simulate import SimulatedConversation, SimulationSummary


def add_simulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``simulate`` on an argparse subparsers object; it sets ``func`` to ``cmd_simulate``."""
    parser = add_command(
        subparsers,
        "simulate",
        "simulated players talk to NPCs through the agent; writes real play logs",
        "npcrl simulate --bundle bundles/smol-q8 --conversations 48 --logs playlogs --seed 1",
    )
    parser.add_argument("--bundle", required=True, help="bundle directory the NPCs speak with")
    parser.add_argument("--conversations", required=True, type=positive_int, help="how many conversations")
    parser.add_argument("--logs", required=True, help="play-log directory to write")
    add_players_arguments(parser)
    parser.add_argument("--personas", help="directory of persona cards, every *.toml (default: the built-in ones)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="same seed, same conversations (default 0)")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, help="token limit of an NPC line (default: the agent's, 60)"
    )
    add_concurrent_argument(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with a cut-off run in --logs (same --bundle and --seed): its finished conversations"
        " are kept, the rest played; the cut-off logs are moved aside to <logs>.interrupted-<k>, not deleted",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(func=cmd_simulate)
    return parser


def cmd_simulate(args: argparse.Namespace) -> int:
    from npcrl.agent.config import capped_config
    from npcrl.agent.persona import builtin_personas, load_personas
    from npcrl.durable import set_aside
    from npcrl.playlog import PlayLogWriter
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.sim.ordered import session_options_for
    from npcrl.sim.resume import keep_finished, resumable_conversations
    from npcrl.sim.simulate import simulate

    personas = load_personas(args.personas) if args.personas else builtin_personas()
    profiles = player_profiles(args)
    config = capped_config(args.max_new_tokens)
    model = OnnxCausalLM(args.bundle, session_options_for(args.concurrent))
    cut_off = Path(args.logs)
    if args.resume:
        finished = resumable_conversations(cut_off, model.bundle_id, args.seed, args.conversations)
        if finished == args.conversations:
            print(f"{args.logs}: all {finished} conversation(s) of this run are finished already; nothing to play")
            return 0

    def progress(result: SimulatedConversation) -> None:
        print(
            f"[{result.index + 1}/{args.conversations}] {result.persona_id} x {result.profile}:"
            f" {len(result.turns)} turn(s), {result.end_reason}",
            file=sys.stderr,
        )

    aside = set_aside(cut_off) if args.resume else None
    with PlayLogWriter(args.logs) as writer:
        first = 0
        if aside is not None:
            first = keep_finished(aside, writer, model.bundle_id, args.seed, args.conversations)
            print(
                f"resuming: {first} finished conversation(s) kept from the cut-off logs (moved to {aside});"
                f" playing {args.conversations - first}",
                file=sys.stderr,
            )
        summary = simulate(
            model,
            personas,
            profiles,
            writer,
            args.conversations,
            args.seed,
            config,
            on_conversation=progress,
            concurrency=args.concurrent,
            first=first,
        )
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(format_summary(summary, args.logs))
    return 0


def format_summary(summary: SimulationSummary, logs: str) -> str:
    lines = [
        f"{summary.conversations} conversation(s), {summary.turns} NPC line(s)"
        f" ({summary.fallback_turns} fallback or filtered) in {summary.seconds:.1f} s; play logs in {logs}",
        f"walk-aways {summary.walk_aways}, ratings +{summary.ratings_positive} / -{summary.ratings_negative},"
        f" quests accepted {summary.quests_accepted}",
        "mean features: " + ", ".join(f"{name} {value:.2f}" for name, value in summary.mean_features.items()),
        f"{'profile':<14} {'convs':>5} {'turns':>5} {'walked':>6} {'+':>4} {'-':>4} {'quests':>6}",
    ]
    for name, c in summary.per_profile.items():
        lines.append(
            f"{name:<14} {c.conversations:>5} {c.turns:>5} {c.walk_aways:>6} {c.ratings_positive:>4}"
            f" {c.ratings_negative:>4} {c.quests_accepted:>6}"
        )
    return "\n".join(lines)
