"""Frame times of the demo game while NPCs generate on the real model.

Runs the real game loop headless (SDL dummy driver) at a 60 fps cap with pygame's own clock, on
the real bundle. Per onnxruntime setting, three scenarios of ``--seconds`` each:
  idle    the player walks back and forth, nothing generates (the baseline);
  1 NPC   the player talks to Brom through the dialogue panel, sending a quick reply as soon as
          each line is finished, so Brom generates the whole time;
  4 NPCs  the same, while Mara, Captain Hedda and Osric answer other (scripted) players through
          the same agent API, so four generations share the model and the CPU (every NPC of the
          village talking at once).
Persona prefixes are prepared before measuring (as the game does at start-up).

Reports the frame interval (frame start to next frame start, what the player sees) at p50, p95,
p99 and max, the p99 of the frame's own work (events, logic, drawing, flip; without the wait for
the next frame), the share of frames over 20 ms, and the tokens per second the NPCs generated.
Target: interval p99 <= 20 ms while NPCs generate.

Usage: python bench/bench_frames.py [--bundle DIR] [--seconds 20] [--configs default,1thread]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pygame  # noqa: E402

from bench.common import print_table  # noqa: E402
from game_demo.cli import GameOptions  # noqa: E402
from game_demo.rules.dialogue import Phase  # noqa: E402
from game_demo.view.app import App  # noqa: E402
from game_demo.view.clock import EventQueue  # noqa: E402
from npcrl.agent.npc_agent import PendingLine  # noqa: E402
from npcrl.paths import default_bundle_dir  # noqa: E402
from npcrl.runtime.model import OnnxCausalLM, SessionOptions, default_thread_count  # noqa: E402

TARGET_P99_MS = 20.0
CONFIGS = {
    "default": SessionOptions(),
    "1thread": SessionOptions(intra_op_threads=1, allow_spinning=False),
}
OTHER_PLAYER_LINES = ("Good day! Any news?", "Is there work for me?", "Tell me about the village.")


class MeasuringClock:
    """pygame's clock, recording when each frame's work began and ended."""

    def __init__(self) -> None:
        self._clock = pygame.time.Clock()
        self.work: list[float] = []
        self.interval: list[float] = []
        self._frame_start = time.perf_counter()

    def tick(self, framerate: int = 0) -> float:
        before = time.perf_counter()
        ms = self._clock.tick(framerate)
        after = time.perf_counter()
        self.work.append(before - self._frame_start)
        self.interval.append(after - self._frame_start)
        self._frame_start = after
        return ms

    def get_fps(self) -> float:
        return self._clock.get_fps()

    def reset(self) -> None:
        self.work.clear()
        self.interval.clear()


@dataclass
class Row:
    config: str
    scenario: str
    interval_ms: np.ndarray
    work_ms: np.ndarray
    tokens: int
    seconds: float
    lines: int
    """NPC lines finished during the scenario"""
    bundle_id: str


class OtherPlayer:
    """Another player talking to an NPC through the agent API: a new line as soon as the last ends."""

    def __init__(self, agent: Any, name: str) -> None:
        self.conversation = agent.start_conversation(name)
        self.pending: PendingLine | None = None
        self.turns = 0

    def step(self) -> None:
        if self.pending is None or self.pending.done:
            if self.pending is not None:
                self.turns += 1
            self.pending = self.conversation.respond_async(OTHER_PLAYER_LINES[self.turns % len(OTHER_PLAYER_LINES)])
        else:
            self.pending.poll()  # what a game does each frame for a visible NPC

    def tokens(self) -> int:
        return sum(len(line.generation.token_ids) for line in self.conversation.lines if line.generation)

    def stop(self) -> None:
        self.conversation.walk_away()
        if self.pending is not None:
            self.pending.result(timeout=10)  # let the cancelled turn log before the writer closes


def key(kind: int, code: int) -> pygame.event.Event:
    return pygame.event.Event(kind, key=code, mod=0, unicode="", scancode=0)


def measure(app: App, clock: MeasuringClock, seconds: float, per_frame: Callable[[], None] | None = None) -> None:
    clock.reset()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if per_frame is not None:
            per_frame()
        app.step()


def dialogue_tokens(app: App) -> int:
    """Tokens generated so far in the open conversation (the real ``npcrl.agent.npc_agent.Conversation``)."""
    dialogue = app.game.dialogue if app.game is not None else None
    if dialogue is None:
        return 0
    conversation: Any = dialogue.conversation
    return sum(len(line.generation.token_ids) for line in conversation.lines if line.generation)


class Scenarios:
    """The three measured scenarios on one running game: idle, one NPC, every NPC busy."""

    def __init__(self, name: str, app: App, queue: EventQueue, clock: MeasuringClock, seconds: float) -> None:
        self.name, self.app, self.queue, self.clock, self.seconds = name, app, queue, clock, seconds
        game = app.game
        assert game is not None, app.message
        self.game = game
        self.replies = 0

    def row(self, scenario: str, tokens: int, lines: int) -> Row:
        interval, work = np.array(self.clock.interval) * 1e3, np.array(self.clock.work) * 1e3
        return Row(self.name, scenario, interval, work, tokens, self.seconds, lines, self.game.bundle_id)

    def idle(self) -> Row:
        """Walk east and west along the lane, turning every second."""
        self.game.player.x, self.game.player.y = 480, 335
        direction = [pygame.K_RIGHT]
        self.queue.push(key(pygame.KEYDOWN, direction[0]))
        turn_at = [time.perf_counter() + 1.0]

        def walk() -> None:
            if time.perf_counter() >= turn_at[0]:
                self.queue.push(key(pygame.KEYUP, direction[0]))
                direction[0] = pygame.K_LEFT if direction[0] == pygame.K_RIGHT else pygame.K_RIGHT
                self.queue.push(key(pygame.KEYDOWN, direction[0]))
                turn_at[0] += 1.0

        measure(self.app, self.clock, self.seconds, walk)
        row = self.row("idle", 0, 0)
        self.queue.push(key(pygame.KEYUP, direction[0]))
        self.app.step()
        return row

    def talk(self) -> None:
        """A quick reply to Brom whenever his line is done."""
        dialogue = self.game.dialogue
        if dialogue is not None and dialogue.phase is Phase.LISTENING:
            code = pygame.K_1 + self.replies % 3
            self.queue.push(key(pygame.KEYDOWN, code), key(pygame.KEYUP, code))
            self.replies += 1

    def one_npc(self) -> Row:
        self.game.player.x, self.game.player.y = 225, 335
        self.queue.push(key(pygame.KEYDOWN, pygame.K_e), key(pygame.KEYUP, pygame.K_e))
        self.app.step()
        measure(self.app, self.clock, self.seconds, self.talk)
        return self.row("1 NPC", dialogue_tokens(self.app), self.replies - 1)

    def every_npc(self) -> Row:
        """Keep talking to Brom while other players keep the rest of the village busy."""
        before = dialogue_tokens(self.app)
        others = [OtherPlayer(npc.agent, f"other-{npc.id}") for npc in self.game.npcs if npc.id != "blacksmith"]

        def talk_all() -> None:
            self.talk()
            for other in others:
                other.step()

        turns_before = self.replies
        measure(self.app, self.clock, self.seconds, talk_all)
        tokens = dialogue_tokens(self.app) - before + sum(other.tokens() for other in others)
        turns = self.replies - turns_before + sum(other.turns for other in others)
        row = self.row(f"{1 + len(others)} NPCs", tokens, turns)
        for other in others:
            other.stop()
        return row


def run_config(name: str, bundle: Path, seconds: float) -> list[Row]:
    options = CONFIGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        queue, clock = EventQueue(), MeasuringClock()
        app = App(
            GameOptions(bundle=bundle, logs=Path(tmp) / "logs", store=Path(tmp) / "store"),
            events=queue,
            clock=clock,
            model_loader=lambda path: OnnxCausalLM(path, options),
        )
        scenarios = Scenarios(name, app, queue, clock, seconds)
        started = time.perf_counter()
        while app.warmer is not None and app.warmer.busy:
            app.step()
        print(f"[{name}] persona prefixes ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        rows = [scenarios.idle(), scenarios.one_npc(), scenarios.every_npc()]
        app.close()
    return rows


def print_results(rows: list[Row]) -> None:
    print(
        f"bundle {rows[0].bundle_id}; {os.cpu_count()} CPUs, npcrl default threads {default_thread_count()}; 60 fps cap"
    )
    header = (
        f"{'onnxruntime':22s} {'scenario':8s} {'frames':>6s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} "
        f"{'max ms':>7s} {'work p99':>8s} {'>20 ms':>7s} {'lines':>5s} {'gen tok/s':>9s} {'p99<=20':>7s}"
    )
    labels = {"default": "default (spin)", "1thread": "1 thread, no spin"}
    lines = []
    for r in rows:
        iv = r.interval_ms
        over = float((iv > TARGET_P99_MS).mean() * 100)
        p99 = float(np.percentile(iv, 99))
        lines.append(
            f"{labels.get(r.config, r.config):22s} {r.scenario:8s} {len(iv):6d} {np.percentile(iv, 50):7.1f} "
            f"{np.percentile(iv, 95):7.1f} {p99:7.1f} {iv.max():7.1f} {np.percentile(r.work_ms, 99):8.1f} "
            f"{over:6.1f}% {r.lines:5d} {r.tokens / r.seconds:9.1f} {'yes' if p99 <= TARGET_P99_MS else 'NO':>7s}"
        )
    print_table(header, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_dir("q8"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--configs", default="default,1thread", help=f"comma-separated, of {', '.join(CONFIGS)}")
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        sys.exit(f"no bundle at {args.bundle}: run `npcrl quickstart` first")
    rows: list[Row] = []
    for name in args.configs.split(","):
        rows += run_config(name.strip(), args.bundle, args.seconds)
    print_results(rows)


if __name__ == "__main__":
    main()
