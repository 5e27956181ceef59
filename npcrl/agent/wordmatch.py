"""Finding blocklisted words through the disguises players use, without flagging innocent words.

Text arrives folded (``npcrl.agent.textnorm.fold``: homoglyphs, accents, case already undone). Three
more steps undo the rest:
- spelled-out letters ("f u c k", "s . h . i . t") are joined back into words (``join_spelled``);
- a phonetic form makes sound-alike spellings meet: "ph" -> "f", "ck"/"c"/"q" -> "k", applied to
  the text and to the listed words alike, so "phuck", "fuk" and "fuq" all read as "fuk";
- each listed word becomes a pattern that accepts l33t digits and symbols ("sh1t", "$h!t"), a
  '*' for a vowel, punctuation inside the word ("f.u.c.k", "f_u_c_k") and longer runs of a letter
  ("fuuuck"), plus common suffixes.
Matching is whole-word, which is what keeps "class", "assassin", "Scunthorpe", "therapist" and
"shiitake" innocent; only inside a run of spelled-out letters may a word sit anywhere, since
nobody spells out "s c u n t h o r p e" by accident.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib.resources import files

from npcrl.agent.textnorm import fold

# Letters and the look-alikes used to dodge a filter (in the phonetic form, so no "c"): l33t digits,
# symbols, '*' for a vowel, "y" and "l" for "i".
_LOOKALIKES = {
    "a": "a@4*",
    "b": "b8",
    "e": "e3*",
    "g": "g96",
    "i": "i1!|*yl",
    "l": "l1|",
    "o": "o0*",
    "s": "s5$z",
    "t": "t7+",
    "u": "uv*",
    "z": "z2",
}
_SYMBOLS = "@$!|+*"
# Punctuation inside a word ("f.u.c.k", "sh-it"), but not spaces, apostrophes ("who're" is not a
# disguise) or the look-alike symbols.
_INNER = rf"(?:(?![\s'{re.escape(_SYMBOLS)}])[\W_])*"
_SUFFIX = r"(?:s|es|z|d|ed|er|ers|ing|in|en|y)?"  # list base forms only: "raped", "fucking", "shitty"
_WORD_START = r"(?<![^\W_])"
_WORD_END = r"(?![^\W_])"
# A spelled-out word: three or more single letters (or l33t symbols) with up to three separators
# between each ("f u c k", "f. u. c. k", "$ h ! t").
_UNIT = rf"(?:[^\W_]|[{re.escape(_SYMBOLS)}])"
_SEPARATOR = rf"(?:(?![{re.escape(_SYMBOLS)}])[\W_]){{1,3}}"
_SPELLED = re.compile(
    rf"{_WORD_START}{_UNIT}(?:{_SEPARATOR}{_UNIT}{_WORD_END}){{2,}}"
    # Two letters are enough as an initialism with full stops: "a.i." is "ai".
    rf"|{_WORD_START}(?:[^\W_]\.){{2,}}"
)
_PHONETIC_PAIRS = re.compile(r"ph|ck")
_PHONETIC_LETTERS = str.maketrans({"c": "k", "q": "k"})


def join_spelled(folded: str) -> tuple[str, tuple[str, ...]]:
    """The text with spelled-out runs joined into words, and those joined runs."""
    runs: list[str] = []

    def join(match: re.Match[str]) -> str:
        run = "".join(re.findall(_UNIT, match.group(0)))
        runs.append(run)
        return run

    return _SPELLED.sub(join, folded), tuple(runs)


def phonetic(folded: str) -> str:
    """Sound-alike spellings made equal: "phuck" and "fuq" both become "fuk"."""
    return _PHONETIC_PAIRS.sub(lambda m: "f" if m.group(0) == "ph" else "k", folded).translate(_PHONETIC_LETTERS)


def _letters_pattern(word: str) -> str:
    parts = []
    for ch, run in itertools.groupby(word):
        if ch.isspace():
            parts.append(r"[\W_]+")
            continue
        cls = "[" + re.escape(_LOOKALIKES.get(ch, ch)) + "]"
        count = len(list(run))
        # A doubled letter must stay at least doubled ("ass" is not "as"); any run may be longer.
        parts.append(f"{cls}(?:{_INNER}{cls}){{{count - 1},}}")
    return _INNER.join(parts)


class Blocklist:
    """Compiled blocklist: ``find`` returns the listed word a line contains, or None."""

    def __init__(self, words: Iterable[str]) -> None:
        self._words: list[str] = []
        letters: list[str] = []
        seen: set[str] = set()
        for word in words:
            key = phonetic(" ".join(fold(word).split()))
            if key in seen:  # "fuk" is already "fuck" in phonetic form; report the first listed
                continue
            seen.add(key)
            self._words.append(word)
            letters.append(_letters_pattern(key))
        # One alternation, one pass over the line: group i is word i. Nothing listed matches nothing.
        whole = "|".join(f"(?P<w{i}>{p})" for i, p in enumerate(letters)) or r"(?!)"
        self._whole = re.compile(rf"{_WORD_START}(?:{whole}){_SUFFIX}{_WORD_END}")
        self._anywhere = re.compile("|".join(f"(?P<w{i}>{p})" for i, p in enumerate(letters)) or r"(?!)")

    def _word(self, match: re.Match[str] | None) -> str | None:
        return None if match is None else self._words[int(str(match.lastgroup)[1:])]

    def find(self, joined: str, runs: tuple[str, ...]) -> str | None:
        """The first listed word in folded text, given as ``join_spelled`` returns it."""
        found = self._word(self._whole.search(phonetic(joined)))
        for run in runs:
            found = found or self._word(self._anywhere.search(phonetic(run)))
        return found


def read_wordlist(lines: Iterable[str]) -> tuple[str, ...]:
    """Entries of a word list: '#' starts a comment, blank lines are skipped, spacing collapsed."""
    words = (" ".join(line.split("#", 1)[0].split()) for line in lines)
    return tuple(dict.fromkeys(w for w in words if w))


@lru_cache(maxsize=1)
def default_blocklist() -> tuple[str, ...]:
    """The shipped list (npcrl/data/blocklist.txt): common English profanity and slurs."""
    text = files("npcrl").joinpath("data/blocklist.txt").read_text(encoding="utf-8")
    return read_wordlist(text.splitlines())
