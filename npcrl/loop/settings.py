"""What an ``npcrl loop`` run was asked for: fixed for the run and, but for ``rounds``, for every
resume of it (``loop.json`` records them, ``npcrl.loop.state.check_loop_out`` compares them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npcrl.errors import LoopError
from npcrl.loop.decision import Guards, check_promote_when
from npcrl.loop.state import fingerprint

if TYPE_CHECKING:
    from npcrl.agent.npc_agent import AgentConfig
    from npcrl.evaluation.run import EvalSettings

EVAL_SEED_OFFSET = 10_000
"""the evaluation players' seed is ``seed`` + this, the same in every round, so rounds are comparable"""
CONFIRM_SEED_OFFSET = 20_000
"""round N's fresh players play with seed ``seed`` + this + N - 1: players no round has seen"""
PROBE_SEED_OFFSET = 30_000
"""the persona probe's seed is ``seed`` + this, the same for every bundle and round"""
CONFIRM_RULES = ("both", "pooled")
"""how fresh players join the decision: ``both``, a candidate the evaluation players would promote
must win on the fresh players too; ``pooled``, a guarded candidate with the higher mean on the
evaluation players is judged once on the pairs of both sets together (``promote_when`` and guards)"""


@dataclass(frozen=True)
class LoopSettings:
    """The arguments of ``run_loop`` but the output directory and ``resume`` (see its docstring)."""

    base: Path
    rounds: int
    conversations: int
    eval_conversations: int
    train_config: Any
    seed: int
    players: Sequence[Any]
    personas: Sequence[Any]
    guards: Guards = Guards()
    max_new_tokens: int | None = None
    system_prompts: dict[str, str] | None = None
    concurrency: int = 1
    promote_when: str = "better"
    confirm_conversations: int = 0
    confirm_rule: str = "both"

    def check(self) -> None:
        """Refuse settings that would fail only after hours of simulation and training."""
        check_promote_when(self.promote_when)
        if self.confirm_conversations < 0:
            raise LoopError(
                f"confirm_conversations must be 0 (no confirmation) or more, got {self.confirm_conversations}"
            )
        if self.guards.persona_probe_lines < 0:
            raise LoopError(
                f"guards.persona_probe_lines must be 0 (no probe) or more, got {self.guards.persona_probe_lines}"
            )
        if self.confirm_rule not in CONFIRM_RULES:
            raise LoopError(f"confirm_rule must be one of {', '.join(CONFIRM_RULES)}, got {self.confirm_rule!r}")

    def record(self) -> dict[str, Any]:
        """The settings as ``loop.json`` holds them (players and personas by fingerprint)."""
        return {
            "base": str(self.base.resolve()),
            "conversations": self.conversations,
            "eval_conversations": self.eval_conversations,
            "seed": self.seed,
            "players": fingerprint(self.players),
            "personas": fingerprint(self.personas),
            "system_prompts": self.system_prompts,
            "max_new_tokens": self.max_new_tokens,
            "train_config": self.train_config.to_dict(),
            "guards": asdict(self.guards),
            "promote_when": self.promote_when,
            "confirm_conversations": self.confirm_conversations,
            "confirm_rule": self.confirm_rule,
            "rounds": self.rounds,
        }

    def agent_config(self) -> AgentConfig:
        """The NPC agents' settings for simulated play (``max_new_tokens`` caps each line)."""
        from npcrl.agent.config import capped_config

        return capped_config(self.max_new_tokens)

    def eval_settings(self) -> EvalSettings:
        """The evaluation players, the same in every round."""
        from npcrl.evaluation.run import EvalSettings

        return EvalSettings(
            conversations=self.eval_conversations,
            seed=self.seed + EVAL_SEED_OFFSET,
            max_new_tokens=self.max_new_tokens,
            concurrency=self.concurrency,
        )

    def confirm_settings(self, number: int) -> EvalSettings:
        """Round ``number``'s fresh players, who confirm a win on the evaluation players."""
        return replace(
            self.eval_settings(),
            conversations=self.confirm_conversations,
            seed=self.seed + CONFIRM_SEED_OFFSET + number - 1,
        )
