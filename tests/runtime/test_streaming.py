"""Streaming: incremental detokenisation of byte-level BPE, and stop-string hold-back."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_tokenizer import train_byte_level_bpe
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from npcrl.runtime.streaming import IncrementalDecoder, StopStringMatcher

CORPUS = [
    "The blacksmith wiped the soot from his hands and looked up at the stranger.",
    "Welcome to the tavern, traveller! Ale or cider? The guard says the gates close at sundown.",
    "Café crème, naïve façade, über Straße, Grüße aus München — déjà vu.",
    "日本語のテキストと絵文字 🐉🔥 も少し。ドラゴンが来た！",
] * 3
MULTIBYTE_TEXTS = {
    "accents": "Café crème über alles, déjà vu",
    "cjk": "日本語のテキスト",
    "emoji": "a dragon 🐉 and fire 🔥!",
    "mixed": "Grüße 🐉 日本 — naïve",
    "rare-chars": "Ωμέγα ∑ ✓ 𝄞",  # mostly unseen in training: single-byte tokens only
    "leading-space": "  two leading spaces, trailing one ",
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_byte_level_bpe(CORPUS, 300)


def stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> tuple[list[str], str]:
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert decoder.text == "".join(pieces)
    return pieces, decoder.text


def test_some_characters_really_span_several_tokens(tokenizer):
    split = [ch for ch in "éü日本語🐉" if len(tokenizer.encode(ch).ids) > 1]
    assert split, "the fixture tokenizer should split some multi-byte characters across tokens"
    # ... and some tokens end in the middle of a character.
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(MULTIBYTE_TEXTS["mixed"]).ids]
    assert any("\ufffd" in piece for piece in pieces)


@pytest.mark.parametrize("text", list(MULTIBYTE_TEXTS.values()), ids=list(MULTIBYTE_TEXTS))
def test_stream_concatenates_to_full_decode_without_partial_characters(tokenizer, text):
    ids = tokenizer.encode(text).ids
    pieces, streamed = stream(tokenizer, ids)
    assert streamed == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert pieces[-1] == ""  # complete text: nothing left for flush


def test_characters_are_emitted_as_soon_as_they_are_complete(tokenizer):
    text = "日本語🐉"
    decoder = IncrementalDecoder(tokenizer)
    seen = ""
    for i in tokenizer.encode(text).ids:
        seen += decoder.push(i)
        # Whatever has been emitted is exactly the longest complete prefix decodable so far.
        assert text.startswith(seen)
    assert seen == text


def test_complete_text_before_a_split_character_is_not_held_back(tokenizer):
    # Tokens like "Ġð" (a space, then the first byte of an emoji): the space is final at once.
    mixed = []
    for token_id in range(tokenizer.get_vocab_size()):
        alone = tokenizer.decode([token_id])
        if alone.endswith("\ufffd") and alone.rstrip("\ufffd") and "\ufffd" not in alone.rstrip("\ufffd"):
            mixed.append((token_id, alone.rstrip("\ufffd")))
    assert mixed, "the fixture should have tokens ending in the middle of a character"
    for token_id, head in mixed:
        decoder = IncrementalDecoder(tokenizer)
        assert decoder.push(token_id) == head
        assert decoder.flush() == "\ufffd" * (len(tokenizer.decode([token_id])) - len(head))


@pytest.mark.parametrize("skip", [True, False], ids=["skip-special", "keep-special"])
def test_special_tokens(tokenizer, skip):
    start, end = (tokenizer.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    ids = [start, *tokenizer.encode("assistant\nHallo 日本!").ids, end, start, *tokenizer.encode("🐉").ids]
    pieces, streamed = stream(tokenizer, ids, skip_special_tokens=skip)
    assert streamed == tokenizer.decode(ids, skip_special_tokens=skip)
    assert ("<|im_start|>" in streamed) is not skip
    assert not any("\ufffd" in piece for piece in pieces)


def test_truncated_character_is_released_by_flush(tokenizer):
    ids = tokenizer.encode("ok 🐉").ids
    assert tokenizer.decode(ids[:-1]).endswith("\ufffd"), "the fixture should split the emoji"
    decoder = IncrementalDecoder(tokenizer)
    shown = "".join(decoder.push(i) for i in ids[:-1])
    assert "\ufffd" not in shown
    tail = decoder.flush()
    assert shown + tail == tokenizer.decode(ids[:-1])
    assert tail.endswith("\ufffd")
    assert decoder.flush() == ""


def test_leading_space_of_later_tokens_survives_with_a_sentencepiece_style_decoder():
    # Metaspace decoders strip the space of the text's first token only; decoding each token on
    # its own would glue every word together. The prefix window keeps later tokens in context.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    tok.train_from_iterator(CORPUS[:2], trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"]))
    ids = tok.encode("the guard says the gates close").ids
    pieces, streamed = stream(tok, ids)
    assert streamed == tok.decode(ids) == "the guard says the gates close"
    assert pieces[0].startswith("t")


class _CountingTokenizer:
    """Records how many ids each decode call sees."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.sizes.append(len(ids))
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


def test_cost_per_token_is_a_small_window(tokenizer):
    counting = _CountingTokenizer(tokenizer)
    ids = tokenizer.encode(" ".join(MULTIBYTE_TEXTS.values()) * 20).ids
    decoder = IncrementalDecoder(counting)  # type: ignore[arg-type]
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == tokenizer.decode(ids)
    assert len(ids) > 500
    assert max(counting.sizes) <= 8


ALPHABET = "ab \nCé ü日本語🐉🔥—."


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=ALPHABET, max_size=40))
def test_property_stream_equals_decode_for_random_text(tokenizer, text):
    ids = tokenizer.encode(text).ids
    pieces, streamed = stream(tokenizer, ids)
    assert streamed == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_stream_equals_decode_for_arbitrary_ids(tokenizer, data):
    # Ids a model might emit, invalid UTF-8 and special tokens included: still the full decode.
    ids = data.draw(st.lists(st.integers(0, tokenizer.get_vocab_size() - 1), max_size=30))
    skip = data.draw(st.booleans())
    _, streamed = stream(tokenizer, ids, skip_special_tokens=skip)
    assert streamed == tokenizer.decode(ids, skip_special_tokens=skip)


# --- StopStringMatcher --------------------------------------------------------------------------


def run_matcher(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    matcher = StopStringMatcher(stops)
    shown, stopped = "", False
    for chunk in chunks:
        piece, stopped = matcher.feed(chunk)
        shown += piece
    if not stopped:
        shown += matcher.flush()
    return shown, stopped


def expected_cut(stops: list[str], text: str) -> tuple[str, bool]:
    """Generation stops where the first stop string completes; the text is cut at its start."""
    hits = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    return (text[: min(hits)[1]], True) if hits else (text, False)


def test_stop_string_split_at_every_point():
    text = "Hello there<END> and more"
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert run_matcher(["<END>"], [text[:i], text[i:j], text[j:]]) == ("Hello there", True), (i, j)


def test_text_before_a_possible_stop_is_held_back_then_released():
    matcher = StopStringMatcher(["<END>"])
    assert matcher.feed("Hello <E") == ("Hello ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("X!") == ("<ENX!", False)  # not a stop after all
    assert matcher.feed(" <") == (" ", False)
    assert matcher.flush() == "<"
    assert matcher.flush() == ""
    assert not matcher.stopped and matcher.matched is None


@pytest.mark.parametrize(
    ("stop", "text", "shown"),
    [
        ("abab", "abaabab", "aba"),
        ("aab", "aaab", "a"),
        ("abcabd", "abcabcabd", "abc"),
        ("aaa", "aaaa", ""),
        ("\n\n", "line\n \n\nnext", "line\n "),
    ],
    ids=["abab", "aab", "abcabd", "aaa", "blank-line"],
)
def test_overlapping_prefixes(stop, text, shown):
    assert run_matcher([stop], list(text)) == (shown, True)
    assert run_matcher([stop], [text]) == (shown, True)


def test_several_stop_strings_earliest_wins():
    matcher = StopStringMatcher(["world", "lo w", "<|im_end|>"])
    assert matcher.feed("hel") == ("he", False)
    assert matcher.feed("lo world") == ("l", True)  # "lo w" starts before "world"
    assert matcher.stopped and matcher.matched == "lo w"
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


@pytest.mark.parametrize("chunks", [["aba"], ["a", "b", "a"], ["ab", "a"]], ids=["one-chunk", "char-by-char", "split"])
def test_first_stop_to_complete_wins_however_the_text_is_chunked(chunks):
    # "b" completes before "aba" does, although "aba" starts earlier: a streaming generation
    # would have stopped at "b" and never seen the rest.
    assert run_matcher(["aba", "b"], chunks) == ("a", True)
    # Completing at the same point, the one starting first is cut.
    assert run_matcher(["b", "ab"], chunks) == ("", True)


def test_no_stop_strings_pass_everything_through():
    matcher = StopStringMatcher(())
    assert matcher.feed("abc") == ("abc", False)
    assert matcher.feed("") == ("", False)
    assert matcher.flush() == ""


@pytest.mark.parametrize("stops", ["END", [""], [None]], ids=["bare-str", "empty", "not-str"])
def test_invalid_stop_strings_raise(stops):
    with pytest.raises(ValueError, match="stop_strings"):
        StopStringMatcher(stops)


@settings(max_examples=200, deadline=None)
@given(
    stops=st.lists(st.text(alphabet="ab", min_size=1, max_size=4), max_size=3),
    text=st.text(alphabet="abc", max_size=20),
    cuts=st.lists(st.integers(0, 20), max_size=5),
)
def test_property_matcher_equals_cut_at_first_stop(stops, text, cuts):
    points = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert run_matcher(stops, chunks) == expected_cut(stops, text)
