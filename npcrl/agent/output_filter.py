"""Deciding whether an NPC line may be shown: the model's output edge of the safety filter.

``OutputFilter.check`` folds the line once (``npcrl.agent.textnorm.fold``: NFKC, invisibles and accents
dropped, casefolded, Unicode confusables skeleton), joins spelled-out letters back into words, and
then looks for, in order of severity: a planted canary (whole or in part, ``npcrl.agent.canary``),
blocklisted words through their disguises (``npcrl.agent.wordmatch``), refused topics, out-of-character
talk about being an AI, compliance with a prompt injection or disclosure of the prompt or of other
players' data (whichever such phrase comes first in the line), and encoded text. The caller shows a persona fallback line instead of a rejected one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from npcrl.agent.canary import Canary
from npcrl.agent.textnorm import fold
from npcrl.agent.wordmatch import Blocklist, default_blocklist, join_spelled, read_wordlist


@dataclass(frozen=True)
class FilterResult:
    allowed: bool
    # "canary", "profanity:<word>", "refused_topic:<topic>", "meta:<phrase>", "injection:<phrase>",
    # "disclosure:<phrase>" or "encoded"
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.allowed != (self.reason is None):
            raise ValueError("a FilterResult has a reason exactly when it is not allowed")


# Out-of-character talk a small instruct model falls back to; an NPC never says these.
META_PHRASES = (
    "as an AI",
    "I am an AI",
    "I'm an AI",
    "AI assistant",
    "AI model",
    "language model",
    "artificial intelligence",
    "virtual assistant",
    "helpful assistant",
    "chatbot",
    "OpenAI",
    "ChatGPT",
    "Hugging Face",
    "SmolLM",
    "system prompt",
    "my instructions",
    "my programming",
)
# A line that goes along with a prompt injection (OWASP LLM01): jailbreak personas, dropped rules.
# Only phrases no villager would say in-world ("no restrictions on trade" is fine; "jailbreak"
# alone could be an escape from the cells).
INJECTION_PHRASES = (
    "previous instructions",
    "prior instructions",
    "ignore all instructions",
    "ignore your instructions",
    "ignore my instructions",
    "ignore the above",
    "disregard the above",
    "developer mode",
    "DAN mode",
    "as DAN",
    "I am DAN",
    "I'm DAN",
    "do anything now",
    "jailbroken",
    "jailbreak mode",
    "I have no restrictions",
    "no content restrictions",
    "no longer bound by",
    "system override",
    "break character",
    "out of character",
    "base64",
    "rot13",
)
# A line that gives away the prompt, its secret or other players' data (OWASP LLM02 and LLM06).
DISCLOSURE_PHRASES = (
    "my prompt",
    "initial prompt",
    "hidden prompt",
    "system message",
    "hidden instructions",
    "my rules say",
    "my rules are",
    "my guidelines",
    "my configuration",
    "I was programmed",
    "I am programmed",
    "secret password",
    "the password is",
    "my password",
    "other players",
    "another player",
    "player data",
    "players' data",
    "chat logs",
    "chat history",
    "email address",
    "e-mail address",
    "phone number",
    "home address",
    "IP address",
    "credit card",
    "API key",
    "access token",
    "user ID",
    "username",
)
_STOPWORDS = frozenset(
    "a an the of and or to in on at by for from with about under over into onto beneath below behind "
    "you your yours he his him she her they their them it its we our us i my me is are was were be "
    "any anything that this these those who what which how".split()
)
_WORD_START = r"(?<![^\W_])"
_WORD_END = r"(?![^\W_])"
# Word families of a refused keyword: "politics" is also "political" and "politician",
# "technology" also "technologies" and "technological", "route" also "routes".
_IC = r"(?:ic|ics|ical|ically|ician|icians)"
_FAMILIES = (  # (ending, the endings of its family, shortest stem left when the ending goes)
    ("ics", _IC, 4),
    ("ical", _IC, 4),
    ("ic", _IC, 4),
    ("ey", r"(?:ey|eys|ies)", 3),  # "money" -> "monies"
    ("y", r"(?:y|ies|ic|ical|ically|ist|ists)", 4),
    ("e", r"(?:e|es|ed|ing|er|ers)", 4),
)
_PLAIN_ENDINGS = r"(?:s|es|[a-z]?(?:ed|ing|er|ers))?"  # "patrol" -> "patrols", "patrolled"
# Text an NPC never speaks: base64 (mixed case or digits), hex dumps, escape and URL encodings.
_B64 = r"[A-Za-z0-9+/]"
_ENCODED = re.compile(
    rf"(?<![\w+/])(?={_B64}*(?:\d|[a-z][A-Z]|[+/])){_B64}{{20,}}={{0,2}}"
    r"|(?<!\w)(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{16,}(?!\w)"
    r"|(?:\\x[0-9a-fA-F]{2}){3,}|(?:\\u[0-9a-fA-F]{4}){2,}|(?:%[0-9a-fA-F]{2}){3,}|(?:&#x?[0-9a-fA-F]+;){3,}"
)


def _phrase_body(phrase: str) -> str:
    words = re.findall(r"[^\W_]+(?:'[^\W_]+)*", fold(phrase))
    return r"[\W_]+".join(map(re.escape, words))


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(_WORD_START + _phrase_body(phrase) + _WORD_END)


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 5:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "ics")) and len(word) > 4:
        return word[:-1]
    return word


def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    word = _singular(keyword)
    if len(word) <= 4:
        # Short words take a plain plural only: "war" must not match "wares", nor "keep" "keeper".
        return re.compile(rf"{_WORD_START}{re.escape(word)}s?{_WORD_END}")
    for ending, family, min_stem in _FAMILIES:
        if word.endswith(ending) and len(word) - len(ending) >= min_stem:
            return re.compile(rf"{_WORD_START}{re.escape(word[: -len(ending)])}{family}{_WORD_END}")
    return re.compile(rf"{_WORD_START}{re.escape(word)}{_PLAIN_ENDINGS}{_WORD_END}")


@dataclass(frozen=True)
class _Topic:
    name: str
    phrase: re.Pattern[str]
    keywords: tuple[re.Pattern[str], ...]

    def found_in(self, folded: str) -> bool:
        if self.phrase.search(folded):
            return True
        return bool(self.keywords) and all(k.search(folded) for k in self.keywords)


def _compile_topic(topic: str) -> _Topic:
    words = re.findall(r"[^\W_]+", fold(topic))
    keywords = tuple(_keyword_pattern(w) for w in dict.fromkeys(words) if w not in _STOPWORDS and len(w) >= 3)
    return _Topic(topic, _phrase_pattern(topic), keywords)


class _Phrases:
    """Out-of-character phrases of every kind in one alternation: one pass finds the first."""

    def __init__(self, kinds: Iterable[tuple[str, Sequence[str]]]) -> None:
        self._reasons = [f"{kind}:{phrase}" for kind, phrases in kinds for phrase in phrases]
        bodies = [_phrase_body(reason.split(":", 1)[1]) for reason in self._reasons]
        alternation = "|".join(f"(?P<p{i}>{body})" for i, body in enumerate(bodies))
        self._pattern = re.compile(rf"{_WORD_START}(?:{alternation}){_WORD_END}")

    def find(self, folded: str) -> str | None:
        match = self._pattern.search(folded)
        return None if match is None else self._reasons[int(str(match.lastgroup)[1:])]


class OutputFilter:
    """Decides whether an NPC line may be shown (see the module docstring for the order of checks).

    Refused topics match when the whole phrase appears, or when every keyword of it (its words
    minus stopwords, in any of their word forms) appears anywhere in the line: "the secret passage
    under the keep" catches "the keep has secret passages", "politics" catches "political". The
    filter cannot tell a refusal that names the topic from a disclosure, so both are rejected.
    """

    def __init__(
        self,
        refuse_topics: Sequence[str] = (),
        blocklist: Iterable[str] | None = None,
        canaries: Sequence[str] = (),
    ) -> None:
        words = default_blocklist() if blocklist is None else read_wordlist(blocklist)
        self._blocklist = Blocklist(words)
        self._topics = tuple(_compile_topic(t) for t in refuse_topics if t.strip())
        self._canaries = tuple(Canary.compile(c) for c in canaries if c.strip())
        self._phrases = _Phrases(
            (("meta", META_PHRASES), ("injection", INJECTION_PHRASES), ("disclosure", DISCLOSURE_PHRASES))
        )

    def check(self, text: str) -> FilterResult:
        folded = fold(text)
        if self._canaries:
            line_skeleton = "".join(ch for ch in folded if ch.isalnum())
            if any(canary.leaked_in(folded, line_skeleton) for canary in self._canaries):
                return FilterResult(False, "canary")
        joined, runs = join_spelled(folded)
        word = self._blocklist.find(joined, runs)
        if word is not None:
            return FilterResult(False, f"profanity:{word}")
        for topic in self._topics:
            if topic.found_in(joined):
                return FilterResult(False, f"refused_topic:{topic.name}")
        reason = self._phrases.find(joined)
        if reason is not None:
            return FilterResult(False, reason)
        if _ENCODED.search(unicodedata.normalize("NFKC", text)):
            return FilterResult(False, "encoded")
        return FilterResult(True)
