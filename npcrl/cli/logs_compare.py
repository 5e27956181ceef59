"""``npcrl logs compare CANDIDATE CURRENT``: the paired engagement gain of two evaluations already
played (e.g. a loop round's ``eval/candidate`` and ``eval/current``), over all players and per
player profile, without playing anything again."""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING, Any

from npcrl.cli.args import add_command, add_players_arguments, player_profiles
from npcrl.errors import LogFormatError

if TYPE_CHECKING:
    from npcrl.evaluation.by_profile import ProfileGain


def add_compare_parser(sub: Any) -> None:
    compare = add_command(
        sub,
        "compare",
        "paired engagement gain of two evaluations' logs, over all players and per player profile",
        "npcrl logs compare loop-run/round-1/eval/candidate loop-run/round-1/eval/current --population default",
        description="The paired engagement gain of CANDIDATE over CURRENT: two play-log directories of simulated\n"
        "play with the same seed and conversations (npcrl eval, a loop round's eval/), conversation k of\n"
        "one paired with conversation k of the other, and the same split by the player profile that\n"
        "played each conversation; --and pools in more evaluations of the same two bundles. Give the\n"
        "players the evaluations played (--players or --population) and,\n"
        "for logs written on another machine, the pseudonym key they were written with (--key-file).",
    )
    compare.add_argument("candidate", help="play-log directory of the evaluated bundle")
    compare.add_argument("current", help="play-log directory of the bundle it is compared with (e.g. the base)")
    compare.add_argument(
        "--and",
        dest="more",
        nargs=2,
        action="append",
        default=[],
        metavar=("CANDIDATE", "CURRENT"),
        help="another evaluation of the same two bundles with other players (e.g. fresh players), pooled in",
    )
    add_players_arguments(compare)
    compare.add_argument("--spec", help="reward spec TOML (default: the shipped one)")
    compare.add_argument(
        "--key-file", help="the pseudonym key the logs were written with (default: NPCRL_KEY_FILE or the user data dir)"
    )
    compare.add_argument("--seed", type=int, default=0, help="seeds the bootstrap intervals")
    compare.add_argument("--json", action="store_true", help="print one JSON object")
    compare.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from npcrl.evaluation.by_profile import ProfileGain, pooled_gain_by_profile
    from npcrl.evaluation.metrics import paired_gain, pooled_rewards_of_logs
    from npcrl.paths import default_key_path
    from npcrl.privacy.pseudonym import load_key
    from npcrl.reward.spec import default_reward_spec, load_reward_spec

    spec = load_reward_spec(args.spec) if args.spec else default_reward_spec()
    names = list(player_profiles(args))
    pairs = [(args.candidate, args.current), *((candidate, current) for candidate, current in args.more)]
    candidate, current = pooled_rewards_of_logs(pairs, spec)
    overall = ProfileGain(
        profile="all players",
        conversations=len(candidate),
        current=math.fsum(current) / len(current),
        candidate=math.fsum(candidate) / len(candidate),
        gain=paired_gain(candidate, current, seed=args.seed),
    )
    key = load_key(args.key_file or default_key_path())
    try:
        splits = pooled_gain_by_profile(pairs, spec, names, key, seed=args.seed)
    except LogFormatError as exc:
        if args.players or args.population:
            raise
        raise LogFormatError(f"{exc}{_population_hint(pairs, key)}") from exc
    if args.json:
        print(json.dumps({"all": overall.to_json(), "profiles": [s.to_json() for s in splits]}, indent=1))
        return 0
    header = ("players", "conversations", "current", "candidate", "relative", "paired gain [95% CI]")
    lines = [header, *(_cells(split) for split in [overall, *splits])]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True))]))
    return 0


def _population_hint(pairs: list[tuple[str, str]], key: bytes) -> str:
    """For logs the shipped default profiles did not play: the shipped populations whose players
    did play them (a ``npcrl populations`` run's evaluations), as advice to add ``--population``."""
    from npcrl.evaluation.by_profile import logged_players
    from npcrl.sim.draws import simulated_players
    from npcrl.sim.populations import builtin_populations, load_population

    players = logged_players([log_dir for pair in pairs for log_dir in pair])
    fits = [name for name in builtin_populations() if players <= simulated_players(load_population(name), key).keys()]
    if not fits:
        return ""
    return f"; the players of the shipped population {' or '.join(map(repr, fits))} did: add --population {fits[0]}"


def _cells(split: ProfileGain) -> tuple[str, ...]:
    mean, low, high = split.gain
    relative = f"{mean / abs(split.current):+.1%}" if split.current else "n/a"
    return (
        split.profile,
        str(split.conversations),
        f"{split.current:.3f}",
        f"{split.candidate:.3f}",
        relative,
        f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
    )
