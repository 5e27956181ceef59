"""Text layout for the panels: wrapping by pixel width, the tail of a line that fits, and model
text made safe to draw.

Pure functions over a ``measure`` callback (a pygame font's ``size(text)[0]`` in the game, ``len``
in tests), so layout is tested without a display.
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


def displayable(text: str) -> str:
    """Model text without control characters: a byte-level model can emit any byte, and a NUL
    makes pygame's font renderer raise. Newlines stay (the wrapper breaks lines there)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\n" else " " if ch == "\t" else "" for ch in text)


def tail_fitting(text: str, width: int, measure: Measure) -> str:
    """The end of ``text`` that fits ``width``: the reply box shows what is being typed now."""
    if measure(text) <= width:
        return text
    low, high = 0, len(text)
    while low < high:  # smallest start index whose tail fits
        mid = (low + high) // 2
        if measure("…" + text[mid:]) <= width:
            high = mid
        else:
            low = mid + 1
    return "…" + text[low:]
