"""Finding a planted secret (a canary) in an NPC line, whole or in part.

A persona can plant a canary in its system prompt; any line that repeats it, or enough of it to be
a leak, is blocked. Lines are compared as skeletons (``npcrl.agent.textnorm.skeleton``: folded letters
and digits only), so spacing, punctuation, case and look-alike letters do not hide it. A line leaks
when it holds:
- the whole canary as written (folded), at any length;
- for a canary whose skeleton has at least ``MIN_SKELETON`` characters, any run of
  ``fragment_length(n)`` consecutive skeleton characters: 60% of the canary, at least 5 and at most
  8 characters. Eight characters of a random-looking secret are past what shows up by chance in
  a sentence (and most of a short one is most of its strength); fewer than five would match
  ordinary words run together;
- any word of the canary that holds a digit and has at least 4 characters, as a whole word ("7391"
  of "AMBER-FALCON-7391"): numbers are the part of a secret people reuse.
A line sharing only an ordinary short word with the canary ("an amber glow") passes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from npcrl.agent.textnorm import fold, skeleton

MIN_SKELETON = 6  # shorter canaries would match by chance once spacing and punctuation are ignored
MAX_FRAGMENT = 8
MIN_FRAGMENT = 5
MIN_DIGIT_WORD = 4


def fragment_length(skeleton_length: int) -> int:
    """How many consecutive skeleton characters of a canary count as a leak."""
    return min(MAX_FRAGMENT, max(MIN_FRAGMENT, math.ceil(0.6 * skeleton_length)))


@dataclass(frozen=True)
class Canary:
    folded: str
    fragments: frozenset[str]
    digit_words: tuple[re.Pattern[str], ...]

    @classmethod
    def compile(cls, canary: str) -> Canary:
        letters = skeleton(canary)
        fragments: frozenset[str] = frozenset()
        if len(letters) >= MIN_SKELETON:
            size = fragment_length(len(letters))
            fragments = frozenset(letters[i : i + size] for i in range(len(letters) - size + 1))
        words = re.findall(r"[^\W_]+", fold(canary))
        digit_words = tuple(
            re.compile(rf"(?<![^\W_]){re.escape(w)}(?![^\W_])")
            for w in dict.fromkeys(words)
            if len(w) >= MIN_DIGIT_WORD and any(ch.isdigit() for ch in w)
        )
        return cls(fold(canary.strip()), fragments, digit_words)

    def leaked_in(self, folded: str, line_skeleton: str) -> bool:
        if self.folded in folded:
            return True
        if any(fragment in line_skeleton for fragment in self.fragments):
            return True
        return any(pattern.search(folded) for pattern in self.digit_words)
