"""Where frames get their input and their time: pygame's own, or scripted for tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import pygame

EventSource = Callable[[], Sequence[pygame.event.Event]]


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
