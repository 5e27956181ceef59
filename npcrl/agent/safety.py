"""Guarding the model's two edges: player text going in, NPC lines coming out.

In: ``sanitize_player_text`` removes what could make the player's words read as part of the chat
template (special tokens, fake role headers, invisible characters) and ``delimit_player_text``
wraps the rest as quoted speech, so an injected "ignore your instructions" is something the
traveller *said*, not an instruction. Fake headers are found in folded
text (``npcrl.agent.textnorm``), so look-alike letters from other scripts do not hide them. Out:
``OutputFilter`` (``npcrl.agent.output_filter``, re-exported here) rejects lines with profanity, a
refused topic, a planted canary, out-of-character talk, injection compliance or disclosure; the
caller then shows a persona fallback line instead.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from npcrl.agent.output_filter import (
    DISCLOSURE_PHRASES,
    INJECTION_PHRASES,
    META_PHRASES,
    FilterResult,
    OutputFilter,
)
from npcrl.agent.textnorm import fold_aligned
from npcrl.agent.wordmatch import default_blocklist

__all__ = [
    "DISCLOSURE_PHRASES",
    "INJECTION_PHRASES",
    "MAX_PLAYER_CHARS",
    "META_PHRASES",
    "FilterResult",
    "OutputFilter",
    "default_blocklist",
    "delimit_player_text",
    "sanitize_player_text",
]

MAX_PLAYER_CHARS = 300

# Any "<|...|>" is treated as a special token, known to this tokenizer or not: no player needs it,
# and another model's template (or a future bundle) may give it meaning.
_GENERIC_TOKEN = r"<\|[^\n]{0,64}?\|>"
# Other families' turn markers (Llama 2, Alpaca-style) mean nothing to a ChatML model but are the
# classic injection props; they go wherever they appear.
_FOREIGN_MARKERS = r"\[/?INST\]|<</?SYS>>|</?s>"
# A role name right after a token is the rest of a ChatML header ("<|im_start|>system").
_TOKEN_ROLE = r"(?:[^\S\n]*(?:system|user|assistant|developer|tool)\b[^\S\n]*:?)?"
_STRAY_BRACKETS = re.compile(r"<\||\|>")
_ROLE_WORDS = (
    r"system|assistant|user|human|ai|bot|model|developer|admin|administrator|instructions?|response|input|output"
    r"|prompt|context|narrator|sys|inst|gpt|chatgpt|npc"
)
# Fake role headers at a line start: "system:", "**Assistant:**", "### Instruction", "[INST]",
# "<<SYS>>", "(system)", "System override:". Only the header goes; the words after it stay.
_FAKE_HEADER = re.compile(
    r"^[^\w\n]*"
    r"(?:"
    rf"\#{{2,}}[^\S\n]*(?:{_ROLE_WORDS})\b[^\S\n]*:?"
    rf"|[\[(<]{{1,2}}[^\S\n]*/?[^\S\n]*(?:{_ROLE_WORDS}|sys|inst)[^\S\n]*[\])>]{{1,2}}[^\S\n]*:?"
    rf"|(?:{_ROLE_WORDS})(?:[^\S\n]+(?:message|prompt|override|note|instructions?|mode))?[^\S\n]*[*_]*[^\S\n]*[:：]"
    r")[*_]*[^\S\n]*",
    re.IGNORECASE | re.MULTILINE,
)
# A line holding only a turn's role name is what is left of a template header without its token.
_BARE_ROLE_LINE = re.compile(r"^[^\w\n]*(?:system|assistant|user)[^\w\n]*$", re.IGNORECASE | re.MULTILINE)
_LINE_BREAKS = str.maketrans({"\r": "\n", "\x0b": "\n", "\x0c": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n"})
_MAX_COMBINING = 2  # "zalgo" stacks of combining marks are noise; real text needs at most two


def _token_pattern(special_tokens: Sequence[str]) -> re.Pattern[str]:
    known = {t for t in special_tokens if t} | {unicodedata.normalize("NFKC", t) for t in special_tokens if t}
    # Longest first, so '<|im_start|>' goes before a shorter token it contains.
    alternatives = [re.escape(t) for t in sorted(known, key=len, reverse=True)] + [_GENERIC_TOKEN, _FOREIGN_MARKERS]
    return re.compile(rf"(?:{'|'.join(alternatives)}){_TOKEN_ROLE}", re.IGNORECASE)


def _remove_invisible(text: str) -> str:
    """Drop control, format (zero-width, bidi overrides, tag characters), private-use and surrogate
    characters, and combining marks past the second in a row; keep newlines and tabs."""
    out: list[str] = []
    combining = 0
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "\n\t":
            out.append(ch)
            combining = 0
        elif category in ("Cc", "Cf", "Co", "Cs"):
            continue
        elif category in ("Mn", "Me"):
            combining += 1
            if combining <= _MAX_COMBINING:
                out.append(ch)
        else:
            out.append(ch)
            combining = 0
    return "".join(out)


def _clean_once(text: str, tokens: re.Pattern[str]) -> str:
    text = _remove_invisible(text.translate(_LINE_BREAKS))
    # NFKC after removing invisibles: fullwidth '＜｜im_start｜＞' and styled letters become plain
    # ASCII, so the token and header patterns below see what the tokenizer would see.
    text = unicodedata.normalize("NFKC", text)
    # Replacing with a space (not "") keeps the pieces on either side from joining into a new token.
    text = tokens.sub(" ", text)
    text = _STRAY_BRACKETS.sub(" ", text)
    for header in (_BARE_ROLE_LINE, _FAKE_HEADER):
        # As written first: folding reads some symbols as letters ("¥" as "y"), which could hide
        # a header ("¥SYSTEM:") that the plain pattern sees.
        text = _remove_folded(header, header.sub("", text))
    return text


def _remove_folded(pattern: re.Pattern[str], text: str) -> str:
    """Remove what ``pattern`` finds in the folded text: a header spelled with look-alike letters
    ("ѕуѕtеm:" in Cyrillic, "ՏYՏTEM:" with Armenian) is a header. Folding keeps positions, so the
    spans found there are cut from the original, and the player's other words stay as typed."""
    spans = [m.span() for m in pattern.finditer(fold_aligned(text))]
    if not spans:
        return text
    pieces, start = [], 0
    for begin, end in spans:
        pieces.append(text[start:begin])
        start = end
    pieces.append(text[start:])
    return "".join(pieces)


def _clean_lines(text: str, tokens: re.Pattern[str]) -> str:
    # One removal can expose another on the same line ("system: assistant: hi"), so repeat.
    while True:
        cleaned = _clean_once(text, tokens)
        if cleaned == text:
            return text
        text = cleaned


def _cut_at_word(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    space = text.rfind(" ", 0, max_chars + 1)
    # A word boundary that keeps at least half the budget; otherwise one huge "word" is cut hard.
    cut = text[:space] if space >= max_chars // 2 else text[:max_chars]
    return cut.rstrip()


def sanitize_player_text(text: str, special_tokens: Sequence[str], max_chars: int = MAX_PLAYER_CHARS) -> str:
    """Player input made safe to put in a user turn: one line of plain text, at most ``max_chars``.

    Removes special tokens (the given ones and any ``<|...|>``), control and invisible characters,
    fake role headers at line starts; normalises Unicode (NFKC); collapses all whitespace to single
    spaces; cuts at a word boundary. Returns "" when nothing is left (the caller decides what an
    empty line means). Idempotent.
    """
    if not isinstance(text, str):
        raise TypeError(f"player text must be a str, not {type(text).__name__}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    tokens = _token_pattern(special_tokens)
    # Bound the work before any regex runs: a pasted novel costs the same as a long sentence.
    # Tokens go first, before NFKC, so a token with fullwidth characters is matched as it is.
    text = tokens.sub(" ", text[: 8 * max_chars + 256])
    # Iterating clean -> collapse -> cut to a fixpoint makes the result idempotent by construction:
    # collapsing lines or cutting a word can put a header back at the start. After the first round
    # the text is NFKC and bounded, and later rounds only remove, so this ends.
    while True:
        cleaned = _cut_at_word(" ".join(_clean_lines(text, tokens).split()), max_chars)
        if cleaned == text:
            return text
        text = cleaned


def delimit_player_text(text: str) -> str:
    """Wrap sanitized player text as quoted speech for the user turn.

    Double quotes inside become single quotes, so the player cannot close the quotation and
    continue in the narrator's voice.
    """
    if not text.strip():
        return "The traveller says nothing."
    quoted = text.replace('"', "'").replace("\u201c", "'").replace("\u201d", "'")
    return f'The traveller says: "{quoted}"'
