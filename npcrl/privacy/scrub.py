"""Masks personal data in player text before it is written anywhere: ``scrub_text``.

What a player types may hold their email, phone number, card number and the like. The model may
see it (the NPC answers the player, not the log), but the play log keeps only the masked text.
Each kind found becomes a typed placeholder: ``[email]``, ``[url]`` (a URL with credentials),
``[iban]``, ``[card]``, ``[ssn]``, ``[ip]``, ``[phone]``, ``[address]``.

A small scrubber of our own rather than a PII library: Presidio needs a spaCy model from a hub,
which the game cannot fetch at run time; scrubadub pulls in scikit-learn and textblob and has not
had a release since 2023; ``phonenumbers`` alone would add a runtime dependency of several MB for
one of the eight kinds. Each pattern here is checked where a check exists: card numbers by Luhn,
IBANs by mod 97, IP addresses by ``ipaddress``, so prices, years, dates and quest ids survive.
Recall and precision on ``tests/data/pii_lines.txt`` and ``tests/data/benign_lines.txt`` are
asserted in ``tests/test_privacy_scrub.py`` (figures in docs/PRIVACY.md).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable
from functools import partial

PII_KINDS = ("email", "url", "iban", "card", "ssn", "ip", "phone", "address")
PLACEHOLDER_PATTERN = re.compile(r"\[(?:" + "|".join(PII_KINDS) + r")\]")
# Bound the work per line; the agent scrubs at most a few thousand characters at once.
MAX_SCRUB_CHARS = 1 << 16

_TLDS = r"(?:com|net|org|edu|gov|io|co|uk|de|fr|es|it|nl|info|me|us|ca|au)"
# Each pattern that opens with a run starts only where that run starts (a lookbehind), so a long
# run without a match costs linear, not quadratic, time.
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# "name at mail dot com", "name(at)mail(dot)com": written out so a filter would not catch it.
_EMAIL_SPELLED = re.compile(
    r"(?<![\w.+-])[\w.+-]+\s*(?:\(at\)|\[at\]|\sat\s)\s*[\w-]+(?:\s*(?:\(dot\)|\[dot\]|\sdot\s|\.)\s*[\w-]+)*?"
    r"\s*(?:\(dot\)|\[dot\]|\sdot\s|\.)\s*" + _TLDS + r"\b",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s/@:]+:[^\s/@]+@\S+", re.IGNORECASE)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b", re.IGNORECASE)
_CARD = re.compile(r"(?<![\d.,])\d(?:[ -]?\d){12,18}(?![\d]|[.,]\d)")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")
# International: +CC then groups; the digit count (8-15, E.164) is checked afterwards.
_PHONE_INTL = re.compile(r"(?:\+|\b00)\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?!\d)")
# North American (555) 123-4567 / 555-123-4567 / 555.123.4567, optionally with a leading 1.
_PHONE_NANP = re.compile(r"(?<![\d-])(?:1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\d-])")
# National formats with a trunk 0: 020 7946 0958, 06 12 34 56 78, 030-1234567, 07700900123.
_PHONE_TRUNK = re.compile(r"(?<![\d.,-])0\d{1,4}(?:[ -]?\d{2,8}){1,4}(?![\d]|[.,]\d)")
# Seven or more digits right after a word that announces a phone number.
_PHONE_CUE = re.compile(
    r"\b(?:phone|call|text|tel|telephone|mobile|cell|whatsapp|number|ring|dial)\b[^\d\n]{0,20}"
    r"(\(?\d(?:[ ().-]?\d){6,14})(?!\d)",
    re.IGNORECASE,
)
_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|Way"
    r"|Straße|Strasse|Str|Rue|Calle|Via)"
)
_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]?,?\s+(?:[A-Z][a-zA-Z'-]+\s+){1,3}" + _STREET + r"\b\.?"
    r"|\b(?:Rue|Calle|Via)\s+(?:(?:[A-Z][a-zA-Z'-]+|de|du|des|la|del|di)\s+){0,3}[A-Z][a-zA-Z'-]+,?\s+\d{1,5}\b"
    r"|\b[A-Z][a-zäöüß]+(?:straße|strasse|str\.|weg|gasse|platz)\s+\d{1,4}[a-z]?\b"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn check every payment card number passes (and most other long numbers fail)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: country letters and check digits moved to the end, letters as 10..35, mod 97 is 1."""
    compact = re.sub(r"\s", "", text).upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _is_card(match: re.Match[str]) -> bool:
    digits = _digits(match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1


def _is_ip(match: re.Match[str]) -> bool:
    text = match.group().split("%")[0]
    if text.count(":") < 2 and "." not in text:
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    # "::" or "1::" alone are more often punctuation than an address someone typed.
    return address.version == 4 or len(_digits(text.replace(":", ""))) + text.count(":") >= 5


def _is_intl_phone(match: re.Match[str]) -> bool:
    digits = _digits(match.group())
    if match.group().startswith("00"):
        digits = digits[2:]
    return 8 <= len(digits) <= 15


def _is_trunk_phone(match: re.Match[str]) -> bool:
    digits = _digits(match.group())
    # A trunk-0 national number has 9-11 digits; a date like 01-02-2024 has separators of 2-2-4.
    return 9 <= len(digits) <= 12 and not re.fullmatch(r"0\d[-. ]\d{2}[-. ]\d{4}", match.group())


def normalise(text: str) -> str:
    """NFKC, and invisible format characters removed: what the sanitizer also does before the
    model sees the text, so a zero-width space or fullwidth digits cannot hide a number from the
    patterns yet reach the model whole."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(char for char in text if unicodedata.category(char) != "Cf")


def _mask_ibans(text: str) -> str:
    """An IBAN's pattern also takes a following short word ("... 7034 fast"): mask the longest
    prefix of the candidate that passes mod 97, and keep the rest."""

    def replace(match: re.Match[str]) -> str:
        candidate = match.group()
        for end in range(len(candidate), 14, -1):
            if (end == len(candidate) or candidate[end] == " ") and iban_valid(candidate[:end]):
                return "[iban]" + candidate[end:]
        return candidate

    return _IBAN.sub(replace, text)


def _mask(kind: str, pattern: re.Pattern[str], check: Callable[[re.Match[str]], bool] | None, text: str) -> str:
    placeholder = f"[{kind}]"

    def replace(match: re.Match[str]) -> str:
        return placeholder if check is None or check(match) else match.group()

    return pattern.sub(replace, text)


def _mask_cued_phones(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        start, end = (index - match.start() for index in match.span(1))
        return match.group()[:start] + "[phone]" + match.group()[end:]

    return _PHONE_CUE.sub(replace, text)


# Applied in this order, so a kind that contains digits another kind would take (an IBAN's account
# number, a card's groups) is masked first; placeholders hold no digits for a later pattern to find.
_MASKERS: tuple[Callable[[str], str], ...] = (
    partial(_mask, "url", _URL_CREDENTIALS, None),
    partial(_mask, "email", _EMAIL, None),
    partial(_mask, "email", _EMAIL_SPELLED, None),
    _mask_ibans,
    partial(_mask, "card", _CARD, _is_card),
    partial(_mask, "ssn", _SSN, None),
    partial(_mask, "ip", _IPV4, _is_ip),
    partial(_mask, "ip", _IPV6, _is_ip),
    partial(_mask, "phone", _PHONE_INTL, _is_intl_phone),
    partial(_mask, "phone", _PHONE_NANP, None),
    partial(_mask, "phone", _PHONE_TRUNK, _is_trunk_phone),
    _mask_cued_phones,
    partial(_mask, "address", _ADDRESS, None),
)


def scrub_text(text: str) -> str:
    """``text`` normalised (see ``normalise``) with every personal datum found replaced by its
    typed placeholder. Text without any is returned normalised and otherwise unchanged.
    Idempotent: placeholders hold no digits or ``@`` for a second pass to find."""
    if not isinstance(text, str):
        raise TypeError(f"text to scrub must be a str, not {type(text).__name__}")
    text = normalise(text[:MAX_SCRUB_CHARS])
    for mask in _MASKERS:
        text = mask(text)
    return text


def pii_kinds_in(text: str) -> list[str]:
    """The placeholder kinds ``scrub_text`` puts into ``text``, in order (for tests and reports)."""
    return [match.group()[1:-1] for match in PLACEHOLDER_PATTERN.finditer(scrub_text(text))]


def contains_pii(text: str) -> bool:
    """Whether ``scrub_text`` would mask anything in ``text``."""
    return scrub_text(text) != normalise(text[:MAX_SCRUB_CHARS])
