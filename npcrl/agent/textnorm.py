"""One normal form for text the safety checks compare: look-alike spellings fold to plain letters.

``fold`` is what the output filter matches against: NFKC (fullwidth and mathematical letters become
ASCII), invisible characters dropped, casefolded, accents stripped, and every character replaced by
its prototype in Unicode's confusables table (UTS #39 skeleton), so Cyrillic "а", Greek "ο" and
Armenian "օ" all read as the Latin letters they imitate. ``fold_aligned`` folds character by
character, one output character per input character, so a match found in the folded text can be cut
out of the original at the same positions (the player-input sanitizer needs that).

The table (``npcrl/data/confusables.txt``) is generated from Unicode's confusables.txt by
``scripts/gen_confusables.py``; its header names the Unicode version.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from importlib.resources import files

from npcrl.errors import NpcrlError

TABLE_FILE = "data/confusables.txt"
_ROW = re.compile(r"([0-9A-F]{4,6})\t([a-z0-9']{1,4})")
# Characters the filter never needs to see: controls and format characters (zero-width joiners,
# bidi overrides, tag characters) and combining marks once the text is decomposed.
_DROPPED = frozenset(("Cc", "Cf", "Mn", "Me"))


class NormalisationDataError(NpcrlError):
    """The shipped confusables table is malformed (names the file, line and text)."""


def parse_table(text: str, source: str) -> dict[int, str]:
    """Rows "HEX<TAB>prototype" ('#' comments) as a ``str.translate`` table; ``source`` names the file."""
    table: dict[int, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line or line.startswith("#"):
            continue
        match = _ROW.fullmatch(line)
        if match is None:
            raise NormalisationDataError(f"{source} line {number}: expected 'HEX<TAB>prototype', got {line!r}")
        table[int(match.group(1), 16)] = match.group(2)
    return table


@lru_cache(maxsize=1)
def confusables_table() -> dict[int, str]:
    """Code point of a look-alike character -> its plain prototype, for ``str.translate``."""
    return parse_table(files("npcrl").joinpath(TABLE_FILE).read_text(encoding="utf-8"), f"npcrl/{TABLE_FILE}")


def _strip(text: str) -> str:
    # Whitespace is kept (it separates words); every other control or format character goes.
    return "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _DROPPED)


def fold(text: str) -> str:
    """``text`` as the filter compares it: NFKC, no invisibles or accents, casefolded, skeleton."""
    text = _strip(unicodedata.normalize("NFKC", text)).casefold()
    text = _strip(unicodedata.normalize("NFKD", text))
    return text.translate(confusables_table())


@lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    folded = fold(ch)
    # A character that folds to nothing or to several (an accent alone, "ß" -> "ss") stays as it is,
    # so that positions in the folded text are positions in the original.
    return folded if len(folded) == 1 else ch


def fold_aligned(text: str) -> str:
    """Fold each character on its own: the result has exactly one character per input character."""
    return "".join(_fold_char(ch) for ch in text)


def skeleton(text: str) -> str:
    """The folded letters and digits alone: spacing and punctuation are not part of a secret."""
    return "".join(ch for ch in fold(text) if ch.isalnum())
