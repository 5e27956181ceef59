"""``npcrl persona-probe --bundle A [--bundle B ...]``: how often each bundle's NPCs contradict their
persona card when asked who they are (``npcrl.evaluation.persona_probe``), and, for more than one
bundle, each one's rise over the first on the same conversations."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from npcrl.cli.args import add_command, add_concurrent_argument, persona_cards, positive_int
from npcrl.errors import NpcrlError


def cmd_persona_probe(args: argparse.Namespace) -> int:
    from npcrl.agent.config import capped_config
    from npcrl.durable import atomic_write
    from npcrl.evaluation.persona_probe import PROBE_SHARE, probe_personas, probe_rise
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.sim.ordered import session_options_for

    if len(set(args.bundle)) < len(args.bundle):
        raise NpcrlError(f"--bundle: each bundle once, got {args.bundle}")
    if args.out and Path(args.out).exists():
        raise NpcrlError(f"{args.out}: already exists; the probe writes a new file")
    personas = persona_cards(args.personas)
    config = capped_config(args.max_new_tokens)
    results: dict[str, dict[str, Any]] = {}
    for bundle in args.bundle:
        model = OnnxCausalLM(bundle, session_options_for(args.concurrent))
        progress = _progress_printer(time.perf_counter())
        probe = probe_personas(model, personas, config, args.lines, args.seed, args.concurrent, progress=progress)
        rows = results[bundle] = probe.rows()
        share, low, high = rows[PROBE_SHARE]
        print(
            f"{bundle}: {sum(probe.contradicting)} of {sum(probe.lines)} lines contradict the card, "
            f"{share:.3f} [{low:.3f}, {high:.3f}]; by kind {dict(sorted(probe.reasons.items()))}; "
            f"{probe.fallbacks} lines were not the model's (fallback or filtered)",
            flush=True,
        )
    first = args.bundle[0]
    for bundle in args.bundle[1:]:
        rise = probe_rise(results[bundle], results[first])
        assert rise is not None  # the same setup for every bundle
        results[bundle]["rise over the first bundle (95% CI)"] = list(rise)
        print(f"{bundle} vs {first}: {rise[0]:+.3f} [{rise[1]:+.3f}, {rise[2]:+.3f}] per line, paired")
    if args.out:
        atomic_write(Path(args.out), json.dumps(results, indent=1) + "\n")
        print(f"rows in {args.out}")
    return 0


def _progress_printer(started: float) -> Callable[[str, float], None]:
    """Prints each persona's share as it is counted, with the seconds since ``started``."""

    def progress(persona: str, share: float) -> None:
        elapsed = time.perf_counter() - started
        print(f"  {persona}: {share:.3f} of its lines contradict the card [{elapsed:.0f} s]", flush=True)

    return progress


def add_probe_parser(subparsers: Any) -> None:
    probe = add_command(
        subparsers,
        "persona-probe",
        "how often bundles' NPCs contradict their persona cards when asked who they are",
        "npcrl persona-probe --bundle bundles/smol-q8 --bundle run/train/bundle --lines 200 --out probe.json",
        description="Each persona answers --lines player lines in four-turn conversations that alternate identity "
        "questions with ordinary ones; the agent's check is off, so each line is the model's first draw. Every "
        "bundle plays the same conversations and seeds, so a bundle's rise over the first is paired. "
        "npcrl loop, curve and populations probe with their --seed + 30000.",
    )
    probe.add_argument("--bundle", action="append", required=True, help="a bundle directory; repeat to compare")
    probe.add_argument("--lines", type=positive_int, default=200, help="NPC lines per persona (default 200)")
    probe.add_argument("--seed", type=int, default=0, help="draws the player lines and sampler seeds (default 0)")
    probe.add_argument("--personas", help="directory of persona cards (*.toml; default: the shipped ones)")
    probe.add_argument("--max-new-tokens", type=positive_int, help="cap on each NPC line")
    add_concurrent_argument(probe)
    probe.add_argument("--out", help="write each bundle's rows (share, per-conversation counts, setup) as JSON")
    probe.set_defaults(func=cmd_persona_probe)
