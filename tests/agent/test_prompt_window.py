"""The history window of an NPC's prompt: the persona always stays, the oldest exchanges go first,
and once the budget is reached they go several at a time, so a long conversation does not prefill
everything after the persona again on every turn."""

from __future__ import annotations

from npcrl.agent.npc_agent import AgentConfig, NpcAgent
from npcrl.agent.persona import builtin_personas
from npcrl.agent.prompt import fit_prompt
from npcrl.runtime.sampler import SamplerConfig

SYSTEM = "You are Brom."


def encode(messages: list[dict[str, str]]) -> list[int]:
    """One token per word and one per message: lengths that are easy to reason about."""
    return [0 for message in messages for _ in ["header", *message["content"].split()]]


EXCHANGES = [(f"question {i} one two", f"answer {i} one two three") for i in range(10)]
# system: 1 + 3 = 4; each exchange: 5 + 6 = 11; current: 1 + 2 = 3


def test_everything_is_kept_while_it_fits():
    fitted = fit_prompt(encode, SYSTEM, EXCHANGES[:3], "new line", budget=40, margin=20)
    assert fitted.first == 0 and len(fitted.ids) == 4 + 3 * 11 + 3
    assert [m["role"] for m in fitted.messages][:2] == ["system", "user"]


def test_without_a_margin_only_as_many_as_needed_are_dropped():
    fitted = fit_prompt(encode, SYSTEM, EXCHANGES, "new line", budget=40)
    assert fitted.first == 7 and len(fitted.ids) == 4 + 3 * 11 + 3  # 40: exactly the budget


def test_with_a_margin_the_oldest_are_dropped_until_it_is_free():
    fitted = fit_prompt(encode, SYSTEM, EXCHANGES, "new line", budget=40, margin=11)
    assert fitted.first == 8 and len(fitted.ids) == 4 + 2 * 11 + 3 == 40 - 11
    assert fitted.messages[1]["content"] == EXCHANGES[8][0]


def test_exchanges_dropped_earlier_stay_dropped_while_the_rest_fits():
    fitted = fit_prompt(encode, SYSTEM, EXCHANGES[:9], "new line", budget=40, first=8, margin=12)
    assert fitted.first == 8  # the newest exchange is appended; nothing is dropped
    again = fit_prompt(encode, SYSTEM, EXCHANGES, "new line", budget=40, first=8, margin=12)
    assert again.first == 8 and len(again.ids) == 4 + 2 * 11 + 3


def test_the_margin_never_drops_the_newest_exchange():
    fitted = fit_prompt(encode, SYSTEM, EXCHANGES, "new line", budget=40, margin=30)
    assert fitted.first == 9 and len(fitted.ids) == 4 + 11 + 3  # 18 > 40 - 30, yet the newest stays


def test_the_persona_stays_when_nothing_else_fits():
    fitted = fit_prompt(encode, SYSTEM, EXCHANGES, " ".join(["word"] * 50), budget=40, margin=12)
    assert fitted.first == len(EXCHANGES)
    assert [m["role"] for m in fitted.messages] == ["system", "user"]


def conversation_prompts(model, margin: int, turns: int = 14) -> list[list[int]]:
    config = AgentConfig(
        sampler=SamplerConfig(temperature=1.0, seed=3, max_new_tokens=8),
        prompt_token_budget=256,  # the tiny model's positions
        history_drop_margin=margin,
    )
    agent = NpcAgent(model, builtin_personas()["blacksmith"], config=config, system_prompt=SYSTEM)
    conversation = agent.start_conversation()
    prompts = []
    for i in range(turns):
        line = conversation.respond(f"Question number {i} about the forge?")
        assert not line.fallback
        prompts.append(line.generation.prompt_ids)
    return prompts


def restarts(prompts: list[list[int]]) -> int:
    """Turns whose prompt does not continue the previous turn's (an exchange was dropped)."""
    return sum(b[: len(a)] != a for a, b in zip(prompts[:-1], prompts[1:], strict=True))


def test_a_long_conversation_drops_history_in_steps(tiny_bundles):
    from npcrl.runtime.model import OnnxCausalLM

    model = OnnxCausalLM(tiny_bundles["llama-fp32"])
    one_at_a_time = conversation_prompts(model, margin=0)
    in_steps = conversation_prompts(model, margin=120)
    assert all(len(p) <= 256 - 8 for p in one_at_a_time + in_steps)
    # one exchange at a time: once full, every turn starts again after the persona
    assert restarts(one_at_a_time) >= 8, restarts(one_at_a_time)
    # with room made (about two exchanges here), the next turn continues the prompt (and its cache)
    assert restarts(in_steps) < restarts(one_at_a_time) - 2, (restarts(in_steps), restarts(one_at_a_time))
