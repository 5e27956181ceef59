"""``npcrl eval --bundle B [--against A]``: simulated players against bundles, a table and a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from npcrl.cli.args import add_command, add_concurrent_argument, add_players_arguments, persona_cards, player_profiles
from npcrl.errors import NpcrlError


def cmd_eval(args: argparse.Namespace) -> int:
    from npcrl.evaluation.metrics import log_metrics
    from npcrl.evaluation.report import compare_table, rows_from_columns, write_report
    from npcrl.evaluation.run import EvalSettings, evaluate_bundle
    from npcrl.reward.spec import default_reward_spec, load_reward_spec
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.sim.ordered import session_options_for

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise NpcrlError(f"{out}: report directory is not empty")
    if args.against and args.against_logs:
        raise NpcrlError("give --against (play it now) or --against-logs (an earlier evaluation), not both")
    settings = EvalSettings(
        conversations=args.conversations,
        seed=args.seed,
        kl_turns=args.kl_turns,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrent,
    )
    spec = load_reward_spec(args.spec) if args.spec else default_reward_spec()
    personas = persona_cards(args.personas)
    profiles = list(player_profiles(args).values())
    bundles = {"against": args.against, "bundle": args.bundle} if args.against else {"bundle": args.bundle}
    options = session_options_for(args.concurrent)
    paths = {*bundles.values(), *([args.reference] if args.reference else [])}
    models = {path: OnnxCausalLM(path, options) for path in paths}
    reference_dir = args.reference or args.against
    reference = models[reference_dir] if reference_dir else None
    columns: dict[str, Any] = {}
    labels = {}
    if args.against_logs:
        played_by = _checked_against_logs(args, personas, [profile.name for profile in profiles])
        label = labels["against"] = f"against (logs of {played_by})"
        columns[label] = dict(log_metrics(args.against_logs, spec, args.seed, personas=personas).as_dict())
    for name, path in bundles.items():
        label = labels[name] = f"{name} ({Path(path).name})"
        print(f"evaluating {label} ...", flush=True)
        columns[label] = evaluate_bundle(
            models[path], out / "logs" / name, personas, profiles, spec, settings, reference=reference
        )
    if args.against or args.against_logs:
        against = Path(args.against_logs) if args.against_logs else out / "logs" / "against"
        names = [profile.name for profile in profiles]
        columns[labels["bundle"]].update(_paired_rows(out / "logs" / "bundle", against, spec, names, args.seed))
    rows = rows_from_columns(columns)
    print(compare_table(rows))
    png, html = write_report(out, rows, title=f"npcrl eval: {', '.join(columns)}")
    (out / "metrics.json").write_text(json.dumps(columns, indent=1), encoding="utf-8")
    print(f"report: {html}" + (f" (plot {png})" if png else ""))
    return 0


def _checked_against_logs(args: argparse.Namespace, personas: list[Any], profiles: list[str]) -> str:
    """The bundle id ``--against-logs`` were played with, once they are checked to be this evaluation's
    conversations (and, where this machine's key shows them, its players)."""
    from npcrl.agent.npc_agent import AgentConfig
    from npcrl.evaluation.earlier import check_evaluation_logs

    logs = Path(args.against_logs)
    cap = args.max_new_tokens or AgentConfig().sampler.max_new_tokens
    played_by, checked = check_evaluation_logs(logs, args.seed, args.conversations, personas, cap, profiles)
    if not checked:
        print(
            f"{logs}: its players are not checked: none is a profile given or shipped under this"
            " machine's pseudonym key (logs from another machine?); pass the players it was played with"
        )
    return played_by


def _paired_rows(candidate_logs: Path, current_logs: Path, spec: Any, profiles: list[str], seed: int) -> dict[str, Any]:
    """The bundle's paired gain over the other side, over all players and (with several profiles)
    per profile. Same players and seeds: conversation k of one side pairs with conversation k of
    the other."""
    from npcrl.evaluation.by_profile import paired_gain_rows
    from npcrl.evaluation.metric_names import PAIRED_GAIN
    from npcrl.evaluation.metrics import paired_gain_of_logs

    rows: dict[str, Any] = {PAIRED_GAIN: paired_gain_of_logs(candidate_logs, current_logs, spec, seed=seed)}
    split, left_out = paired_gain_rows(candidate_logs, current_logs, spec, profiles, seed=seed)
    if left_out:  # --against-logs written under another key, or by other players
        print(left_out)
    return {**rows, **split}


def add_eval_parser(sub: Any) -> None:
    parser = add_command(
        sub,
        "eval",
        "simulated players against one bundle or two side by side",
        "npcrl eval --bundle runs/r1/bundle --against bundles/smol-q8 --conversations 24 --out eval-report",
    )
    parser.add_argument("--bundle", required=True, help="the bundle to evaluate")
    parser.add_argument("--against", help="a second bundle (e.g. the base) played with the same players and seeds")
    parser.add_argument(
        "--against-logs",
        help="instead of --against: one bundle's play logs from an earlier evaluation (e.g. its OUT/logs/against)"
        " played with the same --seed, --conversations, players, personas and --max-new-tokens; paired without"
        " playing it again",
    )
    parser.add_argument("--reference", help="bundle the KL per line is measured against (default: --against)")
    parser.add_argument("--conversations", type=int, default=24, help="simulated conversations per bundle")
    parser.add_argument("--seed", type=int, default=0)
    add_players_arguments(parser)
    parser.add_argument("--personas", help="directory of persona cards (default: the built-in NPCs)")
    parser.add_argument("--spec", help="reward spec TOML (default: the shipped one)")
    parser.add_argument("--kl-turns", type=int, default=48, help="NPC turns used for the KL per line")
    parser.add_argument("--max-new-tokens", type=int, help="cap on each NPC line")
    add_concurrent_argument(parser)
    parser.add_argument("--out", default="eval-report", help="report directory (logs, metrics.json, HTML, PNG)")
    parser.set_defaults(func=cmd_eval)
