"""Streaming text out of a token stream: incremental detokenisation and stop strings.

``IncrementalDecoder`` turns ids into text as they arrive without ever showing half a character:
a byte-level BPE token may end in the middle of a multi-byte UTF-8 character, which the
tokenizer decodes as U+FFFD until the rest arrives. ``StopStringMatcher`` then holds back any
text that might be the start of a stop string, so a stop string never flashes on screen.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decodes one token id at a time; the pieces add up to ``tokenizer.decode(all_ids)``.

    Uses the prefix-offset/read-offset technique: it keeps a short window of ids, the last ones
    emitted (the prefix) followed by the unread ones, and each push emits what the window's decode
    gained over the prefix's decode. Decoding in context rather than token by token gets bytes
    split across tokens right, and whatever decoders do at the start of a text (SentencePiece's
    Metaspace strips the first token's leading space) happens only at the real start. Ids before
    the prefix are dropped, so cost and memory per token are O(window), not O(tokens so far).

    Text ending in U+FFFD is an incomplete character: it is held back, but everything before the
    trailing U+FFFD run is final (UTF-8 decoding never revises completed characters) and is
    emitted at once. ``flush`` releases the rest, e.g. a truly truncated character, as U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._window: list[int] = []  # prefix ids, then unread ids
        self._read_offset = 0  # window[:read_offset] is the prefix: emitted in full
        self._prefix_text: str | None = ""  # decode of the prefix, computed lazily
        self._held_emitted = 0  # chars past the prefix text already emitted while held back
        self._pieces: list[str] = []

    @property
    def text(self) -> str:
        """Everything emitted so far by push() and flush()."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def push(self, token_id: int) -> str:
        """Add one id; return the text that became final with it (possibly "")."""
        self._window.append(int(token_id))
        window_text = self._decode(self._window)
        prefix_text = self._prefix()
        start = len(prefix_text) + self._held_emitted
        complete = not window_text.endswith(_REPLACEMENT)
        end = len(window_text) if complete else len(window_text.rstrip(_REPLACEMENT))
        if end <= start:
            # Nothing new (a skipped special token, or still mid-character): keep the window.
            return ""
        piece = window_text[start:end]
        if complete:
            self._advance()
        else:
            self._held_emitted = end - len(prefix_text)
        self._pieces.append(piece)
        return piece

    def flush(self) -> str:
        """Return whatever is still held back (the stream has ended)."""
        if self._read_offset == len(self._window):
            return ""
        piece = self._decode(self._window)[len(self._prefix()) + self._held_emitted :]
        self._advance()
        if piece:
            self._pieces.append(piece)
        return piece

    def _advance(self) -> None:
        """Mark every id read: the unread ids become the next prefix, older ids are dropped."""
        del self._window[: self._read_offset]
        self._read_offset = len(self._window)
        self._prefix_text = None
        self._held_emitted = 0

    def _prefix(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._window[: self._read_offset])
        return self._prefix_text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)


class StopStringMatcher:
    """Cuts streamed text at the first stop string to complete, holding back what could start one.

    ``feed`` returns the text safe to show now and whether a stop string has completed; the
    stop string itself and anything after it are never shown. The result does not depend on how
    the text is split into feeds.
    """

    def __init__(self, stop_strings: Iterable[str] = ()) -> None:
        if isinstance(stop_strings, str):
            raise ValueError(f"stop_strings must be a collection of str, not a str: {stop_strings!r}")
        stops = tuple(stop_strings)
        for stop in stops:
            if not isinstance(stop, str) or not stop:
                raise ValueError(f"stop_strings must hold non-empty str, got {stop!r}")
        self._stops = stops
        self._buffer = ""  # held back: a suffix that is a proper prefix of some stop string
        self._stopped = False
        self._matched: str | None = None

    @property
    def stopped(self) -> bool:
        """True once a stop string has completed."""
        return self._stopped

    @property
    def matched(self) -> str | None:
        """The stop string that ended the text, if any."""
        return self._matched

    def feed(self, text: str) -> tuple[str, bool]:
        """Add streamed text; return (text safe to show now, stopped)."""
        if self._stopped:
            return "", True
        if not self._stops:
            return text, False
        buffer = self._buffer + text
        # The stop string that completes first wins (then the one starting first), as if the text
        # arrived one character at a time: the result must not depend on how it was chunked. The
        # held-back buffer covers every possible start, so no match begins in text already shown.
        best: tuple[int, int] | None = None
        matched = None
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and (best is None or (at + len(stop), at) < best):
                best, matched = (at + len(stop), at), stop
        if best is not None:
            cut = best[1]
            self._stopped, self._matched, self._buffer = True, matched, ""
            return buffer[:cut], True
        hold = self._partial_match(buffer)
        self._buffer = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Release held-back text when generation ends without a stop string."""
        if self._stopped:
            return ""
        out, self._buffer = self._buffer, ""
        return out

    def _partial_match(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        longest = min(len(buffer), max(len(stop) for stop in self._stops) - 1)
        for length in range(longest, 0, -1):
            tail = buffer[-length:]
            if any(stop.startswith(tail) for stop in self._stops if len(stop) > length):
                return length
        return 0
