"""``npcrl chat``: talk to an NPC in the terminal; every turn and reaction goes to the play log."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npcrl.cli.args import add_command, add_sampler_args, sampler_from_args
from npcrl.errors import NpcrlError

if TYPE_CHECKING:
    from npcrl.agent.npc_agent import Conversation
    from npcrl.agent.persona import Persona

CHAT_HELP = "/+ rates the last line up, /- down, /quest NAME accepts a quest, /bye walks away"


def resolve_persona(spec: str) -> Persona:
    """A built-in persona id (blacksmith, innkeeper, guard, miller) or a path to a persona TOML card."""
    from npcrl.agent.persona import builtin_personas, load_persona

    builtin = builtin_personas()
    if spec in builtin:
        return builtin[spec]
    if Path(spec).suffix == ".toml" or Path(spec).exists():
        return load_persona(spec)
    raise NpcrlError(f"persona {spec!r} is neither a built-in ({', '.join(sorted(builtin))}) nor a .toml file")


def cmd_chat(args: argparse.Namespace) -> int:
    from npcrl.agent.npc_agent import AgentConfig, NpcAgent
    from npcrl.playlog import PlayLogWriter
    from npcrl.runtime.model import OnnxCausalLM

    persona = resolve_persona(args.persona)
    model = OnnxCausalLM(args.bundle)
    writer = PlayLogWriter(args.logs) if args.logs else None
    config = AgentConfig(sampler=sampler_from_args(args, default_stops=True))
    agent = NpcAgent(model, persona, log_writer=writer, config=config)
    conversation = agent.start_conversation(args.player)
    print(f"[{persona.name}, {persona.role}; bundle {model.bundle_id}; {CHAT_HELP}]", file=sys.stderr)
    print(f"{persona.name}: {persona.greeting}")
    try:
        talk(conversation, persona.name)
    finally:
        if writer is not None:
            writer.close()
            print(f"[play log in {args.logs}]", file=sys.stderr)
    return 0


def talk(conversation: Conversation, npc_name: str) -> None:
    """Read the player's lines until they walk away or the input ends."""
    while not conversation.ended:
        try:
            text = input("you> ").strip()
        except EOFError:
            conversation.end("input_closed")
            return
        if text in ("/bye", "/quit"):
            conversation.walk_away()
            return
        if text and not react(conversation, text):
            reply(conversation, npc_name, text)


def react(conversation: Conversation, text: str) -> bool:
    """Apply a rating or quest command to the last NPC line (none yet: ignored); False for a plain line."""
    if text in ("/+", "/-"):
        if conversation.lines:
            conversation.rate(text == "/+")
            print("[rated]", file=sys.stderr)
        return True
    if text.startswith("/quest"):
        if conversation.lines:
            conversation.accept_quest(text[len("/quest") :].strip() or "quest")
            print("[quest accepted]", file=sys.stderr)
        return True
    return False


def reply(conversation: Conversation, npc_name: str, text: str) -> None:
    """Stream the NPC's answer as it is generated, then show the line the player is finally given."""
    pending = conversation.respond_async(text)
    print(f"{npc_name}: ", end="", flush=True)
    while not pending.done:
        piece = pending.poll()
        if piece:
            print(piece, end="", flush=True)
        time.sleep(0.02)
    print(pending.poll(), end="")
    line = pending.result()
    if line.text != pending.streamed_text.strip():
        # What the player is finally shown (trimmed to a sentence, or a fallback line).
        print(f"\r\033[K{npc_name}: {line.text}", end="")
    flag = " [filtered]" if line.filtered else " [fallback]" if line.fallback else ""
    print(f"{flag}")


def add_chat_parser(subparsers: Any) -> None:
    chat = add_command(
        subparsers,
        "chat",
        "talk to an NPC in the terminal (" + CHAT_HELP + ")",
        "npcrl chat --bundle bundles/smol-q8 --persona blacksmith --logs playlogs",
    )
    chat.add_argument("--bundle", required=True)
    chat.add_argument(
        "--persona", required=True, help="built-in id (blacksmith, innkeeper, guard, miller) or a .toml card"
    )
    chat.add_argument("--logs", help="play-log directory (default: no log)")
    chat.add_argument("--player", default="player", help="player id written to the log")
    add_sampler_args(chat)
    chat.set_defaults(func=cmd_chat, max_new_tokens=60)
