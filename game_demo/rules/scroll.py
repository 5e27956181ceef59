"""Which lines of the dialogue transcript are in view: state the dialogue keeps and the panel reads."""

from __future__ import annotations


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
