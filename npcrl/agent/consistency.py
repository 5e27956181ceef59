"""Does an NPC line contradict its persona card? ``card_contradictions(text, persona)``; where:
``contradiction_spans(text, persona)``.

A pure, conservative checker: it looks only for the NPC speaking *about itself* and saying
something its card rules out, and prefers missing a contradiction to flagging a good line. Each
reason is ``kind:value``:

* ``name:X`` — the NPC calls itself X: "I am X", "I'm X", "my name is X", "name's X", "call me X"
  (not after "don't"/"never"/"not"), "X at your service" / "X, at your service". X is a capitalised
  word, optionally after a title ("Sir X", "Old X"), that is none of the card's name words, no
  capitalised word of its ``role``, no title, form of address or common word ("I'm Sorry",
  "Friend, at your service"), and not a possessive ("I'm Mara's regular"). Another character of the
  card's lore counts ("I'm Hedda" said by Mara).
* ``trade:T`` — the NPC claims a trade of another family than its own: "I am/I'm a/an/the T" (up to
  two describing words between: "I'm the best baker"; not "I am no/not a baker", not "the baker's
  son", not "a friend of the baker"), a sentence starting "As a T, I ...", or "my/our W" for a
  workplace W of a trade (bakery, smithy, forge, mill, inn, tavern, temple, ...). Its own trade
  families are those whose words occur in the card's ``role`` or ``name`` ("the village blacksmith"
  makes armourer and farrier its own too; "Captain" makes it a guard); the families group trades one
  person plausibly holds (an innkeeper cooks and brews).
* ``place:X`` — the NPC claims another home: "welcome to X", "here in X" (also "here in the village
  of X"), "our village/town/city/hamlet of X", "I live in X". X is a capitalised name (after an
  optional "the"); it counts when its first word occurs capitalised nowhere in the card (any field)
  and is no common word or generic place noun ("Welcome to Town").

Not detected, on purpose: past tense ("I was a soldier"), origins ("I'm from X"), claims in the
third person ("Brom is a baker"), anything inside quotation marks (the NPC quoting someone), other
people and places the NPC merely talks about, lowercase names, and contradictions of the lore's
facts (prices, kin, events) — those need understanding the sentence, not matching it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from npcrl.agent.persona import Persona

CONTRADICTS_CARD = "contradicts_card:"
"""prefix of the ``filter_reason`` of a line replaced because every sample contradicted the card"""
RESAMPLED = "resampled:"
"""prefix of the ``filter_reason`` of a shown model line sampled again because an earlier sample of
the turn contradicted the card: ``resampled:contradicts_card:name:Grimbold``"""

_TRADE_FAMILIES: dict[str, tuple[str, ...]] = {
    "smith": ("blacksmith", "smith", "armourer", "armorer", "farrier", "weaponsmith", "swordsmith", "ironmonger"),
    "innkeeper": (
        "innkeeper",
        "tavernkeeper",
        "barkeep",
        "barkeeper",
        "barmaid",
        "bartender",
        "landlady",
        "landlord",
        "alewife",
        "publican",
        "cook",
        "brewer",
    ),
    "miller": ("miller",),
    "guard": ("guard", "captain", "guardsman", "watchman", "sentry", "soldier", "constable", "sheriff"),
    "baker": ("baker",),
    "butcher": ("butcher",),
    "farmer": ("farmer", "farmhand", "ploughman", "plowman"),
    "fisher": ("fisherman", "fisher", "fishwife"),
    "hunter": ("hunter", "trapper"),
    "merchant": ("merchant", "trader", "peddler", "pedlar", "shopkeeper"),
    "tailor": ("tailor", "seamstress", "weaver"),
    "carpenter": ("carpenter", "woodworker", "joiner"),
    "woodcutter": ("woodcutter", "lumberjack", "forester"),
    "mason": ("mason", "stonemason"),
    "priest": ("priest", "priestess", "monk", "nun", "cleric", "friar"),
    "healer": ("healer", "herbalist", "physician", "apothecary", "doctor"),
    "alchemist": ("alchemist",),
    "wizard": ("wizard", "mage", "sorcerer", "sorceress", "witch", "warlock"),
    "bard": ("bard", "minstrel"),
    "shepherd": ("shepherd", "shepherdess"),
    "cobbler": ("cobbler", "shoemaker"),
    "potter": ("potter",),
    "tanner": ("tanner", "leatherworker"),
    "jeweller": ("jeweller", "jeweler", "goldsmith", "silversmith"),
    "fletcher": ("fletcher", "bowyer"),
    "miner": ("miner",),
    "sailor": ("sailor", "boatman"),
    "knight": ("knight",),
    "scribe": ("scribe", "librarian", "scholar"),
    "thief": ("thief", "bandit", "pickpocket"),
}
_WORKPLACES: dict[str, str] = {
    "bakery": "baker",
    "bakehouse": "baker",
    "smithy": "smith",
    "forge": "smith",
    "mill": "miller",
    "watermill": "miller",
    "inn": "innkeeper",
    "tavern": "innkeeper",
    "alehouse": "innkeeper",
    "taproom": "innkeeper",
    "brewery": "innkeeper",
    "farm": "farmer",
    "butchery": "butcher",
    "temple": "priest",
    "chapel": "priest",
    "shrine": "priest",
    "tannery": "tanner",
    "barracks": "guard",
    "guardhouse": "guard",
}
_TRADE_OF = {word: family for family, words in _TRADE_FAMILIES.items() for word in words}
_TITLES = frozenset(
    "sir lord lady master mistress captain old young father mother brother sister dame goodman goodwife "
    "mister mr mrs miss madam ser king queen prince princess little big".split()
)
_COMMON = frozenset(
    "i a an the my your yours thy our this that it he she we they you not no so just only very too here there "
    "sorry glad happy fine well sure afraid busy tired honoured honored pleased grateful certain told going "
    "looking working always ever forever yes aye nay oh ah hm hmm ha well now then welcome good what who why "
    "friend friends traveller traveler stranger neighbour neighbor love dear citizen lad lass folk "
    "god gods heaven mercy bless alas indeed truly".split()
)
_GENERIC_PLACES = frozenset(
    "village town city hamlet inn tavern forge mill market square keep castle home house shop road lane".split()
)
_WORD = r"[A-Za-z][\w'\u2019-]*"
_CAP = r"[A-Z][\w\u2019-]*(?:['\u2019]s)?"  # a capitalised word, possessive kept so it can be told apart
_QUOTED = re.compile(r"\"[^\"]*\"|\u201c[^\u201d]*\u201d")
_SMALL = r"(?!(?:of|for|to|with|and|or|from|at|in|on|by|than|like|who|that|friend|son|daughter|wife|husband)\b)"
_DESCRIBING = rf"(?:{_SMALL}[a-z][\w'\u2019-]*\s+){{0,2}}?"
_TRADE_WORD = "(" + "|".join(sorted(_TRADE_OF, key=len, reverse=True)) + r")\b"

_NAME_CLAIMS = (
    re.compile(
        rf"(?:\bI\s+am|\bI['\u2019]m|\b[Mm]y\s+name\s+is|\b[Mm]y\s+name['\u2019]s|\b[Tt]he\s+name['\u2019]s"
        rf"|(?:^|(?<=[.!?]\s))[Nn]ame['\u2019]s)\s+((?:{_CAP}\s+)?{_CAP})"
    ),
    re.compile(rf"(?<!n't )(?<!n\u2019t )(?<!never )(?<!not )\b[Cc]all\s+me\s+((?:{_CAP}\s+)?{_CAP})"),
    re.compile(rf"\b({_CAP})(?:\s+the\s+{_WORD})?,?\s+at\s+your\s+service\b"),
)
_TRADE_CLAIMS = (
    re.compile(
        rf"\b(?:I\s+am|I['\u2019]m)\s+(?:(?:just|only|but|merely|still)\s+)?(?:a|an|the|this|your)\s+"
        rf"{_DESCRIBING}{_TRADE_WORD}",
        re.IGNORECASE,
    ),
    re.compile(rf"(?:^|[.!?]\s+)[Aa]s\s+(?:a|an|the)\s+{_DESCRIBING}{_TRADE_WORD}\s*,\s*(?:I|my|we)\b", re.IGNORECASE),
)
_WORKPLACE_CLAIM = re.compile(r"\b(?:my|our)\s+(?:(?:own|little|old|humble|fine|family)\s+)?([a-z]+)\b", re.IGNORECASE)
_PLACE_CLAIMS = (
    re.compile(rf"\b[Ww]elcome\s+to\s+(?:the\s+)?({_CAP})"),
    re.compile(rf"\b[Hh]ere\s+in\s+(?:the\s+(?:village|town|city|hamlet)\s+of\s+)?(?:the\s+)?({_CAP})"),
    re.compile(rf"\b[Oo]ur\s+(?:{_WORD}\s+)?(?:village|town|city|hamlet)\s+of\s+({_CAP})"),
    re.compile(rf"\bI\s+live\s+in\s+(?:the\s+)?({_CAP})"),
)


@dataclass(frozen=True)
class Contradiction:
    """One claim in a line that its card rules out: the reason (``kind:value``) and where the claim's
    word stands in the text (``text[start:end]``)."""

    reason: str
    start: int
    end: int


def card_contradictions(text: str, persona: Persona) -> list[str]:
    """The ways ``text``, spoken by ``persona``'s NPC, contradicts its card (empty: none found),
    in the order name, trade, place, each reason once. See the module docstring for the rules."""
    return list(dict.fromkeys(found.reason for found in _contradictions(text, persona)))


def contradiction_spans(text: str, persona: Persona) -> list[Contradiction]:
    """Every claim in ``text`` that contradicts ``persona``'s card, in the order they stand in the
    text (a reason may repeat): where a line first goes wrong."""
    return sorted(_contradictions(text, persona), key=lambda found: (found.start, found.end))


def _contradictions(text: str, persona: Persona) -> list[Contradiction]:
    own_names, role_words, known, own_trades = _card_words(persona)
    spoken = _QUOTED.sub(lambda quoted: " " * len(quoted.group()), text)  # positions still those of text
    found: list[Contradiction] = []
    for pattern in _NAME_CLAIMS:
        for match in pattern.finditer(spoken):
            name = _claimed_name(match.group(1))
            if name and name.lower() not in own_names and name not in role_words:
                found.append(Contradiction(f"name:{name}", *match.span(1)))
    for word, start, end in _claimed_trades(spoken):
        family = _TRADE_OF.get(word.lower())
        if family is not None and family not in own_trades and word.lower() not in own_names:
            found.append(Contradiction(f"trade:{word.lower()}", start, end))
    for pattern in _PLACE_CLAIMS:
        for match in pattern.finditer(spoken):
            place = _possessive_stripped(match.group(1))
            if place and place.lower() not in _COMMON | _GENERIC_PLACES and place not in known:
                found.append(Contradiction(f"place:{place}", *match.span(1)))
    return found


def _claimed_name(phrase: str) -> str | None:
    """The name word of a claimed "Title Name" phrase, or None when it is no name (a possessive,
    a title alone, a common word)."""
    words = phrase.split()
    while words and _possessive_stripped(words[0]).lower() in _TITLES | _TRADE_OF.keys():
        words = words[1:]
    if not words or words[0].endswith(("'s", "\u2019s")):
        return None
    word = words[0].rstrip("-")
    return None if word.lower() in _COMMON else word


def _claimed_trades(text: str) -> list[tuple[str, int, int]]:
    """(trade word, start, end) of each trade the text claims; a workplace claims its family's first
    word, at the workplace's span."""
    words = [
        (m.group(1), *m.span(1))
        for pattern in _TRADE_CLAIMS
        for m in pattern.finditer(text)
        if _not_possessive(m, text)
    ]
    for match in _WORKPLACE_CLAIM.finditer(text):
        family = _WORKPLACES.get(match.group(1).lower())
        if family is not None:
            words.append((_TRADE_FAMILIES[family][0], *match.span(1)))
    return words


def _not_possessive(match: re.Match[str], text: str) -> bool:
    """The claimed trade word is not "baker's" (the baker's son is no baker)."""
    return text[match.end(1) : match.end(1) + 2] not in ("'s", "\u2019s")


def _possessive_stripped(word: str) -> str:
    for suffix in ("'s", "\u2019s"):
        if word.endswith(suffix):
            return word[: -len(suffix)]
    return word


@lru_cache(maxsize=256)
def _card_words(persona: Persona) -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """(the NPC's name words lowercased, capitalised words of its role, capitalised words anywhere
    on the card, its own trade families); cached per card (a ``Persona`` is frozen and hashable)."""
    own_names = frozenset(word.lower() for word in re.findall(r"[\w'-]+", persona.name))
    role_words = frozenset(_possessive_stripped(w) for w in re.findall(_CAP, persona.role))
    fields = (persona.name, persona.role, persona.greeting, *persona.lore, *persona.goals, *persona.example_lines)
    known = frozenset(
        _possessive_stripped(w) for field in (*fields, *persona.fallback_lines) for w in re.findall(_CAP, field)
    )
    identity = {word.lower() for word in re.findall(r"[\w-]+", f"{persona.name} {persona.role}")}
    own_trades = frozenset(_TRADE_OF[word] for word in identity if word in _TRADE_OF)
    own_trades |= frozenset(_WORKPLACES[word] for word in identity if word in _WORKPLACES and not own_trades)
    return own_names, role_words, known, own_trades
