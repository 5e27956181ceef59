"""Guarding the model's two edges: player text going in, NPC lines coming out.

In: ``sanitize_player_text`` removes what could make the player's words read as part of the chat
template (special tokens, fake role headers, invisible characters) and ``delimit_player_text``
wraps the rest as quoted speech, so an injected "ignore your instructions" is something the
traveller *said*, not an instruction. Out: ``OutputFilter`` rejects lines with profanity, a
refused topic, a planted canary, or out-of-character talk about being an AI; the caller then
shows a persona fallback line instead.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

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
    text = _BARE_ROLE_LINE.sub("", text)
    return _FAKE_HEADER.sub("", text)


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


@dataclass(frozen=True)
class FilterResult:
    allowed: bool
    reason: str | None = None  # "profanity:<word>", "refused_topic:<topic>", "canary", "meta:<phrase>"

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
_STOPWORDS = frozenset(
    "a an the of and or to in on at by for from with about under over into onto beneath below behind "
    "you your yours he his him she her they their them it its we our us i my me is are was were be "
    "any anything that this these those who what which how".split()
)
# Letters and the look-alikes used to dodge a filter: l33t digits, symbols, '*' for a vowel.
_LOOKALIKES = {
    "a": "a@4*",
    "b": "b8",
    "e": "e3*",
    "g": "g96",
    "i": "i1!|*",
    "l": "l1|",
    "o": "o0*",
    "s": "s5$",
    "t": "t7+",
    "u": "uv*",
    "z": "z2",
}
# Punctuation inside a word ("f.u.c.k", "sh-it"), but not spaces and not the look-alike symbols.
_INNER = r"(?:(?![\s@$!|+*])[\W_])*"
_SUFFIX = r"(?:s|es|d|ed|er|ers|ing|in|y)?"  # list base forms only: "raped", "fucking", "shitty"
# Cyrillic and Greek letters that look like Latin ones, after casefolding.
_HOMOGLYPHS = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
        "\u2019": "'", "\u2018": "'", "\u02bc": "'",
    }
)  # fmt: skip


def _fold(text: str) -> str:
    """Text as the filter compares it: no accents, invisibles or homoglyphs, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(ch for ch in decomposed if unicodedata.category(ch) not in ("Mn", "Me", "Cf", "Cc"))
    return kept.casefold().translate(_HOMOGLYPHS)


def _obfuscation_pattern(word: str) -> re.Pattern[str]:
    """A whole-word pattern for a blocked word that also matches its common disguises."""
    parts = []
    for ch, run in itertools.groupby(_fold(word)):
        if ch.isspace():
            parts.append(r"[\W_]+")
            continue
        cls = "[" + re.escape(_LOOKALIKES.get(ch, ch)) + "]"
        count = len(list(run))
        # A doubled letter must stay at least doubled ("ass" is not "as"); any run may be longer.
        parts.append(f"{cls}(?:{_INNER}{cls}){{{count - 1},}}")
    return re.compile(rf"(?<![^\W_])(?:{_INNER.join(parts)}){_SUFFIX}(?![^\W_])")


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    words = re.findall(r"[^\W_]+(?:'[^\W_]+)*", _fold(phrase))
    return re.compile(r"(?<![^\W_])" + r"[\W_]+".join(map(re.escape, words)) + r"(?![^\W_])")


def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    # Plural-tolerant both ways: "passage" matches "passages", "politics" matches "politic".
    base = keyword[:-1] if keyword.endswith("s") and len(keyword) > 3 else keyword
    return re.compile(rf"(?<![^\W_]){re.escape(base)}(?:s|es)?(?![^\W_])")


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
    words = re.findall(r"[^\W_]+", _fold(topic))
    keywords = tuple(_keyword_pattern(w) for w in dict.fromkeys(words) if w not in _STOPWORDS and len(w) >= 3)
    return _Topic(topic, _phrase_pattern(topic), keywords)


def _read_wordlist(lines: Iterable[str]) -> tuple[str, ...]:
    words = (" ".join(line.split("#", 1)[0].split()) for line in lines)
    return tuple(dict.fromkeys(w for w in words if w))


@lru_cache(maxsize=1)
def default_blocklist() -> tuple[str, ...]:
    """The shipped list (npcrl/data/blocklist.txt): common English profanity and slurs."""
    text = files("npcrl").joinpath("data/blocklist.txt").read_text(encoding="utf-8")
    return _read_wordlist(text.splitlines())


def _skeleton(text: str) -> str:
    return "".join(ch for ch in _fold(text) if ch.isalnum())


_MIN_SKELETON = 6  # shorter canaries would match by chance once spacing and punctuation are ignored


class OutputFilter:
    """Decides whether an NPC line may be shown. Checks, in order of severity: a canary (a secret
    planted in the system prompt), blocklisted words, refused topics, out-of-character meta talk.

    Refused topics match when the whole phrase appears, or when every keyword of it (its words
    minus stopwords) appears anywhere in the line: "the secret passage under the keep" catches
    "the keep has a secret passage". The filter cannot tell a refusal that names the topic from a
    disclosure, so both are rejected; the caller shows a fallback line.
    """

    def __init__(
        self,
        refuse_topics: Sequence[str] = (),
        blocklist: Iterable[str] | None = None,
        canaries: Sequence[str] = (),
    ) -> None:
        words = default_blocklist() if blocklist is None else _read_wordlist(blocklist)
        self._blocked = tuple((word, _obfuscation_pattern(word)) for word in words)
        self._topics = tuple(_compile_topic(t) for t in refuse_topics if t.strip())
        self._canaries = tuple((_fold(c.strip()), _skeleton(c)) for c in canaries if c.strip())
        self._meta = tuple((phrase, _phrase_pattern(phrase)) for phrase in META_PHRASES)

    def check(self, text: str) -> FilterResult:
        folded = _fold(text)
        if self._canaries:
            skeleton = _skeleton(text)
            for canary, canary_skeleton in self._canaries:
                if canary in folded or (len(canary_skeleton) >= _MIN_SKELETON and canary_skeleton in skeleton):
                    return FilterResult(False, "canary")
        for word, pattern in self._blocked:
            if pattern.search(folded):
                return FilterResult(False, f"profanity:{word}")
        for topic in self._topics:
            if topic.found_in(folded):
                return FilterResult(False, f"refused_topic:{topic.name}")
        for phrase, pattern in self._meta:
            if pattern.search(folded):
                return FilterResult(False, f"meta:{phrase}")
        return FilterResult(True)
