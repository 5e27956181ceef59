"""Raw model text -> the line an NPC says: one turn, in its own voice, ending like a sentence.

Small chat models run on past their turn (writing the player's next line or a new template turn),
label themselves ("Brom: ..."), wrap lines in quotes and stop mid-sentence at the token limit.
``postprocess_line`` undoes all of that. It is pure and idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_PLAYER_NAMES = ("Player", "Traveller", "Traveler", "User", "You")

_GENERIC_TOKEN = r"<\|[^\n]{0,64}?\|>"
_STRAY_BRACKETS = re.compile(r"<\||\|>")
_END_MARK = re.compile(r"end|eot", re.IGNORECASE)
_OWN_ROLES = ("assistant", "npc")
_OTHER_ROLES = ("user", "human", "system")
# Any capitalised "Name:" or "Two Names:" starting a later line is another speaker taking over.
_GENERIC_LABEL = re.compile(r"^[ \t]*[*_]*[A-Z][\w'’-]*(?:[ \t]+[A-Z][\w'’-]*){0,2}[*_]*[ \t]*:(?=\s|$)")
# End of a sentence: terminal punctuation, then any closing quotes or brackets, then a space or the end.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s|$)")
_QUOTE_PAIRS = {'"': '"', "“": "”", "‘": "’", "«": "»", "'": "'"}
_KEEP_FRACTION = 0.4  # cutting to a sentence end may drop at most 60% of the text
_ELLIPSIS = "…"


def _label(names: Sequence[str]) -> str:
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True) if n)
    return rf"[*_]*(?:{alternatives})[*_]*[ \t]*[:：][*_]*"


class _Patterns:
    """The regexes for one NPC name, player-name list and token list."""

    def __init__(self, npc_name: str, player_names: Sequence[str], special_tokens: Sequence[str]) -> None:
        words = npc_name.split()
        own = [npc_name, words[0], words[-1], *_OWN_ROLES]
        others = [*player_names, *_OTHER_ROLES]
        tokens = "|".join(
            [*(re.escape(t) for t in sorted(set(special_tokens), key=len, reverse=True) if t), _GENERIC_TOKEN]
        )
        self.token = re.compile(tokens)
        # What a turn may start with and still be this NPC speaking: template headers, own labels.
        own_roles = "|".join(_OWN_ROLES)
        self.leading = re.compile(
            rf"^\s*(?:(?:{tokens})[ \t]*(?:{own_roles})?[ \t]*\n?|{_label(own)}|(?:{own_roles})[ \t]*\n)", re.IGNORECASE
        )
        # A turn that opens with an end marker (<|im_end|>, <|endoftext|>, <|eot_id|>) is already over.
        end_tokens = "|".join(
            [*(re.escape(t) for t in special_tokens if t and _END_MARK.search(t)), r"<\|[^\n|]*(?:end|eot)[^\n|]*\|>"]
        )
        self.other_turn = re.compile(
            rf"^\s*(?:{end_tokens}|(?:{tokens})[ \t]*(?:{'|'.join(others)})\b|{_label(others)})", re.IGNORECASE
        )
        self.own_label = re.compile(rf"^[ \t]*{_label(own)}[ \t]*", re.IGNORECASE)
        self.other_label = re.compile(rf"^[ \t]*{_label(others)}", re.IGNORECASE)
        self.bare_role = re.compile(
            rf"^[ \t]*(?:{'|'.join(re.escape(r) for r in (*others, *_OWN_ROLES))})[ \t]*$", re.IGNORECASE
        )
        # "...here. Player: what?" - a player label right after a sentence ends, on the same line.
        self.inline_other = re.compile(rf"(?<=[.!?…\"”])[ \t]+{_label(others)}", re.IGNORECASE)


def _cut_turn(text: str, p: _Patterns) -> str:
    """The NPC's own turn: leading headers and labels removed, everything from the first sign of
    another turn (a special token, another speaker's label, a bare role line) dropped."""
    while True:
        if p.other_turn.match(text):
            return ""
        stripped = p.leading.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    token = p.token.search(text)
    if token:
        text = text[: token.start()]
    lines = text.split("\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if p.other_label.match(line) or p.bare_role.match(line):
            break
        own = p.own_label.match(line)
        if own:
            kept.append(line[own.end() :])
            continue
        if _GENERIC_LABEL.match(line):
            break
        kept.append(line)
    text = "\n".join(kept)
    inline = p.inline_other.search(text)
    return text[: inline.start()] if inline else text


def _inner_has(text: str, quote: str) -> bool:
    if quote not in ("'", "’"):
        return quote in text
    # An apostrophe between letters ("don't") is not a quotation mark.
    return any(
        ch == quote and not (0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha())
        for i, ch in enumerate(text)
    )


def _strip_quotes(text: str) -> str:
    """Remove quotation marks around the whole line, and a lone unbalanced one at either end."""
    if len(text) >= 2 and text[0] in _QUOTE_PAIRS:
        close = _QUOTE_PAIRS[text[0]]
        inner = text[1:-1]
        if text[-1] == close and not _inner_has(inner, text[0]) and not _inner_has(inner, close):
            return inner
    for open_, close in (('"', '"'), ("“", "”")):
        if text.count(open_) + (text.count(close) if close != open_ else 0) == 1:
            if text.startswith(open_):
                return text[1:]
            if text.endswith(close):
                return text[:-1]
    return text


def _complete_sentence(text: str) -> str:
    """Cut after the last sentence end when the tail is an unfinished sentence and little is lost."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends or ends[-1] == len(text) or ends[-1] < _KEEP_FRACTION * len(text):
        return text
    return text[: ends[-1]]


def _cap(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() <= max_chars]
    if ends and ends[-1] >= _KEEP_FRACTION * max_chars:
        return text[: ends[-1]]
    # No usable sentence end: cut at a word and mark the cut, so the line does not look finished.
    room = max_chars - len(_ELLIPSIS)
    space = text.rfind(" ", 0, room + 1)
    head = text[:space] if space > 0 else text[:room]
    return head.rstrip(" ,;:-–—") + _ELLIPSIS


def _one_pass(text: str, p: _Patterns, max_chars: int) -> str:
    text = _cut_turn(text, p)
    text = _STRAY_BRACKETS.sub("", p.token.sub("", text))
    text = " ".join(text.split())
    text = _strip_quotes(text).strip()
    text = _complete_sentence(text)
    return _cap(text, max_chars)


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def postprocess_line(
    text: str,
    *,
    npc_name: str,
    player_names: Sequence[str] = DEFAULT_PLAYER_NAMES,
    special_tokens: Sequence[str] = (),
    max_chars: int = 280,
) -> str:
    """The NPC's line from raw model text: a single line of at most ``max_chars`` characters with no
    special tokens, role labels, other speakers' turns or surrounding quotes, ending on a complete
    sentence where that keeps at least 40% of the text. May return "" (the model only spoke as
    someone else); the caller then uses a fallback line.
    """
    if not npc_name.strip():
        raise ValueError("npc_name must not be empty")
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    patterns = _Patterns(npc_name.strip(), player_names, special_tokens)
    # Control characters (small models emit ESC, DEL, even NUL) would reach logs and break text
    # rendering in games; newlines and tabs stay for the passes below to normalise.
    text = _CONTROL_CHARS.sub("", text)
    # Steps expose work for each other (stripping quotes can reveal a "Player:" label), so run to
    # a fixpoint: that makes the function idempotent by construction. Every changing pass either
    # shortens the text or turns other whitespace into single spaces, so this ends.
    while True:
        processed = _one_pass(text, patterns, max_chars)
        if processed == text:
            return text
        text = processed
