"""What a simulated player notices in an NPC line: a few cheap, deterministic text features.

``line_features(text, persona, previous_npc_lines)`` returns a dict with these keys (all in [0, 1]
except ``words``):

- ``asks_back``: 1 if the line holds a question mark; 0.5 if a sentence starts with a question
  word ("what", "where", "do you", ...) but has no mark; else 0.
- ``offers_quest``: the NPC offers a quest, a job or help. Two signals combined as
  ``1 - (1 - cues)(1 - goal)``: ``cues`` is 0.5 per distinct offer cue ("quest", "reward",
  "could you", "bring me", ...; at most 1) and ``goal`` is the overlap of the line's content words
  with the persona's quest goals (the ``goals`` starting with "Quest:", or all goals if none do):
  shared words over min(4, the goal's content words), best goal, at most 1.
- ``mentions_lore``: distinct content words shared with the persona's lore, names and places
  (capitalised lore words, e.g. "Greyvein") counting 2 and other words 1, divided by 4, at most 1.
- ``in_character``: 1, or 0 if the line says something only an AI would ("as an AI", "language
  model", "assistant", ...) or names a modern thing (``MODERN_WORDS``: phone, internet, email, ...).
- ``concise``: 1 at 25 words or fewer, falling linearly to 0 at 60 words.
- ``chatty``: ``1 - concise``.
- ``repeats_itself``: the largest share of the line's word 3-grams found in one of the NPC's
  earlier lines of the conversation (a line of one or two words: 1 if an earlier line had the
  same words, else 0).
- ``empty``: 1 if the line has no words.
- ``humorous``: the line jokes. 0.5 per distinct humour cue, at most 1. The cues: ``HUMOUR_CUES``
  (laughter: "ha ha", "heh", "chuckles", "laughs", ...; talk of jokes and wit: "joke", "jest",
  "kidding", "pun", "funny", "wryly", "winks", ...; a joke's set-up: "knock knock", "why did the",
  "what do you call a"), ``PUNS`` ("forge ahead", "steel yourself", "no pun intended", ...) and a
  smiley (":)", ";)", ":D"). Conservative: a word cue counts only where neither of the two words
  before it is in ``NEGATIONS`` ("no laughing matter", "this is no joke" and "I'm not kidding" are
  serious), and a bare exclamation ("Ha!", "Hah!") is no cue.
- ``words``: the number of words (a count, not in [0, 1]; not usable as a profile weight).

Everything is a pure function of its arguments; persona vocabularies are computed once per persona.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from npcrl.agent.persona import Persona
from npcrl.agent.safety import META_PHRASES

FEATURES = (
    "asks_back",
    "offers_quest",
    "mentions_lore",
    "in_character",
    "concise",
    "chatty",
    "repeats_itself",
    "empty",
    "humorous",
)
"""the features a player profile may weight (each in [0, 1])"""

CONCISE_WORDS = 25
CHATTY_WORDS = 60

# Words of a world without electricity; one of them in an NPC line breaks the spell.
MODERN_WORDS = frozenset(
    """
    phone phones smartphone smartphones cellphone telephone internet online offline website websites
    e-mail wi-fi computer computers laptop laptops email emails wifi app apps software hardware download downloads
    upload uploads google facebook twitter instagram youtube tiktok netflix television tv radio video
    videos camera selfie car cars truck trucks airplane aeroplane electricity electric robot robots ai
    chatgpt openai gpt llm chatbot bot bots database keyboard microwave fridge refrigerator gps satellite
    bitcoin crypto
    """.split()
)

QUESTION_STARTS = (
    "what",
    "where",
    "when",
    "who",
    "whom",
    "whose",
    "why",
    "how",
    "which",
    "do you",
    "did you",
    "have you",
    "are you",
    "were you",
    "would you",
    "will you",
    "can you",
    "could you",
    "shall we",
    "is it",
    "is there",
    "tell me",
)
OFFER_CUES = (
    "quest",
    "task",
    "job",
    "errand",
    "favour",
    "favor",
    "help",
    "reward",
    "pay",
    "paid",
    "coin",
    "coins",
    "silver",
    "gold",
    "could you",
    "would you",
    "will you",
    "bring me",
    "fetch",
    "find out",
    "need someone",
    "in return",
)
# Humour cues as word sequences: laughter; talk of jokes, wit and wry asides; a joke's set-up.
HUMOUR_CUES = tuple(
    cue.strip()
    for cue in """
    ha ha, haha, ha-ha, hahaha, heh, hehe, ho ho, har har, tee hee, laugh, laughs, laughed, laughing, laughter,
    chuckle, chuckles, chuckled, chuckling, giggle, giggles, guffaw, guffaws,
    joke, jokes, joking, jest, jests, jesting, kidding, pun, puns, funny, witty, wry, wryly, dryly,
    winks, grins, grinning,
    knock knock, why did the, what do you call a
    """.split(",")
)
# Plays on the shipped personas' trades (forge, mill), and the pun that owns up.
PUNS = ("no pun intended", "pun intended", "forge ahead", "steel yourself", "rolling in dough")
NEGATIONS = frozenset("no not nothing never nor isn't ain't wasn't don't doesn't didn't won't".split())
_SMILEY = re.compile(r"(?<![\w:;])[:;]-?[)D](?![\w)])")
_STOPWORDS = frozenset(
    """
    a an the of and or but if then so to in on at by for from with about under over into onto out up
    down off as than too very just also not no nor yes you your yours yourself he his him she her hers
    they their them it its we our us i my me mine is are was were be been being am do does did done
    have has had having will would shall should can could may might must this that these those there
    here who whom whose what which when where why how all any some each every one ones own other such
    only more most much many few again once ever still even now well like get got go goes went come
    came say says said know knows let lets make makes made take takes took see seen way thing things
    friend traveller traveler good bad time times day days year years long little big great lot
    """.split()
)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+")
_SENTENCE_END = re.compile(r"[.!?…]+")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters or digits; possessive 's removed)."""
    return [_base(word) for word in _WORD.findall(text)]


def _base(word: str) -> str:
    word = word.lower().replace("’", "'")
    return word[:-2] if word.endswith("'s") else word


# Out-of-character talk, as word sequences: the output filter's phrases plus a few more.
_META = tuple(" ".join(words(phrase)) for phrase in (*META_PHRASES, "assistant", "as a model", "I am a model"))


def _content(tokens: Iterable[str]) -> set[str]:
    return {t for t in tokens if len(t) >= 3 and t not in _STOPWORDS and not t.isdigit()}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


@dataclass(frozen=True)
class _Vocabulary:
    names: frozenset[str]
    lore: frozenset[str]  # content words of the lore that are not names
    quest_goals: tuple[frozenset[str], ...]
    topics: tuple[str, ...]


def _proper_runs(sentence: str) -> list[list[tuple[str, bool]]]:
    """Runs of capitalised words in a sentence as (word, sentence_initial) pairs."""
    runs: list[list[tuple[str, bool]]] = []
    current: list[tuple[str, bool]] = []
    for position, match in enumerate(_WORD.finditer(sentence)):
        word = match.group()
        if word[:1].isupper():
            current.append((word, position == 0))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@lru_cache(maxsize=64)
def _vocabulary(persona: Persona) -> _Vocabulary:
    lowercase = {_base(w) for fact in persona.lore for w in _WORD.findall(fact) if not w[:1].isupper()}
    names: set[str] = set()
    topics: dict[str, None] = {}  # an ordered set
    for fact in persona.lore:
        for sentence in _sentences(fact):
            for run in _proper_runs(sentence):
                # A capitalised first word is a name only inside a longer run ("Captain Hedda");
                # alone it is just the start of a sentence ("Wolves have been seen").
                if len(run) == 1 and run[0][1]:
                    continue
                kept = [word for word, _ in run]
                while kept and _base(kept[0]) in _STOPWORDS:
                    kept.pop(0)
                while kept and _base(kept[-1]) in _STOPWORDS:
                    kept.pop()
                if not kept:
                    continue
                # "Old" in "Old Wenna" is no name when the lore also says "the old stone bridge".
                names.update(b for b in map(_base, kept) if b not in _STOPWORDS and b not in lowercase)
                topics.setdefault(" ".join(w[:-2] if w.endswith(("'s", "’s")) else w for w in kept), None)
    lore = _content(w for fact in persona.lore for w in words(fact)) - names
    return _Vocabulary(
        names=frozenset(names),
        lore=frozenset(lore),
        quest_goals=tuple(frozenset(_content(words(goal))) for goal in _quests(persona)),
        topics=tuple(topics),
    )


def _quests(persona: Persona) -> list[str]:
    quests = [goal.split(":", 1)[1].strip() for goal in persona.goals if goal.lower().startswith("quest:")]
    return quests or list(persona.goals)


def persona_topics(persona: Persona) -> tuple[str, ...]:
    """Names and places of the persona's lore, as written there ("Greyvein", "Captain Hedda"), for
    player lines that ask about them."""
    return _vocabulary(persona).topics


def _has_phrase(lowered_words: Sequence[str], phrase: str) -> bool:
    target = phrase.split()
    n = len(target)
    return any(list(lowered_words[i : i + n]) == target for i in range(len(lowered_words) - n + 1))


def _asks_back(text: str) -> float:
    if "?" in text:
        return 1.0
    if any(_opens_as_question(sentence) for sentence in _sentences(text)):
        return 0.5
    return 0.0


def _opens_as_question(sentence: str) -> bool:
    head = " ".join(words(sentence)[:2])
    return bool(head) and any(head == start or head.startswith(start + " ") for start in QUESTION_STARTS)


def _goal_overlap(content: set[str], persona: Persona) -> float:
    best = 0.0
    for goal in _vocabulary(persona).quest_goals:
        if goal:
            best = max(best, min(1.0, len(content & goal) / min(4, len(goal))))
    return best


def best_quest(text: str, persona: Persona) -> str:
    """The persona's quest goal an NPC line most likely offers (the text after "Quest:"; ties go to
    the first goal), or ``"quest"`` when the persona has no goals."""
    quests = _quests(persona)
    if not quests:
        return "quest"
    content = _content(words(text))
    goals = _vocabulary(persona).quest_goals
    return quests[max(range(len(quests)), key=lambda i: (len(content & goals[i]), -i))]


def _offers_quest(tokens: Sequence[str], persona: Persona) -> float:
    cues = sum(1 for cue in OFFER_CUES if _has_phrase(tokens, cue))
    cue_score = min(1.0, 0.5 * cues)
    goal_score = _goal_overlap(_content(tokens), persona)
    return 1.0 - (1.0 - cue_score) * (1.0 - goal_score)


def _mentions_lore(tokens: Sequence[str], persona: Persona) -> float:
    vocabulary = _vocabulary(persona)
    distinct = set(tokens)
    points = 2 * len(distinct & vocabulary.names) + len(_content(distinct) & vocabulary.lore)
    return min(1.0, points / 4)


def _in_character(tokens: Sequence[str]) -> float:
    if any(_has_phrase(tokens, phrase) for phrase in _META) or any(token in MODERN_WORDS for token in tokens):
        return 0.0
    return 1.0


def _concise(count: int) -> float:
    if count <= CONCISE_WORDS:
        return 1.0
    if count >= CHATTY_WORDS:
        return 0.0
    return (CHATTY_WORDS - count) / (CHATTY_WORDS - CONCISE_WORDS)


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _repeats(tokens: Sequence[str], previous: Sequence[str]) -> float:
    if not tokens:
        return 0.0
    if len(tokens) < 3:  # too short for 3-grams: only saying the very same words again counts
        return 1.0 if any(words(line) == list(tokens) for line in previous) else 0.0
    grams = _ngrams(tokens, 3)
    return max((len(grams & _ngrams(words(line), 3)) / len(grams) for line in previous), default=0.0)


def _unnegated(tokens: Sequence[str], phrase: str) -> bool:
    """``phrase`` occurs in ``tokens`` somewhere no word of ``NEGATIONS`` stands in the two words before it."""
    target = phrase.split()
    n = len(target)
    return any(
        list(tokens[i : i + n]) == target and not NEGATIONS.intersection(tokens[max(0, i - 2) : i])
        for i in range(len(tokens) - n + 1)
    )


def _humorous(text: str, tokens: Sequence[str]) -> float:
    cues = sum(1 for cue in (*HUMOUR_CUES, *PUNS) if _unnegated(tokens, cue))
    cues += 1 if _SMILEY.search(text) else 0
    return min(1.0, 0.5 * cues)


def line_features(text: str, persona: Persona, previous_npc_lines: Sequence[str] = ()) -> dict[str, float]:
    """The features of one NPC line (see the module docstring), given the persona speaking it and
    the NPC's earlier lines in this conversation."""
    tokens = words(text)
    concise = _concise(len(tokens))
    return {
        "asks_back": _asks_back(text) if tokens else 0.0,
        "offers_quest": _offers_quest(tokens, persona),
        "mentions_lore": _mentions_lore(tokens, persona),
        "in_character": _in_character(tokens),
        "concise": concise,
        "chatty": 1.0 - concise,
        "repeats_itself": _repeats(tokens, previous_npc_lines),
        "empty": 0.0 if tokens else 1.0,
        "humorous": _humorous(text, tokens),
        "words": float(len(tokens)),
    }


def evidence_positions(text: str, persona: Persona) -> dict[str, list[int]]:
    """Where in a line the wording the players reward shows: for ``asks_back``, ``offers_quest``
    and ``mentions_lore``, the indices in ``words(text)`` of the words that count towards the
    feature, in order (for a question mark, the word before it; for a sentence that opens as a
    question, its first word); empty where the line has none. A trainer whose credit fades from a
    line's end back to its start (GAE with lambda below 1) gives the early ones less of the reward."""
    tokens = words(text)
    vocabulary = _vocabulary(persona)
    goal_words = frozenset().union(*vocabulary.quest_goals)
    cues = [cue.split() for cue in OFFER_CUES]
    return {
        "asks_back": _question_positions(text) if tokens else [],
        "offers_quest": [
            i for i, t in enumerate(tokens) if t in goal_words or any(tokens[i : i + len(c)] == c for c in cues)
        ],
        "mentions_lore": [i for i, t in enumerate(tokens) if t in vocabulary.names or t in vocabulary.lore],
    }


def _question_positions(text: str) -> list[int]:
    """The word before each question mark and the first word of each sentence that opens as a
    question (``_asks_back``'s two ways to ask), in order."""
    found: set[int] = set()
    for mark, char in enumerate(text):
        if char == "?":
            found.add(max(0, len(words(text[:mark])) - 1))
    before = 0
    for sentence in _SENTENCE_END.split(text):
        if _opens_as_question(sentence):
            found.add(before)
        before += len(words(sentence))
    return sorted(found)
