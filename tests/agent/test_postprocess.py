"""NPC line post-processing: examples of what small models emit, and properties over random text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npcrl.agent.postprocess import postprocess_line

CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def pp(text: str, npc_name: str = "Brom", **kwargs) -> str:
    return postprocess_line(text, npc_name=npc_name, special_tokens=CHATML_TOKENS, **kwargs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello there, friend.", "Hello there, friend."),
        # Own labels and template headers at the start go.
        ("Brom: Hello there, friend.", "Hello there, friend."),
        ("assistant: Hm. Mind the sparks.", "Hm. Mind the sparks."),
        ("Assistant: Brom: **Aye.**", "**Aye.**"),
        ("<|im_start|>assistant\nAye, good steel.", "Aye, good steel."),
        ("**Brom:** Twelve silver.", "Twelve silver."),
        # The model running on into the player's turn or a new template turn is cut off.
        ("Aye, good steel.<|im_end|>\n<|im_start|>user\nHow much?", "Aye, good steel."),
        ("Aye, I can make that.\nPlayer: How much?\nBrom: Twelve silver.", "Aye, I can make that."),
        ("Aye, I can make that.\nTraveller: How much?", "Aye, I can make that."),
        ("Aye, I can make that.\n  traveler: how much?", "Aye, I can make that."),
        ("Aye, I can make that.\nUser: How much?", "Aye, I can make that."),
        ("Aye, I can make that.\nuser\nHow much?", "Aye, I can make that."),
        ("Aye. Twelve silver. User: ok, deal.", "Aye. Twelve silver."),
        ('"Twelve silver." Player: deal', "Twelve silver."),
        ("Ask Mara.\nMara: Hello, love!", "Ask Mara."),
        ("Ask the captain.\nCaptain Hedda: Halt!", "Ask the captain."),
        # A later line with the NPC's own label continues the NPC's turn.
        ("Hm.\nBrom: Twelve silver, friend.", "Hm. Twelve silver, friend."),
        # Nothing of the NPC's own: the caller uses a fallback line.
        ("Player: what do you sell?", ""),
        ("<|im_end|>Hello", ""),
        ("<|im_start|>user\nhi", ""),
        ("", ""),
        # Quotes around the whole line, or a lone unbalanced one, go; inner quotes stay.
        ('"Welcome to the forge!"', "Welcome to the forge!"),
        ("\u201cWelcome!\u201d", "Welcome!"),
        ('"Welcome to the forge!', "Welcome to the forge!"),
        ("'Tis a fine blade, isn't it?'", "Tis a fine blade, isn't it?"),
        ('"Aye," he said. "Good steel."', '"Aye," he said. "Good steel."'),
        # Whitespace is collapsed.
        ("  Good   steel\n\ntakes   time.  ", "Good steel takes time."),
        # Ends on a complete sentence when that keeps at least 40% of the text.
        ("Good steel takes time. Bad steel takes lives. And the", "Good steel takes time. Bad steel takes lives."),
        ('He said "go." And then he', 'He said "go."'),
        (
            "Hi. Then I walked all the way up the north road to the old mill and",
            "Hi. Then I walked all the way up the north road to the old mill and",
        ),
        ("It costs 3.5 silver and", "It costs 3.5 silver and"),
        ("Wait... what was that", "Wait... what was that"),
    ],
)
def test_examples(raw, expected):
    assert pp(raw) == expected


def test_multi_word_npc_names():
    assert pp("Captain Hedda: Halt, traveller.", npc_name="Captain Hedda") == "Halt, traveller."
    assert pp("Hedda: Halt, traveller.", npc_name="Captain Hedda") == "Halt, traveller."
    assert pp("Halt.\nBrom: Aye.", npc_name="Captain Hedda") == "Halt."


def test_custom_player_names():
    assert pp("Welcome, Aria.\nAria: Thanks!", player_names=("Aria",)) == "Welcome, Aria."
    # With custom names only, the ChatML roles still end the turn.
    assert pp("Welcome.\nuser: hi", player_names=("Aria",)) == "Welcome."


def test_length_cap_prefers_a_sentence_end():
    text = "Good steel takes time. " * 20
    out = pp(text, max_chars=100)
    assert len(out) <= 100 and out.endswith("time.") and text.startswith(out)


def test_length_cap_without_a_sentence_end_marks_the_cut():
    out = pp("word " * 100, max_chars=50)
    assert len(out) <= 50 and out.endswith("word…")
    assert pp("x" * 100, max_chars=10) == "x" * 9 + "…"
    assert pp("A long sentence without an end here", max_chars=1) == "…"


def test_bad_arguments():
    with pytest.raises(ValueError):
        pp("hi", npc_name=" ")
    with pytest.raises(ValueError):
        pp("hi", max_chars=0)


pieces = st.sampled_from(
    [
        *CHATML_TOKENS,
        "<|",
        "|>",
        "assistant",
        "user",
        "\n",
        " ",
        "Player:",
        "Brom:",
        "Traveller:",
        "Captain Hedda:",
        '"',
        "\u201c",
        "\u201d",
        "'",
        ".",
        "!",
        "?",
        "…",
        ",",
        "**",
        "Hello there",
        "Good steel",
    ]
)
raw_lines = st.lists(st.one_of(st.text(max_size=10), pieces), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(raw_lines, st.integers(min_value=1, max_value=300))
def test_properties(raw, max_chars):
    out = pp(raw, max_chars=max_chars)
    assert len(out) <= max_chars
    assert not any(token in out for token in CHATML_TOKENS)
    assert not re.search(r"<\|[^\n]*?\|>", out)
    assert "\n" not in out and out == out.strip()
    assert pp(out, max_chars=max_chars) == out


def test_control_characters_never_reach_the_player():
    from npcrl.agent.postprocess import postprocess_line

    assert postprocess_line("Aye\x1b[0m, friend\x00.\x7f Come in\x05.", npc_name="Brom") == "Aye[0m, friend. Come in."
