"""The ``npcrl`` command line. Heavy imports (torch, transformers) happen inside the commands that
need them, so ``npcrl generate`` works with only the runtime installed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from npcrl.errors import NpcrlError
from npcrl.paths import default_bundle_dir

DEFAULT_QUANT = "q8"
QUICKSTART_PERSONA = (
    "You are Brom, the blacksmith of the village of Oakrest. You are gruff but kind, proud of your "
    "craft, and you speak in short, plain sentences. Stay in character."
)
QUICKSTART_LINES = (
    "Good morning! Can you fix my sword?",
    "What is the news in the village?",
)


def _cmd_train(args: argparse.Namespace) -> int:
    """Offline PPO from play logs; under torchrun every rank runs this and rank 0 writes the outputs."""
    from npcrl.train.config import load_train_config
    from npcrl.train.run import train

    config = load_train_config(args.config)
    if args.seed is not None:
        config.seed = args.seed
        config.validate()
    result = train(
        args.logs,
        args.bundle,
        args.out,
        config,
        base_model=args.base_model,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if result is not None:
        print(
            json.dumps(
                {
                    "checkpoint": str(result.checkpoint),
                    "bundle": str(result.bundle) if result.bundle else None,
                    "report": str(result.report / "report.md"),
                }
            )
        )
    return 0


def _cmd_reward_model_train(args: argparse.Namespace) -> int:
    """Train an engagement predictor on the logs and print its held-out metrics."""
    from npcrl.train.config import load_train_config
    from npcrl.train.reward_model import METRICS_FILE, format_metrics_table, train_reward_model

    config = load_train_config(args.config)
    if args.seed is not None:
        config.seed = args.seed
        config.validate()
    result = train_reward_model(
        args.logs, args.bundle, args.out, config, base_model=args.base_model, progress=not args.no_progress
    )
    print(format_metrics_table(result.metrics))
    print(json.dumps({"reward_model": str(result.out), "metrics": str(result.out / METRICS_FILE)}))
    return 0


def _cmd_reward_model_score(args: argparse.Namespace) -> int:
    """Score play logs with a saved reward model: its predictions next to the logged rewards."""
    from npcrl.train.reward_model import format_metrics_table
    from npcrl.train.reward_model_scoring import check_new_file, score_logs, write_predictions

    if args.predictions:
        check_new_file(args.predictions)  # before the scoring, not after it
    scored = score_logs(args.reward_model, args.bundle, args.logs, spec_path=args.spec)
    print(format_metrics_table({s.logs: s.metrics for s in scored}))
    summary: dict[str, object] = {"metrics": {s.logs: s.metrics for s in scored}}
    if args.predictions:
        summary["predictions"] = str(write_predictions(scored, args.predictions))
    print(json.dumps(summary))
    return 0


def _cmd_loop(args: argparse.Namespace) -> int:
    """Rounds of simulate -> train -> export -> evaluate, promoting only a better, guarded candidate."""
    from npcrl.loop.run import run_loop
    from npcrl.sim.profiles import load_profiles
    from npcrl.train.config import load_train_config

    config = load_train_config(args.config)
    players = list(load_profiles(args.players).values()) if args.players else None
    results = run_loop(
        args.bundle,
        args.out,
        rounds=args.rounds,
        conversations=args.conversations,
        eval_conversations=args.eval_conversations,
        train_config=config,
        seed=args.seed,
        players=players,
        store=args.store,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrent,
        promote_when=args.promote_when,
        confirm_conversations=args.confirm_conversations,
        resume=args.resume,
    )
    print(
        f"{sum(r.promoted for r in results)} of {len(results)} rounds promoted; summary in {Path(args.out) / 'loop.md'}"
    )
    return 0


def _cmd_model_fetch(args: argparse.Namespace) -> int:
    from exporters.fetch import fetch_default_model

    print(fetch_default_model(Path(args.dir) if args.dir else None, force=args.force))
    return 0


def _resolve_source(source: str) -> str:
    if source == "default":
        from exporters.fetch import fetch_default_model

        return str(fetch_default_model())
    return source


def _cmd_export(args: argparse.Namespace) -> int:
    from exporters.export import export_bundle

    bundle = export_bundle(
        _resolve_source(args.source), args.out, quant=args.quant, overwrite=args.force, graph=args.graph
    )
    print(bundle.root)
    return 0


def _cmd_bundle_migrate(args: argparse.Namespace) -> int:
    from npcrl.runtime.bundle_migrate import main as migrate_main

    return migrate_main(list(args.bundles))


def _cmd_bundle_info(args: argparse.Namespace) -> int:
    from npcrl.runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify=True)
    data = bundle.manifest.to_dict()
    data["bundle_id"] = bundle.bundle_id
    data.pop("chat_template", None)
    print(json.dumps(data, indent=2))
    return 0


def _sampler_from_args(args: argparse.Namespace, default_stops: bool = False):
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


def _speak(model, system: str, user: str, config) -> None:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    generation = model.generate(model.tokenizer.encode_chat(messages), config)
    for chunk in generation:
        print(chunk.text, end="", flush=True)
    result = generation.result
    print(
        f"\n  [{len(result.token_ids)} tokens, first token {result.time_to_first_token_s * 1000:.0f} ms, "
        f"{result.decode_tokens_per_s:.0f} tok/s, stop: {result.stop_reason}]",
        file=sys.stderr,
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from npcrl.runtime.model import OnnxCausalLM

    model = OnnxCausalLM(args.bundle)
    _speak(model, args.system, args.prompt, _sampler_from_args(args))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    """Fetch the default model, export its bundle once, and let an NPC speak."""
    from npcrl.runtime.bundle_migrate import migrate_if_old
    from npcrl.runtime.model import OnnxCausalLM

    bundle_dir = Path(args.bundle) if args.bundle else default_bundle_dir(DEFAULT_QUANT)
    if not args.bundle:
        migrate_if_old(bundle_dir)  # a cache filled by an earlier npcrl
    if not (bundle_dir / "manifest.json").is_file():
        from exporters.export import export_bundle

        export_bundle(_resolve_source("default"), bundle_dir, quant=DEFAULT_QUANT)
    model = OnnxCausalLM(bundle_dir)
    print(f"bundle {model.bundle_id} ({bundle_dir})", file=sys.stderr)
    config = _sampler_from_args(args)
    for line in QUICKSTART_LINES:
        print(f"\nPlayer: {line}\nBrom: ", end="", flush=True)
        _speak(model, QUICKSTART_PERSONA, line, config)
    return 0


def _resolve_persona(spec: str):
    """A built-in persona id (blacksmith, innkeeper, guard, miller) or a path to a persona TOML card."""
    from npcrl.agent.persona import builtin_personas, load_persona

    builtin = builtin_personas()
    if spec in builtin:
        return builtin[spec]
    if Path(spec).suffix == ".toml" or Path(spec).exists():
        return load_persona(spec)
    raise NpcrlError(f"persona {spec!r} is neither a built-in ({', '.join(sorted(builtin))}) nor a .toml file")


CHAT_HELP = "/+ rates the last line up, /- down, /quest NAME accepts a quest, /bye walks away"


def _cmd_chat(args: argparse.Namespace) -> int:
    """Talk to an NPC in the terminal; every turn and reaction goes to the play log."""
    import time

    from npcrl.agent.npc_agent import AgentConfig, NpcAgent
    from npcrl.playlog import PlayLogWriter
    from npcrl.runtime.model import OnnxCausalLM

    persona = _resolve_persona(args.persona)
    model = OnnxCausalLM(args.bundle)
    writer = PlayLogWriter(args.logs) if args.logs else None
    config = AgentConfig(sampler=_sampler_from_args(args, default_stops=True))
    agent = NpcAgent(model, persona, log_writer=writer, config=config)
    conversation = agent.start_conversation(args.player)
    print(f"[{persona.name}, {persona.role}; bundle {model.bundle_id}; {CHAT_HELP}]", file=sys.stderr)
    print(f"{persona.name}: {persona.greeting}")
    try:
        while not conversation.ended:
            try:
                text = input("you> ").strip()
            except EOFError:
                conversation.end("input_closed")
                break
            if not text:
                continue
            if text in ("/+", "/-"):
                if conversation.lines:
                    conversation.rate(text == "/+")
                    print("[rated]", file=sys.stderr)
                continue
            if text.startswith("/quest"):
                if conversation.lines:
                    conversation.accept_quest(text[len("/quest") :].strip() or "quest")
                    print("[quest accepted]", file=sys.stderr)
                continue
            if text in ("/bye", "/quit"):
                conversation.walk_away()
                break
            pending = conversation.respond_async(text)
            print(f"{persona.name}: ", end="", flush=True)
            while not pending.done:
                piece = pending.poll()
                if piece:
                    print(piece, end="", flush=True)
                time.sleep(0.02)
            print(pending.poll(), end="")
            line = pending.result()
            if line.text != pending.streamed_text.strip():
                # What the player is finally shown (trimmed to a sentence, or a fallback line).
                print(f"\r\033[K{persona.name}: {line.text}", end="")
            flag = " [filtered]" if line.filtered else " [fallback]" if line.fallback else ""
            print(f"{flag}")
    finally:
        if writer is not None:
            writer.close()
            print(f"[play log in {args.logs}]", file=sys.stderr)
    return 0


def _cmd_rewards(args: argparse.Namespace) -> int:
    """Score every logged turn with a reward spec and print a summary (or every turn as JSON lines)."""
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


def _cmd_promote(args: argparse.Namespace) -> int:
    from npcrl.loop.promotion import promote, repair

    if args.repair:
        if args.bundle is not None:
            raise NpcrlError(
                f"promote --repair takes only STORE; it restores a bundle from HISTORY, not {args.bundle!r}"
            )
        result = repair(args.store)
        for problem in result.problems:
            print(f"dropped: {problem}")
        if result.current is None:
            print(f"nothing promoted in {args.store} yet; nothing to repair")
        elif result.restored:
            print(f"repaired {args.store}: restored {result.current.bundle_id} ({result.current.bundle_dir})")
        else:
            print(f"{args.store} is sound: current {result.current.bundle_id} ({result.current.bundle_dir})")
        return 0
    if args.bundle is None:
        raise NpcrlError("promote needs STORE and BUNDLE (or --repair STORE)")
    promotion = promote(args.store, args.bundle)
    print(f"promoted {promotion.bundle_id} ({promotion.bundle_dir}) in {args.store}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from npcrl.loop.promotion import rollback

    promotion = rollback(args.store)
    print(f"rolled back to {promotion.bundle_id} ({promotion.bundle_dir}) in {args.store}")
    return 0


def _add_sampler_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=0.7, help="0 means greedy (default 0.7)")
    parser.add_argument("--top-k", type=int, default=0, help="0 disables (default)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus mass (default 0.9)")
    parser.add_argument("--repetition-penalty", type=float, default=1.1, help="default 1.1")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npcrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="obtain base models").add_subparsers(dest="model_command", required=True)
    fetch = model.add_parser("fetch", help="fetch SmolLM2-135M-Instruct offline into the user cache; prints its path")
    fetch.add_argument("--dir", help="target directory (default: the user cache)")
    fetch.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    fetch.set_defaults(func=_cmd_model_fetch)

    export = sub.add_parser("export", help="export an HF causal LM to an npcrl bundle (needs npcrl[train])")
    export.add_argument("source", help="HF model directory, .gguf file, hub id, or 'default' for SmolLM2-135M-Instruct")
    export.add_argument("--out", required=True, help="bundle directory to write")
    export.add_argument("--quant", choices=("fp32", "q8", "q4"), default=DEFAULT_QUANT)
    export.add_argument("--force", action="store_true", help="replace an existing bundle")
    export.add_argument(
        "--graph",
        choices=("auto", "fused", "torch"),
        default="auto",
        help="fused (Llama family, fastest; needs onnxruntime-genai), torch (traced, any supported family), "
        "auto (fused where possible)",
    )
    export.set_defaults(func=_cmd_export)

    bundle = sub.add_parser("bundle", help="inspect bundles").add_subparsers(dest="bundle_command", required=True)
    info = bundle.add_parser("info", help="verify a bundle and print its manifest")
    info.add_argument("bundle")
    info.set_defaults(func=_cmd_bundle_info)
    migrate = bundle.add_parser(
        "migrate",
        help="bring format-version-1 bundles to the current format (their id then covers the whole manifest)",
        description="Verify each bundle against its old id and rewrite its manifest in the current format; "
        "the old id is kept in provenance so its play logs still train. Example: npcrl bundle migrate bundles/smol-q8",
    )
    migrate.add_argument("bundles", nargs="+", help="bundle directories")
    migrate.set_defaults(func=_cmd_bundle_migrate)

    generate = sub.add_parser("generate", help="stream one NPC line from a bundle")
    generate.add_argument("--bundle", required=True)
    generate.add_argument("--system", default=QUICKSTART_PERSONA, help="system prompt (the persona)")
    generate.add_argument("--prompt", required=True, help="the player's line")
    _add_sampler_args(generate)
    generate.set_defaults(func=_cmd_generate)

    chat = sub.add_parser("chat", help="talk to an NPC in the terminal (" + CHAT_HELP + ")")
    chat.add_argument("--bundle", required=True)
    chat.add_argument(
        "--persona", required=True, help="built-in id (blacksmith, innkeeper, guard, miller) or a .toml card"
    )
    chat.add_argument("--logs", help="play-log directory (default: no log)")
    chat.add_argument("--player", default="player", help="player id written to the log")
    _add_sampler_args(chat)
    chat.set_defaults(func=_cmd_chat, max_new_tokens=60)

    rewards = sub.add_parser("rewards", help="score logged NPC turns with a reward spec")
    rewards.add_argument("dir", help="play-log directory")
    rewards.add_argument("--spec", help="reward spec TOML (default: the shipped one)")
    rewards.add_argument("--json", action="store_true", help="one JSON line per turn")
    rewards.set_defaults(func=_cmd_rewards)

    train = sub.add_parser(
        "train",
        help="offline PPO from play logs to a new bundle (needs npcrl[train]; runs under torchrun too)",
    )
    train.add_argument(
        "--logs",
        "--play-logs",
        dest="logs",
        required=True,
        help="play-log directory (under torchrun spell it --play-logs: torchrun's parser claims --logs)",
    )
    train.add_argument(
        "--bundle", required=True, help="the bundle the logs came from (policy and reference start here)"
    )
    train.add_argument("--out", required=True, help="output directory (checkpoints, report, HF checkpoint, bundle)")
    train.add_argument("--config", help="training config TOML ([data], [model], [ppo], [run]; see docs/TRAINING.md)")
    train.add_argument("--base-model", help="HF directory with the bundle's weights (default: the manifest's source)")
    train.add_argument("--seed", type=int, help="overrides the config's seed")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (a config with only ppo.iterations raised extends a finished run)",
    )
    train.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    train.set_defaults(func=_cmd_train)

    reward_model = sub.add_parser(
        "reward-model", help="engagement predictors learned from play logs (needs npcrl[train])"
    ).add_subparsers(dest="reward_model_command", required=True)
    rm_train = reward_model.add_parser(
        "train",
        help="train a reward model (backbone + scalar head) on the logged turn rewards; prints held-out metrics",
    )
    rm_train.add_argument(
        "--logs", required=True, nargs="+", help="play-log directory, or several to pool (different conversations)"
    )
    rm_train.add_argument("--bundle", required=True, help="the bundle the logs came from (its backbone is used)")
    rm_train.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    rm_train.add_argument(
        "--config", help="training config TOML ([data], [model] LoRA keys, [reward_model]; see docs/TRAINING.md)"
    )
    rm_train.add_argument(
        "--base-model", help="HF directory with the bundle's weights (default: the manifest's source)"
    )
    rm_train.add_argument("--seed", type=int, help="overrides the config's seed (it also picks the holdout split)")
    rm_train.add_argument("--no-progress", action="store_true", help="no progress bars")
    rm_train.set_defaults(func=_cmd_reward_model_train)
    rm_score = reward_model.add_parser(
        "score",
        help="score play logs with a saved reward model: predictions next to the logged rewards, per directory",
    )
    rm_score.add_argument("logs", nargs="+", help="play-log directories (e.g. the evaluation logs of two bundles)")
    rm_score.add_argument("--reward-model", required=True, help="directory written by npcrl reward-model train")
    rm_score.add_argument(
        "--bundle",
        required=True,
        action="append",
        help="a bundle whose logged turns to read (it and its recorded ancestors; repeat for more); "
        "each must share the reward model's tokenizer",
    )
    rm_score.add_argument("--spec", help="reward spec TOML (default: the one the reward model was trained with)")
    rm_score.add_argument("--predictions", help="also write one JSON line per turn to this new file")
    rm_score.set_defaults(func=_cmd_reward_model_score)

    from npcrl.cli.sim import add_concurrent_argument
    from npcrl.loop.run import PROMOTE_WHEN

    loop = sub.add_parser("loop", help="simulate -> train -> export -> evaluate for K rounds, promoting only winners")
    loop.add_argument("--bundle", required=True, help="the base bundle (round 1 starts from it; KL is measured to it)")
    loop.add_argument("--out", required=True, help="output directory (one folder per round, loop.md)")
    loop.add_argument("--rounds", type=int, default=1)
    loop.add_argument("--conversations", type=int, default=48, help="simulated conversations to train on per round")
    loop.add_argument("--eval-conversations", type=int, default=24, help="simulated conversations per evaluated bundle")
    loop.add_argument("--config", help="training config TOML (docs/TRAINING.md)")
    loop.add_argument("--players", help="player profile TOML or directory (default: the shipped profiles)")
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
    loop.add_argument(
        "--confirm-conversations",
        type=int,
        default=0,
        help="also play a winning candidate and the current bundle against this many fresh players "
        "(a new seed each round) and promote only if it wins there too (default 0: no confirmation)",
    )
    loop.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run in --out (same settings): finished rounds are kept, an unfinished one "
        "goes on from its last finished stage; a larger --rounds adds rounds to a finished run",
    )
    add_concurrent_argument(loop)
    loop.set_defaults(func=_cmd_loop)

    promote = sub.add_parser("promote", help="make a bundle the one games in a store pick up (atomic)")
    promote.add_argument("store", help="bundle store directory (holds the CURRENT pointer)")
    promote.add_argument("bundle", nargs="?", help="bundle directory to promote (not with --repair)")
    promote.add_argument(
        "--repair",
        action="store_true",
        help="rebuild a corrupt CURRENT from the newest HISTORY entry whose bundle still verifies",
    )
    promote.set_defaults(func=_cmd_promote)
    rollback = sub.add_parser("rollback", help="re-promote the store's previous bundle")
    rollback.add_argument("store")
    rollback.set_defaults(func=_cmd_rollback)

    from npcrl.cli.eval import add_eval_parser
    from npcrl.cli.logs import add_logs_parser
    from npcrl.cli.sim import add_simulate_parser

    add_logs_parser(sub)
    add_simulate_parser(sub)
    add_eval_parser(sub)

    quick = sub.add_parser("quickstart", help="fetch + export the default model once, then let an NPC speak")
    quick.add_argument("--bundle", help=f"bundle directory (default: the user cache, {DEFAULT_QUANT})")
    _add_sampler_args(quick)
    quick.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NpcrlError as exc:
        print(f"npcrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
