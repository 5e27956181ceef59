"""Bundle evaluation: log metrics against hand-computed values, KL and perplexity against direct
numpy computations on tiny bundles, and the comparison table and report with fake rows."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from npcrl.agent.persona import builtin_personas
from npcrl.errors import BundleError, LogFormatError
from npcrl.evaluation import (
    bootstrap_ci,
    compare_table,
    distinct_n,
    heldout_persona_texts,
    line_kl,
    log_metrics,
    ngrams,
    perplexity,
    repetition_flags,
    rows_from_columns,
    turn_kl,
    word_tokens,
    write_report,
)
from npcrl.evaluation import metrics as metrics_module
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter, Record
from npcrl.reward.spec import EventRule, RewardSpec
from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.sampler import SamplerConfig

ROOT = Path(__file__).resolve().parents[2]


# --- pure functions --------------------------------------------------------------------------


def test_word_tokens_are_lowercase_words_without_punctuation():
    assert word_tokens("Hm. Mind the sparks, friend! It'll HOLD.") == [
        "hm",
        "mind",
        "the",
        "sparks",
        "friend",
        "it'll",
        "hold",
    ]
    assert word_tokens("Café crème — déjà vu?") == ["café", "crème", "déjà", "vu"]
    assert word_tokens("...!") == []


def test_ngrams_stay_inside_one_line():
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a", "b"], 3) == []
    with pytest.raises(ValueError, match="n must be"):
        ngrams(["a"], 0)


def test_distinct_n_hand_computed():
    lines = [["a", "b", "a"], ["b", "a"]]
    assert distinct_n(lines, 1) == pytest.approx(2 / 5)  # {a, b} of 5 words
    # (a,b), (b,a) | (b,a): 2 unique of 3; joined across lines it would be 2 of 4.
    assert distinct_n(lines, 2) == pytest.approx(2 / 3)
    assert distinct_n([["x", "y", "z"]], 1) == 1.0
    assert math.isnan(distinct_n([["one"]], 2))
    assert math.isnan(distinct_n([], 1))


@pytest.mark.parametrize(
    ("line", "repeats"),
    [
        ("the iron is hot again", True),  # 2 of 3 trigrams seen
        ("the iron is hot", True),  # 2 of 2
        ("is hot again now", False),  # exactly half is not "mostly"
        ("cold water for the iron", False),  # 0 of 3
        ("today", True),  # too short for a trigram, but an exact repeat
        ("aye", False),  # short and new
        ("", False),
    ],
    ids=["two-of-three", "all", "exactly-half", "none", "short-exact-repeat", "short-new", "empty"],
)
def test_repetition_flags_hand_computed(line, repeats):
    history = ["the iron is hot today", "today"]
    flags = repetition_flags([word_tokens(t) for t in [*history, line]])
    # The first line never repeats; "today" is short and no earlier line is exactly "today".
    assert flags[:2] == [False, False]
    assert flags[2] is repeats


def test_bootstrap_ci_hand_computed_cases():
    assert bootstrap_ci([2.5] * 7) == (2.5, 2.5)
    # Means of 4 draws from {0,0,0,1}: P(mean <= 0.5) = 0.949 and P(mean <= 0.75) = 0.996, and
    # P(mean = 0) = 0.316, so the 2.5% and 97.5% points are 0 and 0.75.
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], seed=3) == (0.0, 0.75)


def test_bootstrap_ci_drawn_in_chunks_gives_the_same_interval(monkeypatch):
    monkeypatch.setattr(metrics_module, "_BOOTSTRAP_CHUNK_CELLS", 10)  # 2 resamples per draw
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], seed=3) == (0.0, 0.75)


def test_bootstrap_ci_matches_the_normal_interval_and_is_seeded():
    values = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    low, high = bootstrap_ci(values, seed=1)
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert low < values.mean() < high
    assert low == pytest.approx(values.mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(values.mean() + 1.96 * se, abs=0.25 * se)
    assert bootstrap_ci(values, seed=1) == (low, high)
    assert bootstrap_ci(values, seed=2) != (low, high)


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [([], {}, "non-empty"), ([1.0], {"resamples": 0}, "resamples"), ([1.0], {"confidence": 1.0}, "confidence")],
    ids=["empty", "no-resamples", "confidence"],
)
def test_bootstrap_ci_rejects_bad_arguments(values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(values, **kwargs)


# --- log metrics -----------------------------------------------------------------------------

SPEC = RewardSpec(rules={"reply": EventRule(0.5), "walk_away": EventRule(-1.0)}, discount=0.0)


def npc_turn(conv: str, index: int, text: str, n_tokens: int, *, filtered: bool = False, bundle: str = "b1") -> NpcTurn:
    return NpcTurn(
        conversation_id=conv, turn_index=index, npc_id="brom", bundle_id=bundle, player_text="hi",
        prompt_ids=[1, 2, 3], response_ids=list(range(4, 4 + n_tokens)), logprobs=[-0.5] * n_tokens,
        full_logprobs=[-0.6] * n_tokens, text=text, stop_reason="eos", sampler={}, latency_s=0.1,
        time_to_first_token_s=0.05, filtered=filtered, fallback=filtered, time=float(index),
    )  # fmt: skip


def event(conv: str, index: int, kind: str, value: float | None = None) -> EngagementEvent:
    return EngagementEvent(conversation_id=conv, turn_index=index, kind=kind, value=value, time=index + 0.5)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    records: list[Record] = [
        ConversationStart("c1", "brom", "p1", "Brom", "h", "b1", {}, 0.0),
        npc_turn("c1", 0, "Good steel takes time.", 3),
        event("c1", 0, "reply"),
        npc_turn("c1", 1, "Good steel takes time, friend.", 4),  # repeats 2 of its 3 trigrams
        event("c1", 1, "reply"),
        npc_turn("c1", 2, "Twelve silver.", 2),
        event("c1", 2, "walk_away"),
        ConversationEnd("c1", "walk_away", 3.0),
        # A filtered turn: its reply is capped at 0, and its canned line is not a model line.
        npc_turn("c2", 0, "Hm. Say that again?", 7, filtered=True),
        event("c2", 0, "reply"),
        npc_turn("c2", 1, "Welcome, love!", 2),
        event("c2", 1, "reply"),
        ConversationStart("c3", "brom", "p3", "Brom", "h", "b1", {}, 0.0),  # no NPC turn: not counted
        ConversationEnd("c3", "closed", 1.0),
        npc_turn("c4", 0, "Halt.", 1, bundle="b2"),
        event("c4", 0, "rating", 1.0),  # no rule for ratings in SPEC: worth 0
    ]
    with PlayLogWriter(tmp_path / "logs") as writer:
        for record in records:
            writer.append(record)
    return tmp_path / "logs"


def test_log_metrics_hand_computed(log_dir):
    m = log_metrics(log_dir, SPEC)
    assert (m.conversations, m.turns, m.model_lines) == (3, 6, 5)
    # Conversation sums: c1 0.5 + 0.5 - 1 = 0; c2 0 (filtered, capped) + 0.5; c4 0.
    assert m.reward_per_conversation == pytest.approx(0.5 / 3)
    assert m.reward_per_turn == pytest.approx(0.5 / 6)
    assert m.conversation_length == pytest.approx(2.0)
    assert m.walk_away_rate == pytest.approx(1 / 3)
    assert m.filtered_rate == pytest.approx(1 / 6)
    assert m.words_per_line == pytest.approx((4 + 5 + 2 + 2 + 1) / 5)
    assert m.tokens_per_line == pytest.approx((3 + 4 + 2 + 2 + 1) / 5)
    assert m.distinct_1 == pytest.approx(10 / 14)
    assert m.distinct_2 == pytest.approx(6 / 9)
    assert m.repetition_rate == pytest.approx(1 / 5)
    low, high = m.reward_per_conversation_ci
    assert (low, high) == bootstrap_ci([0.0, 0.5, 0.0], seed=0)
    assert 0.0 <= low < m.reward_per_conversation < high <= 0.5


def test_log_metrics_rows_and_json(log_dir):
    m = log_metrics(log_dir, SPEC, seed=5)
    row = m.as_dict()
    assert row["reward / conversation (95% CI)"] == (m.reward_per_conversation, *m.reward_per_conversation_ci)
    assert row["walk-away rate"] == m.walk_away_rate
    assert json.loads(json.dumps(m.to_json()))["reward_per_conversation_ci"] == list(m.reward_per_conversation_ci)


def test_the_rows_are_keyed_by_the_shared_metric_names(log_dir):
    """The loop's guards, loop.md and ``npcrl eval`` read the rows by these names; the labels are
    also the keys of metrics.json and a round's decision.json, so their text is pinned."""
    from npcrl.evaluation import metric_names as names

    assert list(log_metrics(log_dir, SPEC).as_dict()) == [
        names.CONVERSATIONS,
        names.NPC_TURNS,
        names.ENGAGEMENT,
        names.REWARD_PER_TURN,
        names.CONVERSATION_LENGTH,
        names.WALK_AWAY_RATE,
        names.FILTERED_RATE,
        names.WORDS_PER_LINE,
        names.TOKENS_PER_LINE,
        names.DISTINCT_1,
        names.DISTINCT_2,
        names.REPETITION_RATE,
        names.CARD_CONTRADICTIONS,
    ]
    assert (names.ENGAGEMENT, names.KL_PER_LINE, names.PERPLEXITY, names.PAIRED_GAIN) == (
        "reward / conversation (95% CI)",
        "KL to reference (nats / line)",
        "held-out persona perplexity",
        "engagement gain, paired (95% CI)",
    )


def test_log_metrics_selects_one_bundle(log_dir):
    m = log_metrics(log_dir, SPEC, bundle_id="b2")
    assert (m.conversations, m.turns, m.words_per_line) == (1, 1, 1.0)
    with pytest.raises(LogFormatError, match=r"logs \(bundle nope\): no conversation"):
        log_metrics(log_dir, SPEC, bundle_id="nope")


def test_log_metrics_of_an_empty_directory_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogFormatError, match="empty: no conversation with a logged NPC turn"):
        log_metrics(tmp_path / "empty", SPEC)


# --- model metrics (tiny bundles) ------------------------------------------------------------

PLAYER_LINES = ["Hello there!", "Can you fix my sword?", "Where is the inn?"]


@pytest.fixture(scope="module")
def models(tiny_bundles) -> dict[str, OnnxCausalLM]:
    return {name: OnnxCausalLM(tiny_bundles[name]) for name in ("llama-fp32", "llama-q8", "gpt2-fp32")}


@pytest.fixture(scope="module")
def turns(models) -> list[NpcTurn]:
    """Logged-like turns: the fp32 model's own sampled lines, plus a failed turn with no response."""
    model = models["llama-fp32"]
    out = [npc_turn("c0", 0, "(failed)", 0)]
    for k, line in enumerate(PLAYER_LINES):
        prompt = model.tokenizer.encode_chat(
            [{"role": "system", "content": "You are Brom."}, {"role": "user", "content": line}]
        )
        result = model.generate_text(prompt, SamplerConfig(temperature=1.0, seed=k, max_new_tokens=10))
        turn = npc_turn(f"c{k + 1}", 0, result.text, 0)
        turn.prompt_ids, turn.response_ids = prompt, result.token_ids
        out.append(turn)
    assert all(len(t.response_ids) >= 2 for t in out[1:])
    return out


def softmax64(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max())
    return z / z.sum()


def direct_line_kl(model: OnnxCausalLM, reference: OnnxCausalLM, turns: list[NpcTurn]) -> float:
    """Position by position: each state's prefix fed on its own, the KL written out over the vocabulary."""
    per_turn = []
    for turn in turns:
        if not turn.response_ids:
            continue
        total = 0.0
        for t in range(len(turn.response_ids)):
            prefix = turn.prompt_ids + turn.response_ids[:t]
            p = softmax64(model.forward(prefix, model.new_cache()))
            q = softmax64(reference.forward(prefix, reference.new_cache()))
            total += float(np.sum(p * (np.log(p) - np.log(q))))
        per_turn.append(total)
    return sum(per_turn) / len(per_turn)


def test_line_kl_of_a_bundle_against_itself_is_zero(tiny_bundles, models, turns):
    again = OnnxCausalLM(tiny_bundles["llama-fp32"])
    assert line_kl(models["llama-fp32"], again, turns) == pytest.approx(0.0, abs=1e-12)


def test_line_kl_of_q8_against_fp32_matches_a_direct_computation(models, turns):
    kl = line_kl(models["llama-q8"], models["llama-fp32"], turns)
    assert kl > 1e-6
    # rel 1e-6: the reverse KL(ref || model) differs by about 1e-3 here, a wrong offset by 4e-2.
    assert kl == pytest.approx(direct_line_kl(models["llama-q8"], models["llama-fp32"], turns), rel=1e-6)


def test_line_kl_max_turns_scores_the_first_turns_with_a_response(models, turns):
    first = turn_kl(models["llama-q8"], models["llama-fp32"], turns[1].prompt_ids, turns[1].response_ids)
    assert line_kl(models["llama-q8"], models["llama-fp32"], turns, max_turns=1) == pytest.approx(first, rel=1e-12)
    with pytest.raises(LogFormatError, match="no logged NPC turn"):
        line_kl(models["llama-q8"], models["llama-fp32"], turns[:1])


def test_line_kl_between_families_sharing_a_tokenizer(models, turns):
    """The tiny GPT-2 and Llama share one tokenizer, so they may be compared: an unrelated model is
    much farther from the reference than a quantised copy of it."""
    gpt2, fp32 = models["gpt2-fp32"], models["llama-fp32"]
    assert gpt2.vocab_size == fp32.vocab_size
    kl = line_kl(gpt2, fp32, turns)
    assert kl == pytest.approx(direct_line_kl(gpt2, fp32, turns), rel=1e-6)
    assert kl > 100 * line_kl(models["llama-q8"], fp32, turns)


def test_line_kl_refuses_bundles_with_different_vocabularies(tiny_bundles, models, turns):
    other = OnnxCausalLM(tiny_bundles["llama-fp32"])
    other.tokenizer.tokenizer.add_tokens(["<|quest|>"])  # same logit width, one more token in the map
    with pytest.raises(BundleError, match="do not share a vocabulary") as info:
        line_kl(models["llama-q8"], other, turns)
    assert str(tiny_bundles["llama-q8"]) in str(info.value) and str(tiny_bundles["llama-fp32"]) in str(info.value)
    wider = OnnxCausalLM(tiny_bundles["llama-fp32"])
    wider.vocab_size += 1
    with pytest.raises(BundleError, match=r"vocab_size \d+ vs \d+"):
        line_kl(models["llama-q8"], wider, turns)


def test_perplexity_matches_a_direct_computation(models):
    model = models["llama-fp32"]
    texts = ["The blacksmith wiped the soot from his hands.", "Ale or cider?", "x"]  # "x" predicts nothing
    nll, count = 0.0, 0
    for text in texts:
        ids = model.tokenizer.encode(text)
        for k in range(1, len(ids)):
            p = softmax64(model.forward(ids[:k], model.new_cache()))
            nll -= math.log(p[ids[k]])
            count += 1
    assert count == len(model.tokenizer.encode(texts[0])) + len(model.tokenizer.encode(texts[1])) - 2
    assert perplexity(model, texts) == pytest.approx(math.exp(nll / count), rel=1e-9)


def test_perplexity_needs_a_text_with_two_tokens(models):
    with pytest.raises(ValueError, match="two or more tokens"):
        perplexity(models["llama-fp32"], ["", "x"])


def test_heldout_texts_are_in_character_and_absent_from_the_cards(models):
    texts = heldout_persona_texts()
    assert 35 <= len(texts) <= 50 and len(set(texts)) == len(texts)
    assert not any(t.startswith("#") for t in texts)
    card_grams: set[tuple[str, ...]] = set()
    for persona in builtin_personas().values():
        for text in (persona.system_prompt(), persona.greeting, *persona.fallback_lines, *persona.example_lines):
            card_grams.update(ngrams(word_tokens(text), 5))
    copied = [t for t in texts if any(g in card_grams for g in ngrams(word_tokens(t), 5))]
    assert copied == []
    ppl = perplexity(models["llama-fp32"], texts)
    assert 1.0 < ppl < float("inf")


def test_evaluation_runs_without_torch_or_pygame(tiny_bundles, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "pygame"):
                    raise ImportError(name + " is blocked in this test")
                return None
        sys.meta_path.insert(0, Block())
        from npcrl.evaluation import compare_table, heldout_persona_texts, perplexity, write_report
        from npcrl.runtime.model import OnnxCausalLM
        model = OnnxCausalLM({str(tiny_bundles["llama-q8"])!r})
        rows = {{"perplexity": {{"q8": perplexity(model, heldout_persona_texts()[:3])}}}}
        print(compare_table(rows))
        write_report({str(tmp_path)!r}, rows, "no torch")
        assert not {{"torch", "transformers", "pygame"}} & set(sys.modules)
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("ok")


# --- report ----------------------------------------------------------------------------------

ROWS = {
    "reward / conversation (95% CI)": {"base": (0.25, 0.1, 0.4), "candidate": (0.5, 0.3, 0.7)},
    "walk-away rate": {"base": 0.2, "candidate": 0.125},
    "conversations": {"base": 120.0, "candidate": 80.0},
    "distinct-2": {"base": math.nan, "candidate": 0.5},
    "KL to reference (nats / line)": {"candidate": 0.8},
}


def test_compare_table_two_bundles_has_a_delta_column():
    lines = compare_table(ROWS).splitlines()
    assert lines[0].split() == ["metric", "base", "candidate", "delta", "(candidate", "-", "base)"]
    assert set(lines[1]) == {"-", " "}
    cells = {line[:30].strip(): line[30:].split() for line in lines[2:]}
    assert cells["reward / conversation (95% CI)"] == ["0.25", "[0.1,", "0.4]", "0.5", "[0.3,", "0.7]", "+0.25"]
    assert cells["walk-away rate"] == ["0.2", "0.125", "-0.075"]
    assert cells["conversations"] == ["120", "80", "-40"]
    assert cells["distinct-2"] == ["n/a", "0.5", "n/a"]
    assert cells["KL to reference (nats / line)"] == ["-", "0.8", "-"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up


def test_compare_table_without_exactly_two_bundles_has_no_delta():
    three = {"reward / turn": {"a": 0.1, "b": 0.2, "c": 0.3}}
    assert "delta" not in compare_table(three)
    assert compare_table(three).splitlines()[2].split() == ["reward", "/", "turn", "0.1", "0.2", "0.3"]
    assert "delta" not in compare_table({"reward / turn": {"a": 0.1}})


def test_compare_table_rejects_a_malformed_interval():
    with pytest.raises(ValueError, match="'bad'.*estimate, low, high"):
        compare_table({"bad": {"a": (0.1, 0.2), "b": 0.3}})


def test_rows_from_columns_pivots_log_metrics(log_dir):
    columns = {
        "base": log_metrics(log_dir, SPEC).as_dict(),
        "candidate": log_metrics(log_dir, SPEC, bundle_id="b2").as_dict(),
    }
    rows = rows_from_columns(columns)
    assert list(rows) == list(columns["base"])
    assert rows["conversations"] == {"base": 3.0, "candidate": 1.0}
    assert "-2" in compare_table(rows).splitlines()[2]  # conversations: 1 - 3


def test_write_report_embeds_the_png_in_a_self_contained_page(tmp_path):
    png_path, html_path = write_report(tmp_path / "out", ROWS, "Base <vs> candidate")
    assert png_path is not None
    png = png_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    page = html_path.read_text(encoding="utf-8")
    assert base64.b64encode(png).decode("ascii") in page
    assert "<title>Base &lt;vs&gt; candidate</title>" in page
    assert "<td>0.25 [0.1, 0.4]</td>" in page and "<td>+0.25</td>" in page
    assert "src=" in page and "http" not in page  # nothing to fetch


def test_write_report_draws_error_bars_only_for_intervals(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    calls: list[tuple[tuple[float, ...], object]] = []
    original = Axes.bar

    def spy(self, x, height, *args, **kwargs):
        calls.append((tuple(height), kwargs.get("yerr")))
        return original(self, x, height, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", spy)
    write_report(tmp_path, ROWS, "bars")
    assert len(calls) == len(ROWS)
    interval = [yerr for heights, yerr in calls if heights == (0.25, 0.5)]
    # Distances below and above each estimate: 0.25 - 0.1, 0.5 - 0.3 | 0.4 - 0.25, 0.7 - 0.5.
    np.testing.assert_allclose(np.asarray(interval[0]), [[0.15, 0.2], [0.15, 0.2]])
    assert [yerr for heights, yerr in calls if heights != (0.25, 0.5)] == [None] * (len(ROWS) - 1)


def test_write_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    png_path, html_path = write_report(tmp_path, ROWS, "no charts")
    assert png_path is None and not (tmp_path / "evaluation.png").exists()
    page = html_path.read_text(encoding="utf-8")
    assert "matplotlib is not installed" in page and "<img" not in page
    assert "<td>-0.075</td>" in page
