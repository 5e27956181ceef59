"""Argument types, shared flags and the subcommand shape every ``npcrl`` command uses."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

from npcrl.privacy.pseudonym import is_pseudonym

if TYPE_CHECKING:
    from npcrl.runtime.sampler import SamplerConfig
    from npcrl.sim.profiles import PlayerProfile

_AGE = re.compile(r"(\d+(?:\.\d+)?)([hdw])")
_AGE_UNIT_S = {"h": 3600, "d": 86400, "w": 7 * 86400}

DEFAULT_CONCURRENT = 4
"""four NPCs generating at once gave 1.6x the throughput of one (docs/BENCHMARKS.md), and four
stays within half the default 8 KV slots"""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def age_seconds(text: str) -> float:
    """``30d``, ``12h``, ``2w`` (hours, days, weeks) in seconds."""
    match = _AGE.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected an age like 30d, 12h or 2w (> 0), got {text!r}")
    return float(match.group(1)) * _AGE_UNIT_S[match.group(2)]


def pseudonym_arg(text: str) -> str:
    if not is_pseudonym(text):
        raise argparse.ArgumentTypeError(f"expected a pseudonym like p- and 32 hex digits, got {text!r}")
    return text


def add_command(
    subparsers: Any, name: str, help_text: str, example: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with ``Example:`` and ``example`` (one or more command lines,
    each on its own line, verbatim)."""
    return subparsers.add_parser(
        name,
        help=help_text,
        description=description or help_text[0].upper() + help_text[1:] + ".",
        epilog="Example:\n  " + example.replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_concurrent_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        "--concurrent",
        dest="concurrent",
        type=positive_int,
        default=DEFAULT_CONCURRENT,
        help=f"conversations played at once (default {DEFAULT_CONCURRENT}; the model gets twice as many KV"
        " slots, so each keeps its cache between turns); the results do not depend on it",
    )


def add_table_promote_when_argument(parser: argparse.ArgumentParser) -> None:
    """``--promote-when`` for the commands that report rounds in a table (``npcrl curve``, ``npcrl
    populations``): it says what their "promoted" column means, and is strict by default."""
    from npcrl.loop.decision import PROMOTE_WHEN

    parser.add_argument(
        "--promote-when",
        choices=PROMOTE_WHEN,
        default="significant",
        help="what 'promoted' in the table means: the paired interval above 0 (significant, the default)"
        " or a higher mean (better); every guard must hold either way",
    )


def add_confirm_arguments(parser: argparse.ArgumentParser) -> None:
    """``--confirm-conversations`` and ``--confirm-rule`` (``npcrl loop``, ``npcrl populations``):
    fresh players, a new seed each round, who join the promotion decision."""
    from npcrl.loop.settings import CONFIRM_RULES

    parser.add_argument(
        "--confirm-conversations",
        type=int,
        default=0,
        help="also play the candidate and the current bundle against this many fresh players (a new seed "
        "each round) before promoting, as --confirm-rule says (default 0: no confirmation)",
    )
    parser.add_argument(
        "--confirm-rule",
        choices=CONFIRM_RULES,
        default="both",
        help="both: a candidate that wins on the evaluation players must win on the fresh ones too; pooled: "
        "one with the higher mean there is judged by --promote-when on both sets' pairs together, "
        "one test with more power (guards hold on each set either way)",
    )


def add_persona_probe_argument(parser: argparse.ArgumentParser) -> None:
    """``--persona-probe-lines`` (``npcrl loop``, ``curve``, ``populations``): the contradiction guard's probe."""
    parser.add_argument(
        "--persona-probe-lines",
        type=non_negative_int,
        default=200,
        help="lines per persona of the persona probe both bundles answer each round; the contradiction guard "
        "vetoes a candidate whose probe share rose beyond chance (default 200; 0: no probe, the guard reads "
        "the evaluation's play)",
    )


def persona_cards(directory: str | None) -> list[Any]:
    """The persona cards in ``directory`` (``*.toml``), or the shipped ones; none there is an error."""
    from npcrl.agent.persona import builtin_personas, load_personas
    from npcrl.errors import NpcrlError

    personas = load_personas(directory) if directory else builtin_personas()
    if not personas:
        raise NpcrlError(f"{directory}: no persona cards (*.toml)")
    return list(personas.values())


def population_name(text: str) -> str:
    """A shipped player population's name (``npcrl.sim.populations``), checked when the flag is given."""
    from npcrl.sim.populations import builtin_populations

    known = builtin_populations()
    if text not in known:
        raise argparse.ArgumentTypeError(f"unknown player population {text!r}; known: {', '.join(known)}")
    return text


def add_players_arguments(parser: argparse.ArgumentParser) -> None:
    """``--players FILE_OR_DIR`` or ``--population NAME`` (not both); ``player_profiles`` reads them."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--players", help="player profile .toml, or a directory of them (default: the shipped profiles)")
    group.add_argument(
        "--population",
        type=population_name,
        help="a shipped population of players who share one preference: default, questioners,"
        " lore_seekers, brief, humour (docs/LOOP.md)",
    )


def player_profiles(args: argparse.Namespace) -> dict[str, PlayerProfile]:
    """The profiles ``--players`` or ``--population`` name; neither: the shipped ones (``default``)."""
    from npcrl.sim.populations import load_population
    from npcrl.sim.profiles import load_profiles

    if args.players:
        return load_profiles(args.players)
    return load_population(args.population or "default")


def add_sampler_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=0.7, help="0 means greedy (default 0.7)")
    parser.add_argument("--top-k", type=int, default=0, help="0 disables (default)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus mass (default 0.9)")
    parser.add_argument("--repetition-penalty", type=float, default=1.1, help="default 1.1")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")


def sampler_from_args(args: argparse.Namespace, default_stops: bool = False) -> SamplerConfig:
    """The ``SamplerConfig`` the flags of ``add_sampler_args`` ask for; ``default_stops`` adds the
    agent's stop strings in front of ``--stop``."""
    from npcrl.runtime.sampler import SamplerConfig

    stops = tuple(args.stop or ())
    if default_stops:
        from npcrl.agent.npc_agent import DEFAULT_STOPS

        stops = DEFAULT_STOPS + stops
    return SamplerConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        stop_strings=stops,
    )
