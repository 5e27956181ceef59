"""Persona-card consistency: the checker, the agent's resampling on a tiny model, the evaluation row."""

from __future__ import annotations

import math
import time

import pytest

from npcrl.agent.consistency import card_contradictions
from npcrl.agent.npc_agent import AgentConfig, NpcAgent
from npcrl.agent.persona import builtin_personas
from npcrl.agent.player_text import PlayerTextStorage
from npcrl.evaluation import metric_names as names
from npcrl.evaluation.metrics import log_metrics
from npcrl.playlog import ConversationStart, NpcTurn, PlayLogWriter, read_log_dir
from npcrl.reward.spec import RewardSpec
from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.sampler import SamplerConfig
from npcrl.validate import ConfigValueError

PERSONAS = builtin_personas()
BROM, MARA, HEDDA, OSRIC = (PERSONAS[k] for k in ("blacksmith", "innkeeper", "guard", "miller"))


@pytest.mark.parametrize(
    ("persona", "text", "reasons"),
    [
        (BROM, "I am Grimbold, friend. Mind the sparks.", ["name:Grimbold"]),
        (BROM, "Name's Grimbold. What do you need?", ["name:Grimbold"]),
        (BROM, "Call me Grimbold.", ["name:Grimbold"]),
        (BROM, "Grimbold the smith, at your service.", ["name:Grimbold"]),
        (BROM, "I am Sir Grimbold the Bold.", ["name:Grimbold"]),
        (MARA, "Oh, I'm Hedda, love.", ["name:Hedda"]),  # another character of her own lore
        (BROM, "I'm the best baker in the village.", ["trade:baker"]),
        (BROM, "As a baker, I know my bread.", ["trade:baker"]),
        (BROM, "Welcome to my bakery, friend!", ["trade:baker"]),
        (OSRIC, "Welcome to my forge, neighbour.", ["trade:blacksmith"]),
        (HEDDA, "I am an innkeeper, citizen.", ["trade:innkeeper"]),
        (MARA, "Here in Riverdale we serve the best stew, dear.", ["place:Riverdale"]),
        (BROM, "Welcome to Riverdale, friend.", ["place:Riverdale"]),
        (MARA, "Our little village of Millbrook is quiet.", ["place:Millbrook"]),
        (BROM, "I am Grimbold, the baker. Welcome to my bakery in Riverdale. I live in Riverdale.",
         ["name:Grimbold", "trade:baker", "place:Riverdale"]),
    ],
)  # fmt: skip
def test_contradictions_of_the_card_are_found(persona, text, reasons):
    assert card_contradictions(text, persona) == reasons


@pytest.mark.parametrize(
    ("persona", "text"),
    [
        (BROM, "Hm. I'm Brom, friend. Welcome to Oakrest."),
        (BROM, "Brom, at your service."),
        (HEDDA, "I am Captain Hedda of the Oakrest watch."),
        (HEDDA, "I'm the captain here. Here in Oakrest the gates close at sundown."),
        (MARA, "Welcome to the Sleeping Fox, love! I'm the innkeeper, and I cook the stew myself."),
        (OSRIC, "My mill turns slow. I'm the miller, neighbour."),
        # other people and places of the lore, talked about
        (BROM, "Ask Mara at the Sleeping Fox. Captain Hedda says Garrick's bandits hold the north road."),
        (MARA, "Brom is the blacksmith, and Old Wenna burns charcoal in Ashwood."),
        (BROM, "His name is Garrick, and he is no friend of mine."),
        # not self-claims, or claims the rules leave out on purpose
        (BROM, "I'm the baker's best customer."),
        (BROM, "I am not a baker, friend."),
        (BROM, "I'm a friend of the baker."),
        (BROM, 'Tam told me, "I am Grimbold now."'),
        (BROM, "Don't call me Grimbold."),
        (BROM, "I'm Sorry, friend. Friend, at your service."),
        (BROM, "I'm Oakrest's finest smith."),
        (HEDDA, "I'm from Riverdale, but I was a soldier before."),
        (BROM, "Welcome to my forge. Welcome to the village."),
    ],
)
def test_lines_that_agree_with_the_card_are_not_flagged(persona, text):
    assert card_contradictions(text, persona) == []


# ---------------------------------------------------------------- the agent resamples


@pytest.fixture(scope="module")
def model(tiny_bundles) -> OnnxCausalLM:
    return OnnxCausalLM(tiny_bundles["llama-fp32"])


def scripted_agent(model, monkeypatch, tmp_path, lines, **config) -> tuple[NpcAgent, list]:
    """An agent whose post-processed lines are ``lines`` in turn (the last one repeats), and the
    list that fills with every generation the turn started."""
    script = list(lines)
    monkeypatch.setattr(
        "npcrl.agent.lines.postprocess_line", lambda text, **_: script.pop(0) if script[1:] else script[0]
    )
    generations = []
    real_generate = model.generate

    def recording_generate(*args, **kwargs):
        generations.append(real_generate(*args, **kwargs))
        return generations[-1]

    monkeypatch.setattr(model, "generate", recording_generate)
    sampler = SamplerConfig(temperature=1.0, seed=1, max_new_tokens=8)
    agent_config = AgentConfig(sampler=sampler, prompt_token_budget=220, **config)
    agent = NpcAgent(
        model, BROM, log_writer=PlayLogWriter(tmp_path), config=agent_config, system_prompt="You are Brom."
    )
    return agent, generations


def logged_turn(agent) -> NpcTurn:
    agent.log_writer.flush()
    return next(r for r in read_log_dir(agent.log_writer.directory) if isinstance(r, NpcTurn))


def test_a_contradicting_line_is_resampled_and_the_shown_sample_is_logged(model, monkeypatch, tmp_path):
    agent, generations = scripted_agent(model, monkeypatch, tmp_path, ["I am Grimbold.", "Aye, I'm Brom."])
    conversation = agent.start_conversation()
    pending = conversation.respond_async("Who are you?")
    line = pending.result(timeout=300)
    first, shown = (g.result for g in generations)
    assert line.text == "Aye, I'm Brom." and not line.fallback and not line.filtered
    assert line.filter_reason == "resampled:contradicts_card:name:Grimbold"
    assert line.generation is shown and shown.prompt_ids == first.prompt_ids
    assert pending.streamed_text == first.text.replace("<|im_end|>", "")  # only the first sample streamed
    turn = logged_turn(agent)
    assert turn.text == line.text and turn.filter_reason == line.filter_reason
    assert (turn.response_ids, turn.logprobs) == (shown.token_ids, pytest.approx(shown.logprobs))
    assert turn.full_logprobs == pytest.approx(shown.full_logprobs)
    assert turn.sampler["seed"] == 2  # the resample's own seed, logged with its sample
    assert conversation.exchanges[-1][1] == "Aye, I'm Brom."  # the NPC remembers what it said
    # the sample it replaced is logged beside it, ids, log-probs, seed and reason, for training
    (rejected,) = turn.rejected_samples
    assert rejected["response_ids"] == first.token_ids and rejected["logprobs"] == pytest.approx(first.logprobs)
    assert rejected["full_logprobs"] == pytest.approx(first.full_logprobs)
    assert rejected["sampler"]["seed"] == 1 and rejected["reason"] == "contradicts_card:name:Grimbold"


def test_when_every_sample_contradicts_the_player_gets_a_fallback(model, monkeypatch, tmp_path):
    agent, generations = scripted_agent(model, monkeypatch, tmp_path, ["I am Grimbold. I'm the baker."])
    line = agent.start_conversation().respond("Who are you?")
    assert len(generations) == 3  # the sample and consistency_retries=2 more
    assert line.fallback and line.text in BROM.fallback_lines
    assert line.filter_reason == "contradicts_card:name:Grimbold,trade:baker"
    turn = logged_turn(agent)
    assert turn.fallback and turn.filter_reason == line.filter_reason
    assert turn.response_ids == generations[-1].result.token_ids  # the sample the fallback replaced
    # every sample drawn is logged as rejected, the last (the turn's own ids) included
    assert [s["response_ids"] for s in turn.rejected_samples] == [g.result.token_ids for g in generations]
    assert [s["sampler"]["seed"] for s in turn.rejected_samples] == [1, 2, 3]


def test_a_line_that_agrees_logs_no_rejected_samples_and_a_private_one_is_left_out(model, monkeypatch, tmp_path):
    agent, _ = scripted_agent(model, monkeypatch, tmp_path / "a", ["Aye, I'm Brom."])
    agent.start_conversation().respond("Who are you?")
    assert logged_turn(agent).rejected_samples == []
    # a rejected sample that decodes to personal data is not logged, as a shown one would not be
    agent, _ = scripted_agent(model, monkeypatch, tmp_path / "b", ["I am Grimbold.", "Aye, I'm Brom."])
    monkeypatch.setattr(PlayerTextStorage, "withholds_response", lambda self, *texts: True)
    agent.start_conversation().respond("Who are you?")
    assert logged_turn(agent).rejected_samples == []


def test_no_retries_replaces_at_once_and_none_turns_the_check_off(model, monkeypatch, tmp_path):
    agent, generations = scripted_agent(model, monkeypatch, tmp_path / "a", ["I am Grimbold."], consistency_retries=0)
    assert agent.start_conversation().respond("Who?").fallback and len(generations) == 1
    agent, generations = scripted_agent(
        model, monkeypatch, tmp_path / "b", ["I am Grimbold."], consistency_retries=None
    )
    line = agent.start_conversation().respond("Who?")
    assert line.text == "I am Grimbold." and line.filter_reason is None and len(generations) == 1
    with pytest.raises(ConfigValueError, match="consistency_retries"):
        AgentConfig(consistency_retries=-1)


def test_a_spent_time_budget_allows_no_resample(model, monkeypatch, tmp_path):
    agent, generations = scripted_agent(model, monkeypatch, tmp_path, ["I am Grimbold."], time_budget_s=60.0)
    real_clock = time.perf_counter
    # once the first sample has finished the clock reads an hour later: nothing of the budget is left
    later = lambda: real_clock() + (3600.0 if generations and generations[0].result is not None else 0.0)  # noqa: E731
    monkeypatch.setattr("npcrl.agent.conversation.time.perf_counter", later)
    line = agent.start_conversation().respond("Who?")
    assert line.fallback and line.filter_reason.startswith("contradicts_card:") and len(generations) == 1


# ---------------------------------------------------------------- the evaluation row


def card_turn(conv: str, index: int, text: str, *, fallback: bool = False, reason: str | None = None) -> NpcTurn:
    return NpcTurn(
        conversation_id=conv, turn_index=index, npc_id="blacksmith", bundle_id="b1", player_text="hi",
        prompt_ids=[1, 2], response_ids=[3, 4], logprobs=[-0.5, -0.5], full_logprobs=[-0.6, -0.6], text=text,
        stop_reason="eos", sampler={}, latency_s=0.1, time_to_first_token_s=0.05, filtered=False,
        fallback=fallback, time=float(index), filter_reason=reason,
    )  # fmt: skip


def test_the_evaluation_row_counts_model_samples_that_contradicted_the_card(tmp_path):
    canned = BROM.fallback_lines[0]
    records = [
        ConversationStart("c1", "blacksmith", "p1", "Brom", BROM.persona_hash, "b1", {}, 0.0),
        card_turn("c1", 0, "I am Grimbold, friend."),  # shown, played without the check: counts
        card_turn("c1", 1, "Good steel takes time."),
        card_turn("c1", 2, canned, fallback=True, reason="contradicts_card:name:Grimbold"),  # counts
        card_turn("c1", 3, "Aye.", reason="resampled:contradicts_card:trade:baker"),  # counts
        card_turn("c1", 4, canned, fallback=True, reason="cancelled_or_time_budget"),  # a canned line
        # an unknown card: left out
        ConversationStart("c2", "grimbold", "p1", "Grimbold", "unknown", "b1", {}, 0.0),
        card_turn("c2", 0, "I am Brom."),
    ]
    with PlayLogWriter(tmp_path) as writer:
        for record in records:
            writer.append(record)
    spec = RewardSpec(rules={})
    row = log_metrics(tmp_path, spec).as_dict()[names.CARD_CONTRADICTIONS]
    assert row == pytest.approx(3 / 5)
    assert math.isnan(log_metrics(tmp_path, spec, personas=[MARA]).card_contradiction_rate)
