"""The player-text scrubber: what it masks, what it must leave alone, and its measured recall and
precision on a corpus of player lines (tests/data/pii_lines.jsonl, tests/data/benign_lines.txt)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npcrl.agent.player_text import WITHHELD, PlayerTextStorage, check_storage_mode, redact
from npcrl.privacy.scrub import PLACEHOLDER_PATTERN, iban_valid, luhn_valid, scrub_text
from npcrl.validate import ConfigValueError

DATA = Path(__file__).resolve().parents[1] / "data"
# Floors a little under what the scrubber achieves (recall 0.990, precision 0.995 on 205 data in
# 195 lines and 200 benign lines; docs/PRIVACY.md), so a change that loses ground fails here.
RECALL_FLOOR, PRECISION_FLOOR = 0.97, 0.98


def corpus_scores() -> tuple[int, int, int]:
    """(true positives, misses, false positives). A datum counts as found when its value is gone
    from the scrubbed line and a placeholder of its kind took its place; every other placeholder,
    in a benign line or beyond a line's data, is a false positive."""
    found = missed = wrong = 0
    for row in (DATA / "pii_lines.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(row)
        out = scrub_text(item["text"])
        kinds = [match.group()[1:-1] for match in PLACEHOLDER_PATTERN.finditer(out)]
        for datum in item["pii"]:
            if datum["value"] not in out and datum["kind"] in kinds:
                found += 1
                kinds.remove(datum["kind"])
            else:
                missed += 1
        wrong += len(kinds)
    for line in (DATA / "benign_lines.txt").read_text(encoding="utf-8").splitlines():
        wrong += len(PLACEHOLDER_PATTERN.findall(scrub_text(line)))
    return found, missed, wrong


def test_corpus_is_large_enough_across_the_kinds():
    items = [json.loads(row) for row in (DATA / "pii_lines.jsonl").read_text(encoding="utf-8").splitlines()]
    benign = (DATA / "benign_lines.txt").read_text(encoding="utf-8").splitlines()
    kinds = {datum["kind"] for item in items for datum in item["pii"]}
    assert len(items) >= 150 and sum(any(char.isdigit() for char in line) for line in benign) >= 150
    assert {"email", "phone", "card", "ip", "iban", "ssn", "address", "url"} <= kinds


def test_recall_and_precision_on_the_corpus():
    found, missed, wrong = corpus_scores()
    recall, precision = found / (found + missed), found / (found + wrong)
    assert recall >= RECALL_FLOOR and precision >= PRECISION_FLOOR, (recall, precision)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail me at jane.doe@example.com!", "mail me at [email]!"),
        ("jane (at) example (dot) org", "[email]"),
        ("call +44 20 7946 0958 now", "call [phone] now"),
        ("(555) 123-4567 or 1-800-555-0199", "[phone] or [phone]"),
        ("ring 07700 900123", "ring [phone]"),
        ("my number is 5551234567", "my number is [phone]"),
        ("card 4111 1111 1111 1111 exp 09/27", "card [card] exp 09/27"),
        ("amex 3782-822463-10005", "amex [card]"),
        ("from 192.0.2.14 and 2001:db8::1", "from [ip] and [ip]"),
        ("IBAN DE89 3704 0044 0532 0130 00 fast", "IBAN [iban] fast"),
        ("ssn 078-05-1120", "ssn [ssn]"),
        ("see https://bob:hunter2@example.com/x", "see [url]"),
        ("I live at 221 Baker Street", "I live at [address]"),
    ],
)
def test_each_kind_is_masked_with_its_placeholder(text, expected):
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The sword costs 1500 gold, 1,250,000 in the bank.",
        "Born in 1987, meet me 2024-05-12 at 10:30.",
        "Quest Q-20431 and item #48213; coordinates (1204, -388).",
        "Patch 1.2.3 and version 10.4.22.",
        "4111 1111 1111 1112 fails Luhn, so it is not a card.",
        "I rolled 12 345 points in 3 days.",
        "Score 15-3, ratio 3:2, 42%.",
    ],
)
def test_ordinary_numbers_are_kept(text):
    assert scrub_text(text) == text


def test_invisible_characters_and_fullwidth_digits_do_not_hide_data():
    # the sanitizer gives the model "jane@example.com" and ASCII digits: the log must not keep them
    assert scrub_text("jane\u200b@exam\u200bple.com") == "[email]"
    assert scrub_text("\uff14\uff11\uff11\uff11 1111 1111 1111") == "[card]"


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB83 WEST 1234 5698 7654 32")


def _luhn_complete(body: str) -> str:
    return next(body + str(d) for d in range(10) if luhn_valid(body + str(d)))


@settings(max_examples=150, deadline=None)
@given(
    body=st.text(alphabet="0123456789", min_size=14, max_size=14),
    sep=st.sampled_from(["", " ", "-"]),
    before=st.sampled_from(["pay with ", "card: ", "", "use "]),
    after=st.sampled_from(["", " please", ", exp 10/29", "."]),
)
def test_any_luhn_valid_card_number_is_masked(body, sep, before, after):
    digits = _luhn_complete("4" + body)
    card = sep.join(digits[i : i + 4] for i in range(0, 16, 4))
    assert scrub_text(before + card + after) == before + "[card]" + after


@settings(max_examples=150, deadline=None)
@given(
    user=st.from_regex(r"[a-z][a-z0-9._+-]{0,15}[a-z0-9]", fullmatch=True),
    domain=st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z]", fullmatch=True),
    tld=st.sampled_from(["com", "org", "net", "de", "travel", "co.uk"]),
)
def test_any_email_is_masked(user, domain, tld):
    assert scrub_text(f"mail {user}@{domain}.{tld} now") == "mail [email] now"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_scrubbing_any_text_is_total_and_leaves_no_new_data(text):
    once = scrub_text(text)
    assert isinstance(once, str)
    assert redact(once) == once  # nothing left that a second pass would mask


def test_storage_modes():
    line = "write to jane@example.com about 3 swords"
    scrubbed, none, raw = PlayerTextStorage("scrubbed"), PlayerTextStorage("none"), PlayerTextStorage("raw")
    assert scrubbed.player_text(line, 300) == "write to [email] about 3 swords"
    assert none.player_text(line, 300) == "" and raw.player_text(line, 300) == line
    user, npc = {"role": "user", "content": line}, {"role": "assistant", "content": "jane@example.com?"}
    assert scrubbed.stored_message(user)["content"] == "write to [email] about 3 swords"
    assert none.stored_message(user)["content"] == f'The traveller says: "{WITHHELD}"'
    assert none.stored_message(npc)["content"] == scrubbed.stored_message(npc)["content"] == "[email]?"
    assert raw.stored_message(user) == user and raw.stored_message(npc) == npc
    assert scrubbed.reply_data(line) == {"text": "write to [email] about 3 swords", "chars": len(line)}
    assert none.reply_data(line) == {"chars": len(line)}
    assert scrubbed.withholds_response("my mail is jane@example.com") and not raw.withholds_response(line)
    assert not scrubbed.withholds_response("Three swords, 45 gold each.")


def test_a_datum_cut_by_the_length_cap_is_still_masked():
    # the cap falls inside the email: scrubbing before the cut leaves no part of it
    stored = PlayerTextStorage("scrubbed").player_text("x" * 10 + " jane@example.com", 20)
    assert stored == "x" * 10 + " [email]" and "jane" not in stored


def test_an_unknown_mode_names_the_field():
    with pytest.raises(ConfigValueError, match=r"player_text_storage = 'public': must be one of 'none'"):
        check_storage_mode("player_text_storage", "public")
    with pytest.raises(ConfigValueError, match="player_text_storage"):
        PlayerTextStorage("Raw")


@pytest.mark.parametrize("text", ["0" * 1456, "1-" * 728, "a." * 726 + "com", "00 " * 485, "a " * 720 + "at x dot com"])
def test_hostile_input_is_scrubbed_in_bounded_time(text):
    # every pattern starts only where its run starts; about 20 ms each here, the limit is a hang guard
    started = time.perf_counter()
    scrub_text(text)
    assert time.perf_counter() - started < 30.0
