"""Keyboard and mouse → ``Action``s, and which movement keys are held.

Held keys are tracked from KEYDOWN/KEYUP events rather than ``pygame.key.get_pressed()`` so that
injected events (tests, the benchmark) move the player exactly like a real keyboard does.
"""

from __future__ import annotations

import pygame

from game_demo.rules.actions import Act, Action

ARROWS = {pygame.K_LEFT: (-1, 0), pygame.K_RIGHT: (1, 0), pygame.K_UP: (0, -1), pygame.K_DOWN: (0, 1)}
WASD = {pygame.K_a: (-1, 0), pygame.K_d: (1, 0), pygame.K_w: (0, -1), pygame.K_s: (0, 1)}
QUICK_KEYS = {
    pygame.K_1: 0,
    pygame.K_2: 1,
    pygame.K_3: 2,
    pygame.K_KP1: 0,
    pygame.K_KP2: 1,
    pygame.K_KP3: 2,
}
RATE_UP_KEYS = (pygame.K_PLUS, pygame.K_EQUALS, pygame.K_KP_PLUS)  # "=" is "+" without Shift on US layouts
RATE_DOWN_KEYS = (pygame.K_MINUS, pygame.K_KP_MINUS)
ENTER_KEYS = (pygame.K_RETURN, pygame.K_KP_ENTER)
SCROLL_KEYS = {pygame.K_PAGEUP: 1, pygame.K_PAGEDOWN: -1}


class Controls:
    def __init__(self) -> None:
        self.held: set[int] = set()

    def move_vector(self) -> tuple[float, float]:
        dx = dy = 0.0
        for key in self.held:
            step = ARROWS.get(key) or WASD.get(key)
            if step is not None:
                dx += step[0]
                dy += step[1]
        return dx, dy

    def handle(self, event: pygame.event.Event, *, typing: bool, in_dialogue: bool) -> list[Action]:
        """Actions for one event, given whether the reply box is open (letters are text then, not commands)."""
        kind = event.type
        if kind == pygame.QUIT:
            return [Action(Act.QUIT)]
        if kind == pygame.WINDOWFOCUSLOST:
            self.held.clear()  # the KEYUPs go to another window: the player would walk on forever
            return []
        if kind == pygame.KEYUP:
            self.held.discard(event.key)
            return []
        if kind == pygame.TEXTINPUT:
            # SDL sends TEXTINPUT alongside KEYDOWN for every printable key; only the reply box wants it.
            return [Action(Act.TYPE, text=event.text)] if typing else []
        if kind == pygame.MOUSEWHEEL:
            return [Action(Act.SCROLL, index=int(event.y))] if in_dialogue else []
        if kind != pygame.KEYDOWN:
            return []
        return self._key_down(event.key, typing=typing, in_dialogue=in_dialogue)

    def _key_down(self, key: int, *, typing: bool, in_dialogue: bool) -> list[Action]:
        if key in ARROWS or (key in WASD and not typing):
            self.held.add(key)  # arrows walk even while typing; WASD are letters then
            return []
        if key in SCROLL_KEYS:
            return [Action(Act.SCROLL, index=SCROLL_KEYS[key])] if in_dialogue else []
        if typing:
            if key in ENTER_KEYS:
                return [Action(Act.SUBMIT)]
            if key == pygame.K_ESCAPE:
                return [Action(Act.CANCEL_TYPING)]
            if key == pygame.K_BACKSPACE:
                return [Action(Act.BACKSPACE)]
            return []
        if key == pygame.K_e or key in ENTER_KEYS:
            return [Action(Act.TALK)]
        if key == pygame.K_ESCAPE:
            return [Action(Act.LEAVE)]
        if key == pygame.K_TAB:
            return [Action(Act.TOGGLE_STATS)]
        if not in_dialogue:
            return []
        if key in QUICK_KEYS:
            return [Action(Act.QUICK_REPLY, index=QUICK_KEYS[key])]
        if key in RATE_UP_KEYS:
            return [Action(Act.RATE_UP)]
        if key in RATE_DOWN_KEYS:
            return [Action(Act.RATE_DOWN)]
        if key == pygame.K_q:
            return [Action(Act.ACCEPT_QUEST)]
        return []
