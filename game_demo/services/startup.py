"""Starting and stopping what the game runs on: the model, the play-log writer, the NPCs and the
background workers (hot swap, persona warm-up, reward stats). No pygame: the app shows the
messages this module returns and draws the game it builds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from game_demo.cli import GameOptions
from game_demo.rules.game import Game
from game_demo.rules.npcs import AgentFactory, build_npcs, default_agent_factory
from game_demo.rules.stats import StatsWorker
from game_demo.rules.world import World
from game_demo.services.bundles import choose_bundle, first_start_message, store_bundle_id
from game_demo.services.swap import ModelSwapper
from game_demo.services.warmup import Prewarmer
from npcrl import (
    NpcrlError,
    OnnxCausalLM,
    Persona,
    PlayLogWriter,
    SessionOptions,
    builtin_personas,
    default_bundle_dir,
    default_thread_count,
    migrate_if_old,
)

log = logging.getLogger("game_demo")

ModelLoader = Callable[[Path], OnnxCausalLM]
IN_FLIGHT_WAIT_S = 10.0
STATS_WAIT_S = 5.0
SMALL_MACHINE_CORES = 2


def session_options(options: GameOptions, cores: int | None = None) -> SessionOptions:
    """onnxruntime settings for the game. On a machine with at most two cores, one thread and no
    spinning leave a core to the frame loop: measured on 2 cores, frame p99 while an NPC generates
    went from 20.5 ms to 18.1 ms, for 15-30% fewer tokens per second (docs/GAME.md)."""
    cores = default_thread_count() if cores is None else cores
    small = cores <= SMALL_MACHINE_CORES
    threads = options.threads if options.threads is not None else (1 if small else None)
    spin = options.spin if options.spin is not None else not small
    return SessionOptions(intra_op_threads=threads, allow_spinning=spin)


def default_loader(options: GameOptions) -> ModelLoader:
    return lambda path: OnnxCausalLM(path, session_options(options))


class StartFailed(Exception):
    """The game cannot start; ``lines`` is what the player reads instead (any key quits)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class StartRequest:
    """How to start: the options, the village, and what tests and benchmarks replace."""

    options: GameOptions
    world: World
    loader: ModelLoader
    agent_factory: AgentFactory = default_agent_factory
    personas: Mapping[str, Persona] | None = None
    on_loading: Callable[[Path], None] | None = None
    """called before the (slow) model load, so the app can say what it is loading"""


@dataclass
class Running:
    """A started game and the workers beside it."""

    game: Game
    writer: PlayLogWriter
    swapper: ModelSwapper[OnnxCausalLM]
    stats: StatsWorker
    warmer: Prewarmer
    model_source: str
    """"--bundle", "store" or "default": shown to the player so a surprising model can be traced"""

    def background_status(self) -> str:
        """What the background threads are doing that the player may notice (slower first lines)."""
        return "   ".join(part for part in (self.swapper.status, self.warmer.status) if part)

    def close(self) -> None:
        """End an open conversation, stop the workers and write out the play log."""
        self.game.shutdown()
        for pending in self.game.in_flight:
            try:
                pending.result(timeout=IN_FLIGHT_WAIT_S)  # cancelled: ends at the next token
            except TimeoutError:
                log.warning(
                    "an NPC line did not stop within %.0f s; its turn may be missing from the log", IN_FLIGHT_WAIT_S
                )
        self.swapper.close()
        self.warmer.close()
        self.stats.wait(timeout=STATS_WAIT_S)
        self.writer.close()


def start_game(request: StartRequest) -> Running:
    """Choose the bundle, load it, open the play log and start the NPCs and workers; raises
    ``StartFailed`` with the player's message when there is no usable model."""
    options = request.options
    default = default_bundle_dir("q8")
    try:
        migrate_if_old(default)  # a cache exported by an earlier npcrl
    except NpcrlError as exc:
        raise StartFailed(["The cached model bundle cannot be used:", str(exc), "", "Press any key to quit."]) from exc
    choice = choose_bundle(options.bundle, options.store, default)
    if choice is None:
        raise StartFailed(first_start_message(default))
    if request.on_loading is not None:
        request.on_loading(choice.path)
    try:
        model = request.loader(choice.path)
        writer = PlayLogWriter(options.logs)
    except (NpcrlError, OSError) as exc:
        raise StartFailed(["The game cannot start:", str(exc), "", "Press any key to quit."]) from exc
    running = _start_workers(request, model, writer, choice.source)
    log.info("model %s from %s (%s); play logs in %s", model.bundle_id, choice.path, choice.source, options.logs)
    return running


def _start_workers(request: StartRequest, model: OnnxCausalLM, writer: PlayLogWriter, source: str) -> Running:
    options = request.options
    npcs = build_npcs(request.world, request.personas or builtin_personas(), model, writer, request.agent_factory)
    swapper = ModelSwapper(
        options.store, request.loader, known_id=store_bundle_id(options.store), poll_interval_s=options.swap_poll_s
    )
    stats = StatsWorker(options.logs, flush=lambda: flush_writer(writer))
    warmer = Prewarmer()
    warmer.start([npc.agent for npc in npcs])
    game = Game(
        request.world,
        npcs,
        bundle_id=model.bundle_id,
        player_id=options.player_id,
        swapper=swapper,
        stats=stats,
        warmer=warmer,
    )
    return Running(game, writer, swapper, stats, warmer, source)


def flush_writer(writer: PlayLogWriter) -> None:
    """Put the records still queued in the writer on disk, so the stats read the latest play."""
    if not writer.closed:
        writer.flush(timeout_s=5.0)
