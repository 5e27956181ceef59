"""``npcrl loop``: rounds of simulate -> train -> export -> evaluate, promoting only a better,
guarded candidate. Training needs torch, so the loop runs are imported only when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from npcrl.cli.args import (
    add_command,
    add_concurrent_argument,
    add_confirm_arguments,
    add_persona_probe_argument,
    add_players_arguments,
    player_profiles,
)
from npcrl.loop.decision import PROMOTE_WHEN, Guards


def cmd_loop(args: argparse.Namespace) -> int:
    from npcrl.loop.run import run_loop
    from npcrl.train.config import load_train_config

    config = load_train_config(args.config)
    players = list(player_profiles(args).values())
    results = run_loop(
        args.bundle,
        args.out,
        rounds=args.rounds,
        conversations=args.conversations,
        eval_conversations=args.eval_conversations,
        train_config=config,
        seed=args.seed,
        players=players,
        guards=Guards(persona_probe_lines=args.persona_probe_lines),
        store=args.store,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrent,
        promote_when=args.promote_when,
        confirm_conversations=args.confirm_conversations,
        confirm_rule=args.confirm_rule,
        resume=args.resume,
        same_play_as=args.same_play_as,
    )
    promoted = sum(r.promoted for r in results)
    print(f"{promoted} of {len(results)} rounds promoted; summary in {Path(args.out) / 'loop.md'}")
    return 0


def add_loop_parser(subparsers: Any) -> None:
    loop = add_command(
        subparsers,
        "loop",
        "simulate -> train -> export -> evaluate for K rounds, promoting only winners",
        "npcrl loop --bundle bundles/smol-q8 --out runs/loop1 --rounds 3 --store store",
    )
    loop.add_argument("--bundle", required=True, help="the base bundle (round 1 starts from it; KL is measured to it)")
    loop.add_argument("--out", required=True, help="output directory (one folder per round, loop.md)")
    loop.add_argument("--rounds", type=int, default=1)
    loop.add_argument("--conversations", type=int, default=48, help="simulated conversations to train on per round")
    loop.add_argument("--eval-conversations", type=int, default=24, help="simulated conversations per evaluated bundle")
    loop.add_argument("--config", help="training config TOML (docs/TRAINING.md)")
    add_players_arguments(loop)
    loop.add_argument("--store", help="bundle store to promote winners into (games hot-swap from it)")
    loop.add_argument("--seed", type=int, default=0)
    loop.add_argument("--max-new-tokens", type=int, help="cap on each NPC line")
    loop.add_argument(
        "--promote-when",
        choices=PROMOTE_WHEN,
        default="better",
        help="promote a guarded candidate whose mean engagement is higher (better), or only when the "
        "paired 95%% interval of its gain is above 0 (significant)",
    )
    add_confirm_arguments(loop)
    add_persona_probe_argument(loop)
    loop.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run in --out (same settings): finished rounds are kept, an unfinished one "
        "goes on from its last finished stage; a larger --rounds adds rounds to a finished run",
    )
    loop.add_argument(
        "--same-play-as",
        metavar="RUN",
        help="an earlier npcrl loop --out with the same play settings (any --config): round 1 takes its"
        " simulated play and base evaluation instead of playing them again, so two training setups are"
        " compared on the same logs and players (docs/LOOP.md)",
    )
    add_concurrent_argument(loop)
    loop.set_defaults(func=cmd_loop)
