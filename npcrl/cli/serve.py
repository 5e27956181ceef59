"""``npcrl serve``: NPC conversations for engines that are not Python, over a local WebSocket and a
chat-completions endpoint (docs/PROTOCOL.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npcrl.cli.args import add_command, add_sampler_args, positive_int, sampler_from_args
from npcrl.errors import NpcrlError
from npcrl.paths import default_bundle_dir, user_data_dir

if TYPE_CHECKING:
    from npcrl.serve.loading import ModelSource

DEFAULT_PORT = 8377
SMALL_MACHINE_CORES = 2


def default_log_dir() -> Path:
    """Where a server writes play logs unless told otherwise (the key file is not inside it)."""
    return user_data_dir() / "playlogs"


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0: any free port), got {value}")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    from npcrl.agent.config import AgentConfig
    from npcrl.playlog.writer import PlayLogWriter
    from npcrl.runtime.session import SessionOptions
    from npcrl.serve.loading import ModelSource
    from npcrl.serve.personas import server_personas
    from npcrl.serve.security import check_exposure

    try:
        from npcrl.serve.server import Listen, serve
    except ImportError as exc:  # the web libraries are an extra
        raise NpcrlError(f"npcrl serve needs the serve extra: pip install 'npcrl[serve]' ({exc})") from None
    from npcrl.serve.state import ServerState

    check_exposure(args.host, args.token)
    options = SessionOptions(kv_slots=args.kv_slots, **thread_settings(args.threads, args.spin))
    source = ModelSource(bundle=args.bundle, store=args.store, options=options)
    check_source(source)
    personas = server_personas(args.personas)
    config = AgentConfig(sampler=sampler_from_args(args, default_stops=True))
    state = ServerState(PlayLogWriter(args.logs or default_log_dir()), personas, source, config)
    return serve(state, Listen(args.host, args.port, args.token))


def thread_settings(threads: int | None, spin: bool | None, cores: int | None = None) -> dict[str, Any]:
    """onnxruntime threads for a server that runs beside a game. On at most two cores: one thread,
    no spinning, so that a core stays free for the game's frame loop and for the server's own event
    loop (which sends each line's text as it comes); elsewhere onnxruntime's defaults. A flag
    given on the command line wins."""
    from npcrl.runtime.session import default_thread_count

    small = (default_thread_count() if cores is None else cores) <= SMALL_MACHINE_CORES
    return {
        "intra_op_threads": threads if threads is not None else (1 if small else None),
        "allow_spinning": spin if spin is not None else not small,
    }


def check_source(source: ModelSource) -> None:
    """Fail at start-up, not in the background, when there is plainly nothing to load."""
    if source.store is not None and not source.store.is_dir():
        raise NpcrlError(f"--store {source.store}: no such bundle store directory")
    if source.store is None and source.bundle is None and not default_bundle_dir().is_dir():
        raise NpcrlError(
            f"no bundle at {default_bundle_dir()}: run `npcrl quickstart` to fetch the default one, or give --bundle"
        )
    if source.bundle is not None and not source.bundle.is_dir():
        raise NpcrlError(f"--bundle {source.bundle}: no such bundle directory")


def add_serve_parser(subparsers: Any) -> None:
    serve = add_command(
        subparsers,
        "serve",
        "let game engines that are not Python (Godot, Unity, Unreal, a browser) talk to NPCs over a local "
        "WebSocket and a chat-completions endpoint (docs/PROTOCOL.md)",
        "npcrl serve --bundle bundles/smol-q8 --logs playlogs\nnpcrl serve --store bundles/store --host 0.0.0.0 --token s3cret",
    )
    model = serve.add_mutually_exclusive_group()
    model.add_argument("--bundle", type=Path, help="bundle to serve (default: the cached default bundle)")
    model.add_argument(
        "--store", type=Path, help="bundle store: serve its promoted bundle; new conversations follow promotions"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)"
    )
    serve.add_argument("--logs", type=Path, default=None, help="play-log directory (default: the user's play-log dir)")
    serve.add_argument("--token", help="bearer token every client must send; required with a --host off loopback")
    serve.add_argument("--personas", type=Path, help="directory of persona cards, added to the built-in ones")
    serve.add_argument("--kv-slots", type=positive_int, default=8, help="conversations generating at once (default 8)")
    serve.add_argument(
        "--threads",
        type=positive_int,
        help="onnxruntime threads per pass (default: 1 on at most 2 cores, else up to 4)",
    )
    serve.add_argument(
        "--spin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let idle onnxruntime threads busy-wait (default: off on at most 2 cores, else on)",
    )
    add_sampler_args(serve)
    serve.set_defaults(func=cmd_serve, max_new_tokens=60)  # the agent's default line length
