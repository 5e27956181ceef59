"""Text layout for the dialogue panel: wrapping by pixel width and a scroll window over the lines.

Pure functions over a ``measure`` callback (a pygame font's ``size(text)[0]`` in the game, ``len``
in tests), so wrapping and scrolling are tested without a display.
"""

from __future__ import annotations

from collections.abc import Callable

Measure = Callable[[str], int]


def wrap_text(text: str, max_width: int, measure: Measure) -> list[str]:
    """Lines of at most ``max_width`` pixels; breaks at spaces, and inside a word only when the word
    alone is too wide. Newlines in ``text`` start new lines; an empty text is one empty line."""
    if max_width <= 0:
        raise ValueError(f"max_width must be > 0, got {max_width}")
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if measure(candidate) <= max_width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            # A word wider than the panel (a long name, or a model babbling without spaces) is
            # split by characters rather than overflowing the panel.
            while measure(word) > max_width:
                cut = _longest_fitting_prefix(word, max_width, measure)
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines


def _longest_fitting_prefix(word: str, max_width: int, measure: Measure) -> int:
    low, high = 1, len(word)  # at least one character per line, even if it alone is too wide
    while low < high:
        mid = (low + high + 1) // 2
        if measure(word[:mid]) <= max_width:
            low = mid
        else:
            high = mid - 1
    return low


class ScrollWindow:
    """Which lines of a growing transcript are visible. Offset 0 follows the newest line; scrolling
    up holds the view still while new lines arrive below, until the player scrolls back down."""

    def __init__(self, visible: int) -> None:
        if visible < 1:
            raise ValueError(f"visible must be >= 1, got {visible}")
        self.visible = visible
        self.offset = 0  # lines scrolled up from the bottom
        self._total = 0

    def update_total(self, total: int) -> None:
        if self.offset and total > self._total:
            self.offset += total - self._total  # keep the same lines in view while text streams in
        self._total = total
        self._clamp()

    def scroll(self, lines: int) -> None:
        """Positive scrolls up (older lines), negative down."""
        self.offset += lines
        self._clamp()

    def _clamp(self) -> None:
        self.offset = max(0, min(self.offset, max(0, self._total - self.visible)))

    def window(self) -> tuple[int, int]:
        """[start, end) indices of the visible lines."""
        end = self._total - self.offset
        return max(0, end - self.visible), end

    @property
    def at_bottom(self) -> bool:
        return self.offset == 0

    @property
    def can_scroll_up(self) -> bool:
        return self.window()[0] > 0
