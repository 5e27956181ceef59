"""The pygame application: window, frame loop, and the wiring of npcrl to the game.

Each frame: events → ``Controls`` → ``Game.apply``; ``Game.update`` (poll the NPC's streaming
line, move, hot swap); ``Renderer.draw``; flip; wait for the next frame. Nothing in a frame calls
a blocking npcrl function: generation, log writing, store polling, model loading and reward
stats all run in their own threads.

Events and the clock are injectable, so tests and the benchmark drive the real loop with
scripted input (``App(..., events=queue, clock=FixedClock())``, then ``run_until``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pygame

from game_demo.bundles import choose_bundle, first_start_message, store_bundle_id
from game_demo.cli import GameOptions, parse_args
from game_demo.controls import Controls
from game_demo.game import Game
from game_demo.npcs import AgentFactory, build_npcs, default_agent_factory
from game_demo.render import HudInfo, Renderer
from game_demo.stats import StatsWorker
from game_demo.swap import ModelSwapper
from game_demo.warmup import Prewarmer
from game_demo.world import village
from npcrl.agent.persona import Persona, builtin_personas
from npcrl.errors import NpcrlError
from npcrl.paths import default_bundle_dir
from npcrl.playlog import PlayLogWriter
from npcrl.runtime.bundle_migrate import migrate_if_old
from npcrl.runtime.model import OnnxCausalLM, SessionOptions, default_thread_count

log = logging.getLogger("game_demo")

EventSource = Callable[[], Sequence[pygame.event.Event]]
ModelLoader = Callable[[Path], OnnxCausalLM]
IN_FLIGHT_WAIT_S = 10.0


class FrameClock(Protocol):
    def tick(self, framerate: int = 0) -> float: ...
    def get_fps(self) -> float: ...


class FixedClock:
    """Every frame lasts exactly ``1/fps`` s of game time, however long it really took: scripted
    runs move the player the same distance on any machine. ``sleep_s`` gives worker threads the
    CPU between frames instead of letting the loop spin."""

    def __init__(self, fps: int = 60, sleep_s: float = 0.0) -> None:
        self.fps = fps
        self.sleep_s = sleep_s

    def tick(self, framerate: int = 0) -> float:
        if self.sleep_s > 0:
            time.sleep(self.sleep_s)
        return 1000.0 / self.fps

    def get_fps(self) -> float:
        return float(self.fps)


class EventQueue:
    """Scripted input: ``push`` events, and the next frame receives them."""

    def __init__(self) -> None:
        self._events: list[pygame.event.Event] = []

    def push(self, *events: pygame.event.Event) -> None:
        self._events.extend(events)

    def __call__(self) -> list[pygame.event.Event]:
        pygame.event.pump()  # keep SDL's own queue drained, as a real loop would
        events, self._events = self._events, []
        return events


SMALL_MACHINE_CORES = 2
GIL_SWITCH_INTERVAL_S = 0.001


def session_options(options: GameOptions, cores: int | None = None) -> SessionOptions:
    """onnxruntime settings for the game. On a machine with at most two cores, one thread and no
    spinning leave a core to the frame loop: measured on 2 cores, frame p99 while an NPC generates
    went from 20.5 ms to 18.1 ms, for 15-30% fewer tokens per second (docs/GAME.md)."""
    cores = default_thread_count() if cores is None else cores
    small = cores <= SMALL_MACHINE_CORES
    threads = options.threads if options.threads is not None else (1 if small else None)
    spin = options.spin if options.spin is not None else not small
    return SessionOptions(intra_op_threads=threads, allow_spinning=spin)


class App:
    def __init__(
        self,
        options: GameOptions,
        *,
        events: EventSource | None = None,
        clock: FrameClock | None = None,
        agent_factory: AgentFactory = default_agent_factory,
        personas: Mapping[str, Persona] | None = None,
        model_loader: ModelLoader | None = None,
    ) -> None:
        pygame.init()
        # NPC turns run in worker threads; when one holds the GIL (sampling), the frame thread
        # waits up to this interval for it. Python's 5 ms default is a third of a 60 fps frame.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.options = options
        self.world = village()
        self.screen = pygame.display.set_mode((int(self.world.width), int(self.world.height)))
        pygame.display.set_caption("Oakrest - npcrl demo")
        pygame.key.set_repeat(400, 40)  # held Backspace keeps deleting
        self.events = events or pygame.event.get
        self.clock: FrameClock = clock or pygame.time.Clock()
        self.controls = Controls()
        self.frames = 0
        self.running = True
        self.message: list[str] | None = None
        """shown instead of the game (no model yet, or it failed to load); any key quits"""
        self.game: Game | None = None
        self.writer: PlayLogWriter | None = None
        self.swapper: ModelSwapper[OnnxCausalLM] | None = None
        self.stats: StatsWorker | None = None
        self.warmer: Prewarmer | None = None
        self.model_source = ""
        self._font = pygame.font.Font(None, 26)
        self._dt = 0.0
        self._closed = False
        loader = model_loader or (lambda path: OnnxCausalLM(path, session_options(options)))
        self._start(loader, agent_factory, personas)

    @property
    def exit_code(self) -> int:
        return 1 if self.message is not None else 0

    def _start(self, loader: ModelLoader, factory: AgentFactory, personas: Mapping[str, Persona] | None) -> None:
        options = self.options
        default = default_bundle_dir("q8")
        try:
            migrate_if_old(default)  # a cache exported by an earlier npcrl
        except NpcrlError as exc:
            self.message = ["The cached model bundle cannot be used:", str(exc), "", "Press any key to quit."]
            return
        choice = choose_bundle(options.bundle, options.store, default)
        if choice is None:
            self.message = first_start_message(default)
            return
        self._draw_message(["Loading the NPC model…", str(choice.path)])
        pygame.display.flip()
        try:
            model = loader(choice.path)
            self.writer = PlayLogWriter(options.logs)
        except (NpcrlError, OSError) as exc:
            self.message = ["The game cannot start:", str(exc), "", "Press any key to quit."]
            return
        self.model_source = choice.source
        npcs = build_npcs(self.world, personas or builtin_personas(), model, self.writer, factory)
        self.swapper = ModelSwapper(
            options.store, loader, known_id=store_bundle_id(options.store), poll_interval_s=options.swap_poll_s
        )
        self.stats = StatsWorker(options.logs, flush=lambda: self._flush_logs())
        self.warmer = Prewarmer()
        self.warmer.start([npc.agent for npc in npcs], model)
        self.game = Game(
            self.world,
            npcs,
            bundle_id=model.bundle_id,
            player_id=options.player_id,
            swapper=self.swapper,
            stats=self.stats,
            warmer=self.warmer,
        )
        self.renderer = Renderer(self.screen, self.world)
        log.info("model %s from %s (%s); play logs in %s", model.bundle_id, choice.path, choice.source, options.logs)

    def _flush_logs(self) -> None:
        if self.writer is not None and not self.writer.closed:
            self.writer.flush(timeout_s=5.0)

    # ------------------------------------------------------------------ the loop

    def step(self) -> bool:
        """Run one frame; False once the game should stop."""
        game = self.game
        for event in self.events():
            if game is None:
                if event.type in (pygame.QUIT, pygame.KEYDOWN):
                    self.running = False
                continue
            for action in self.controls.handle(event, typing=game.typing, in_dialogue=game.in_dialogue):
                game.apply(action)
        if game is not None:
            game.update(self._dt, *self.controls.move_vector())
            self.renderer.draw(game, self.hud())
            if game.quit_requested:
                self.running = False
        else:
            self._draw_message(self.message or [])
        pygame.display.flip()
        self._dt = self.clock.tick(self.options.fps) / 1000.0
        self.frames += 1
        return self.running

    def run(self, max_frames: int | None = None) -> int:
        """Frames until the player quits (or ``max_frames``); returns the number of frames run."""
        start = self.frames
        while (max_frames is None or self.frames - start < max_frames) and self.step():
            pass
        return self.frames - start

    def run_until(self, condition: Callable[[App], bool], max_frames: int) -> bool:
        """Frames until ``condition(self)`` holds (True) or ``max_frames`` pass or the game stops (False)."""
        for _ in range(max_frames):
            if condition(self):
                return True
            if not self.step():
                return condition(self)
        return condition(self)

    def hud(self) -> HudInfo:
        stats = self.stats
        return HudInfo(
            fps=self.clock.get_fps(),
            model_source=self.model_source,
            swap_status=self._background_status(),
            stats=stats.result if stats is not None else None,
            stats_busy=stats.busy if stats is not None else False,
            stats_error=stats.error if stats is not None else None,
            log_dir=str(self.options.logs),
        )

    def _background_status(self) -> str:
        """What the background threads are doing that the player may notice (slower first lines)."""
        parts = [self.swapper.status if self.swapper else "", self.warmer.status if self.warmer else ""]
        return "   ".join(part for part in parts if part)

    def _draw_message(self, lines: Sequence[str]) -> None:
        self.screen.fill((24, 26, 34))
        y = 120
        for line in lines:
            surface = self._font.render(line, True, (236, 232, 220))
            self.screen.blit(surface, (60, y))
            y += 32

    def close(self) -> None:
        """End an open conversation, stop the background threads and write out the play log."""
        if self._closed:
            return
        self._closed = True
        if self.game is not None:
            self.game.shutdown()
            for pending in self.game.in_flight:
                try:
                    pending.result(timeout=IN_FLIGHT_WAIT_S)  # cancelled: ends at the next token
                except TimeoutError:
                    log.warning(
                        "an NPC line did not stop within %.0f s; its turn may be missing from the log", IN_FLIGHT_WAIT_S
                    )
        if self.swapper is not None:
            self.swapper.close()
        if self.warmer is not None:
            self.warmer.close()
        if self.stats is not None:
            self.stats.wait(timeout=5.0)
        if self.writer is not None:
            self.writer.close()
        pygame.quit()


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    app = App(options)
    if app.message is not None:
        print("\n".join(app.message), file=sys.stderr)  # also for a player who started it from a terminal
    try:
        app.run(options.frames)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return app.exit_code


if __name__ == "__main__":
    sys.exit(main())
