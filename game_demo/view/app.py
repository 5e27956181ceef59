"""The pygame application: window, frame loop, and the messages shown instead of the game.

Each frame: events → ``Controls`` → ``Game.apply``; ``Game.update`` (poll the NPC's streaming
line, move, hot swap); ``Renderer.draw``; flip; wait for the next frame. Nothing in a frame calls
a blocking npcrl function: generation, log writing, store polling, model loading and reward
stats all run in their own threads (``game_demo.services.startup`` starts and stops them).

Events and the clock are injectable, so tests and the benchmark drive the real loop with
scripted input (``App(..., events=queue, clock=FixedClock())``, then ``run_until``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pygame

from game_demo.cli import GameOptions
from game_demo.rules.game import Game
from game_demo.rules.npcs import AgentFactory, default_agent_factory
from game_demo.rules.stats import StatsWorker
from game_demo.rules.world import village
from game_demo.services.startup import ModelLoader, Running, StartFailed, StartRequest, default_loader, start_game
from game_demo.services.swap import ModelSwapper
from game_demo.services.warmup import Prewarmer
from game_demo.view.clock import EventSource, FrameClock
from game_demo.view.controls import Controls
from game_demo.view.render import HudInfo, Renderer
from npcrl import OnnxCausalLM, Persona

GIL_SWITCH_INTERVAL_S = 0.001
MESSAGE_BACKGROUND = (24, 26, 34)
MESSAGE_TEXT = (236, 232, 220)


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
        self.services: Running | None = None
        self._font = pygame.font.Font(None, 26)
        self._dt = 0.0
        self._closed = False
        request = StartRequest(
            options,
            self.world,
            model_loader or default_loader(options),
            agent_factory,
            personas,
            on_loading=self._show_loading,
        )
        try:
            self.services = start_game(request)
        except StartFailed as failed:
            self.message = failed.lines
            return
        self.renderer = Renderer(self.screen, self.world)

    @property
    def exit_code(self) -> int:
        return 1 if self.message is not None else 0

    @property
    def game(self) -> Game | None:
        return self.services.game if self.services is not None else None

    @property
    def swapper(self) -> ModelSwapper[OnnxCausalLM] | None:
        return self.services.swapper if self.services is not None else None

    @property
    def stats(self) -> StatsWorker | None:
        return self.services.stats if self.services is not None else None

    @property
    def warmer(self) -> Prewarmer | None:
        return self.services.warmer if self.services is not None else None

    @property
    def model_source(self) -> str:
        return self.services.model_source if self.services is not None else ""

    def _show_loading(self, path: Path) -> None:
        self._draw_message(["Loading the NPC model…", str(path)])
        pygame.display.flip()

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
        services = self.services
        stats = self.stats
        return HudInfo(
            fps=self.clock.get_fps(),
            model_source=self.model_source,
            swap_status=services.background_status() if services is not None else "",
            stats=stats.result if stats is not None else None,
            stats_busy=stats.busy if stats is not None else False,
            stats_error=stats.error if stats is not None else None,
            log_dir=str(self.options.logs),
        )

    def _draw_message(self, lines: Sequence[str]) -> None:
        self.screen.fill(MESSAGE_BACKGROUND)
        y = 120
        for line in lines:
            surface = self._font.render(line, True, MESSAGE_TEXT)
            self.screen.blit(surface, (60, y))
            y += 32

    def close(self) -> None:
        """End an open conversation, stop the background threads and write out the play log."""
        if self._closed:
            return
        self._closed = True
        if self.services is not None:
            self.services.close()
        pygame.quit()
