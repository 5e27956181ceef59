"""``npcrl populations``: one loop round per population of simulated players, with one training
config; each population's gain, KL, perplexity and card contradictions as a table and a plot
(``npcrl.loop.populations``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from npcrl.cli.args import (
    add_command,
    add_concurrent_argument,
    add_confirm_arguments,
    add_persona_probe_argument,
    add_table_promote_when_argument,
    population_name,
)
from npcrl.loop.decision import Guards
from npcrl.loop.populations import DEFAULT_POPULATIONS
from npcrl.loop.populations_table import POPULATIONS_MD, POPULATIONS_PNG, Confirmation


def population_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"--populations must be comma-separated population names, got {text!r}")
    return [population_name(name) for name in names]


def cmd_populations(args: argparse.Namespace) -> int:
    from npcrl.loop.populations import run_populations
    from npcrl.loop.populations_table import verdict
    from npcrl.train.config import load_train_config

    points = run_populations(
        args.bundle,
        args.out,
        args.populations,
        conversations=args.conversations,
        eval_conversations=args.eval_conversations,
        train_config=load_train_config(args.config),
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrent,
        promote_when=args.promote_when,
        confirm_conversations=args.confirm_conversations,
        confirm_rule=args.confirm_rule,
        guards=Guards(persona_probe_lines=args.persona_probe_lines),
        resume=args.resume,
        same_play_as=args.same_play_as,
    )
    for point in points:
        mean, low, high = point.round.gain_percent
        print(
            f"{point.population:>14s}: gain {mean:+.1f}% [{low:+.1f}, {high:+.1f}], KL {point.round.kl_per_line:.2f}"
            f" nats/line, perplexity {point.round.perplexity:.2f}, promoted {point.round.promoted}"
            + confirmation_text(point.confirmation)
        )
    print(verdict(points))
    out = Path(args.out)
    print(f"table in {out / POPULATIONS_MD}, plot in {out / POPULATIONS_PNG}")
    return 0


def confirmation_text(confirmation: Confirmation | None) -> str:
    """``, pooled with 96 fresh players +6.1% [...]`` (or on the fresh players alone, or not played)."""
    if confirmation is None:
        return ""
    gain = confirmation.pooled_percent if confirmation.rule == "pooled" else confirmation.fresh_percent
    where = "pooled with" if confirmation.rule == "pooled" else "on"
    if gain is None:
        return f", {confirmation.conversations} fresh players not played"
    return f", {where} {confirmation.conversations} fresh players {gain[0]:+.1f}% [{gain[1]:+.1f}, {gain[2]:+.1f}]"


def add_populations_parser(subparsers: Any) -> None:
    populations = add_command(
        subparsers,
        "populations",
        "one loop round from the base per player population, with one training config; each one's gain with"
        " its paired interval, KL, perplexity and card contradictions (populations.md and populations.png)",
        "npcrl populations --bundle bundles/smol-q8 --out runs/populations --config docs/train.fast.toml"
        " --concurrency 8",
    )
    populations.add_argument("--bundle", required=True, help="the base bundle every round starts from")
    populations.add_argument(
        "--out", required=True, help="output directory (one loop run per population, populations.json/.md/.png)"
    )
    populations.add_argument(
        "--populations",
        type=population_names,
        default=list(DEFAULT_POPULATIONS),
        help=f"shipped populations, one round each (default {','.join(DEFAULT_POPULATIONS)}; docs/LOOP.md)",
    )
    populations.add_argument(
        "--conversations",
        type=int,
        default=150,
        help="simulated conversations to train on per population (default 150)",
    )
    populations.add_argument(
        "--eval-conversations", type=int, default=96, help="evaluation players per bundle (default 96)"
    )
    populations.add_argument("--config", help="training config TOML (docs/TRAINING.md); the same for every population")
    populations.add_argument("--seed", type=int, default=0)
    populations.add_argument("--max-new-tokens", type=int, help="cap on each NPC line")
    add_table_promote_when_argument(populations)
    add_confirm_arguments(populations)
    add_persona_probe_argument(populations)
    populations.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run in --out (same settings; --populations may name others): finished populations"
        " are read back, an unfinished one goes on from its last finished stage",
    )
    populations.add_argument(
        "--same-play-as",
        metavar="RUN",
        help="an earlier npcrl populations --out with the same play settings (any --config): each round takes"
        " its simulated play and base evaluation instead of playing them again, and the table adds each"
        " candidate's paired gain over RUN's (how two training setups are compared; docs/LOOP.md)",
    )
    add_concurrent_argument(populations)
    populations.set_defaults(func=cmd_populations)
