"""The persona probe: scripted identity conversations on a bundle, counted per conversation, and
the paired rise between two bundles that the loop's contradiction guard reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from npcrl.agent.npc_agent import AgentConfig, with_sampler
from npcrl.agent.persona import Persona, builtin_personas
from npcrl.evaluation import persona_probe
from npcrl.evaluation.persona_probe import (
    PROBE_COUNTS,
    PROBE_FALLBACKS,
    PROBE_SETUP,
    PROBE_SHARE,
    ProbeSetup,
    probe_personas,
    probe_rise,
)
from npcrl.evaluation.shares import ratio_interval
from npcrl.runtime.model import OnnxCausalLM
from npcrl.sim.ordered import session_options_for

TWO_CARDS = list(builtin_personas().values())[:2]
SHORT_PROMPTS = {p.id: f"You are {p.name}." for p in TWO_CARDS}  # the cards' own overflow the tiny model


def flag_by_text(text: str, persona: Persona) -> list[str]:
    """A stand-in checker (a tiny random model never names itself): flags a line by its text's hash,
    so the counts depend on exactly which tokens were drawn."""
    return ["name:X"] if hashlib.sha256(text.encode()).digest()[0] % 2 else []


@pytest.fixture
def text_checker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persona_probe, "card_contradictions", flag_by_text)


def tiny_config() -> AgentConfig:
    return with_sampler(AgentConfig(), max_new_tokens=4)


def setup_row(lines: int = 8) -> dict:
    return ProbeSetup(lines, 7, ("a", "b"), 40).to_dict()


def test_the_rise_pairs_conversations_and_needs_the_same_setup() -> None:
    current = {PROBE_COUNTS: [1, 0, 2, 1], PROBE_SETUP: setup_row()}
    candidate = {PROBE_COUNTS: [2, 1, 2, 1], PROBE_SETUP: setup_row()}
    rise = probe_rise(candidate, current)
    assert rise is not None and rise[0] == pytest.approx(2 / 16)
    assert rise == pytest.approx(ratio_interval([1, 1, 0, 0], [4, 4, 4, 4]))
    assert probe_rise(current, current) == (0.0, 0.0, 0.0)
    assert probe_rise(candidate, {**current, PROBE_SETUP: setup_row(lines=12)}) is None  # another probe
    assert probe_rise(candidate, {}) is None  # the current bundle was never probed
    with pytest.raises(ValueError, match="3 and 4 conversations"):
        probe_rise({**candidate, PROBE_COUNTS: [1, 1, 1]}, current)


def test_probes_played_with_other_system_prompts_do_not_pair() -> None:
    """The prompts change every line, so a probe records which it played; a probe recorded before
    the setup held them played the cards' own and still pairs with one that did."""
    from npcrl.evaluation.persona_probe import prompts_digest

    current = {PROBE_COUNTS: [1, 0, 2, 1], PROBE_SETUP: setup_row()}
    prompted = ProbeSetup(8, 7, ("a", "b"), 40, prompts_digest(SHORT_PROMPTS)).to_dict()
    assert probe_rise({PROBE_COUNTS: [2, 1, 2, 1], PROBE_SETUP: prompted}, current) is None
    recorded_before = {key: value for key, value in setup_row().items() if key != "system_prompts"}
    assert probe_rise({PROBE_COUNTS: [2, 1, 2, 1], PROBE_SETUP: recorded_before}, current) is not None
    assert prompts_digest({}) is None
    assert prompts_digest(SHORT_PROMPTS) != prompts_digest({**SHORT_PROMPTS, TWO_CARDS[0].id: "You are nobody."})


def test_a_probe_counts_each_conversation_and_does_not_depend_on_concurrency(
    tiny_bundle: Path, text_checker: None
) -> None:
    probes, shares = [], []
    for concurrency in (1, 3):
        model = OnnxCausalLM(tiny_bundle, session_options_for(concurrency))
        progress = (lambda persona, share: shares.append((persona, share))) if concurrency == 3 else None
        probes.append(probe_personas(model, TWO_CARDS, tiny_config(), 5, 3, concurrency, SHORT_PROMPTS, progress))
    serial, concurrent = probes
    # 5 lines per persona: a conversation of 4 and one of 1, persona after persona
    assert serial.lines == (4, 1, 4, 1) and len(serial.contradicting) == 4
    assert 0 < sum(serial.contradicting) < 10 and serial.fallbacks == 0  # the stand-in flags some lines, not all
    assert concurrent == serial
    # each persona's share is reported once its conversations are counted, in order at any concurrency
    expected = [
        (TWO_CARDS[0].id, sum(serial.contradicting[:2]) / 5),
        (TWO_CARDS[1].id, sum(serial.contradicting[2:]) / 5),
    ]
    assert shares == expected
    rows = serial.rows()
    assert rows[PROBE_SHARE][0] == sum(serial.contradicting) / 10
    assert rows[persona_probe.PROBE_REASONS] == {"name": sum(serial.contradicting)}  # the stand-in flags names
    assert rows[PROBE_SETUP]["personas"] == [p.persona_hash for p in TWO_CARDS]
    assert rows[PROBE_SETUP]["system_prompts"] == persona_probe.prompts_digest(SHORT_PROMPTS)
    another_seed = probe_personas(OnnxCausalLM(tiny_bundle), TWO_CARDS, tiny_config(), 5, 4, 1, SHORT_PROMPTS)
    assert another_seed.contradicting != serial.contradicting or another_seed.reasons != serial.reasons


def test_the_probe_plays_with_the_check_off_and_no_time_budget(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the check on, a flagged first draw would be resampled and the probe would count the
    agent's shown lines, not the model's; a time budget would let load turn lines into fallbacks."""
    import npcrl.agent.npc_agent

    seen = []
    real = npcrl.agent.npc_agent.NpcAgent.__init__

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(kwargs["config"])
        real(self, *args, **kwargs)

    monkeypatch.setattr(npcrl.agent.npc_agent.NpcAgent, "__init__", spy)
    probe_personas(OnnxCausalLM(tiny_bundle), TWO_CARDS[:1], tiny_config(), 2)
    assert seen and all(c.consistency_retries is None and c.time_budget_s is None for c in seen)


def test_the_command_compares_bundles_on_the_same_conversations(
    tiny_bundles: dict[str, Path], tmp_path: Path, text_checker: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from npcrl.cli.main import main

    out = tmp_path / "probe.json"
    first, second = str(tiny_bundles["llama-fp32"]), str(tiny_bundles["llama-q8"])
    argv = ["persona-probe", "--bundle", first, "--bundle", second, "--lines", "6", "--max-new-tokens", "4"]
    assert main([*argv, "--concurrency", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[second]["rise over the first bundle (95% CI)"] == pytest.approx(probe_rise(rows[second], rows[first]))
    assert len(rows[first][PROBE_COUNTS]) == 2 * 4  # 6 lines per persona: conversations of 4 and 2, four cards
    printed = capsys.readouterr().out
    assert f"{second} vs {first}: " in printed
    # the shipped cards' prompts overflow the tiny model: every line is a fallback, and says so
    assert rows[first][PROBE_FALLBACKS] == 24 and "24 lines were not the model's" in printed
    assert main([*argv, "--out", str(out)]) == 2  # never overwrites earlier results (a usage error)
    assert "already exists" in capsys.readouterr().err
    assert main(["persona-probe", "--bundle", first, "--bundle", first]) == 2
    assert "each bundle once" in capsys.readouterr().err
