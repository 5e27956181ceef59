"""``npcrl generate``: stream one NPC line from a bundle, with timing on stderr."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from npcrl.cli.args import add_command, add_sampler_args, sampler_from_args

if TYPE_CHECKING:
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.runtime.sampler import SamplerConfig

QUICKSTART_PERSONA = (
    "You are Brom, the blacksmith of the village of Oakrest. You are gruff but kind, proud of your "
    "craft, and you speak in short, plain sentences. Stay in character."
)


def speak(model: OnnxCausalLM, system: str, user: str, config: SamplerConfig) -> None:
    """Stream the reply to ``user`` to stdout; its token count, latency and stop reason go to stderr."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    generation = model.generate(model.tokenizer.encode_chat(messages), config)
    for chunk in generation:
        print(chunk.text, end="", flush=True)
    result = generation.result
    assert result is not None  # set when the iteration ends
    print(
        f"\n  [{len(result.token_ids)} tokens, first token {result.time_to_first_token_s * 1000:.0f} ms, "
        f"{result.decode_tokens_per_s:.0f} tok/s, stop: {result.stop_reason}]",
        file=sys.stderr,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from npcrl.runtime.model import OnnxCausalLM

    model = OnnxCausalLM(args.bundle)
    speak(model, args.system, args.prompt, sampler_from_args(args))
    return 0


def add_generate_parser(subparsers: Any) -> None:
    generate = add_command(
        subparsers,
        "generate",
        "stream one NPC line from a bundle",
        'npcrl generate --bundle bundles/smol-q8 --prompt "Can you fix my sword?" --seed 1',
    )
    generate.add_argument("--bundle", required=True)
    generate.add_argument("--system", default=QUICKSTART_PERSONA, help="system prompt (the persona)")
    generate.add_argument("--prompt", required=True, help="the player's line")
    add_sampler_args(generate)
    generate.set_defaults(func=cmd_generate)
