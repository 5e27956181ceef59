"""``npcrl rewards``: score every logged NPC turn with a reward spec."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from npcrl.cli.args import add_command


def cmd_rewards(args: argparse.Namespace) -> int:
    """Print a summary, or with ``--json`` every turn as one JSON line."""
    from npcrl.playlog import LogReader
    from npcrl.reward.engagement import reward_summary, turn_rewards
    from npcrl.reward.spec import default_reward_spec, load_reward_spec

    spec = load_reward_spec(args.spec) if args.spec else default_reward_spec()
    reader = LogReader(args.dir)
    unscorable: list[str] = []
    rewards = turn_rewards(reader, spec, unscorable)
    if unscorable:
        print(f"warning: {len(unscorable)} conversation(s) skipped, not scorable: {unscorable[0]}", file=sys.stderr)
    warning = reader.stats.warning()  # records read twice (a copied file): counted once, said so
    if warning:
        print(warning, file=sys.stderr)
    if args.json:
        for r in rewards:
            print(json.dumps(r.__dict__ | {"events": [list(e) for e in r.events]}))
        return 0
    summary = reward_summary(rewards)
    summary["corrupt_records_skipped"] = reader.stats.corrupt_skipped
    summary["duplicate_records"] = reader.stats.duplicates
    summary["conflicting_records"] = reader.stats.conflicts
    summary["unscorable_conversations"] = len(unscorable)
    print(json.dumps(summary, indent=2))
    return 0


def add_rewards_parser(subparsers: Any) -> None:
    rewards = add_command(
        subparsers, "rewards", "score logged NPC turns with a reward spec", "npcrl rewards playlogs --json"
    )
    rewards.add_argument("dir", help="play-log directory")
    rewards.add_argument("--spec", help="reward spec TOML (default: the shipped one)")
    rewards.add_argument("--json", action="store_true", help="one JSON line per turn")
    rewards.set_defaults(func=cmd_rewards)
