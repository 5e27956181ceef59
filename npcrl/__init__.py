"""npcrl: game NPCs that speak with an ONNX language model and learn from play logs.

Everything a game needs is importable from here (``from npcrl import NpcAgent``); see README.md,
"Add a talking NPC to your game". ``import npcrl`` itself is cheap: each name loads its module
(onnxruntime included) on first use, and nothing here ever loads torch, the trainer or the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import npcrl._moved as _moved
from npcrl.errors import (
    BundleError,
    GenerationError,
    LogFormatError,
    LoopError,
    ModelSourceError,
    NpcrlError,
    PersonaError,
    RewardSpecError,
    TrainConfigError,
    TrainDataError,
    TrainError,
)

__version__ = "0.1.0"

_moved.install()

# public name -> the module that defines it, imported on first use
_LAZY: dict[str, str] = {
    "Bundle": "npcrl.runtime.bundle",
    "load_bundle": "npcrl.runtime.bundle",
    "migrate_if_old": "npcrl.runtime.bundle_migrate",
    "OnnxCausalLM": "npcrl.runtime.model",
    "SessionOptions": "npcrl.runtime.session",
    "default_thread_count": "npcrl.runtime.session",
    "SamplerConfig": "npcrl.runtime.sampler",
    "NpcAgent": "npcrl.agent.npc_agent",
    "AgentConfig": "npcrl.agent.config",
    "Conversation": "npcrl.agent.conversation",
    "NpcLine": "npcrl.agent.pending",
    "PendingLine": "npcrl.agent.pending",
    "Readiness": "npcrl.agent.readiness",
    "Persona": "npcrl.agent.persona",
    "builtin_personas": "npcrl.agent.persona",
    "load_persona": "npcrl.agent.persona",
    "load_personas": "npcrl.agent.persona",
    "PlayLogWriter": "npcrl.playlog.writer",
    "read_log_dir": "npcrl.playlog.reader",
    "Record": "npcrl.playlog.records",
    "RewardSpec": "npcrl.reward.spec",
    "default_reward_spec": "npcrl.reward.spec",
    "load_reward_spec": "npcrl.reward.spec",
    "reward_summary": "npcrl.reward.engagement",
    "turn_rewards": "npcrl.reward.engagement",
    "current_bundle": "npcrl.loop.promotion",
    "default_bundle_dir": "npcrl.paths",
    "user_cache_dir": "npcrl.paths",
}

if TYPE_CHECKING:
    from npcrl.agent.config import AgentConfig
    from npcrl.agent.conversation import Conversation
    from npcrl.agent.npc_agent import NpcAgent
    from npcrl.agent.pending import NpcLine, PendingLine
    from npcrl.agent.persona import Persona, builtin_personas, load_persona, load_personas
    from npcrl.agent.readiness import Readiness
    from npcrl.loop.promotion import current_bundle
    from npcrl.paths import default_bundle_dir, user_cache_dir
    from npcrl.playlog.reader import read_log_dir
    from npcrl.playlog.records import Record
    from npcrl.playlog.writer import PlayLogWriter
    from npcrl.reward.engagement import reward_summary, turn_rewards
    from npcrl.reward.spec import RewardSpec, default_reward_spec, load_reward_spec
    from npcrl.runtime.bundle import Bundle, load_bundle
    from npcrl.runtime.bundle_migrate import migrate_if_old
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.runtime.sampler import SamplerConfig
    from npcrl.runtime.session import SessionOptions, default_thread_count

__all__ = [
    "AgentConfig",
    "Bundle",
    "BundleError",
    "Conversation",
    "GenerationError",
    "LogFormatError",
    "LoopError",
    "ModelSourceError",
    "NpcAgent",
    "NpcLine",
    "NpcrlError",
    "OnnxCausalLM",
    "PendingLine",
    "Persona",
    "PersonaError",
    "PlayLogWriter",
    "Readiness",
    "Record",
    "RewardSpec",
    "RewardSpecError",
    "SamplerConfig",
    "SessionOptions",
    "TrainConfigError",
    "TrainDataError",
    "TrainError",
    "builtin_personas",
    "current_bundle",
    "default_bundle_dir",
    "default_reward_spec",
    "default_thread_count",
    "load_bundle",
    "load_persona",
    "load_personas",
    "load_reward_spec",
    "migrate_if_old",
    "read_log_dir",
    "reward_summary",
    "turn_rewards",
    "user_cache_dir",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npcrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
