"""``npcrl eval``: the same simulated players and seeds against one or more bundles.

Each bundle plays ``conversations`` simulated conversations (``npcrl.sim``) into its own play-log
directory; the logs are scored like real play (``metrics.log_metrics``), the NPC lines are
teacher-forced through the reference bundle for the KL per line, and held-out persona text gives
perplexity. Because players, personas and seeds are the same for every bundle, differences come
from the bundles (and sampling noise, which the confidence interval shows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from npcrl.agent.persona import Persona
from npcrl.evaluation.metric_names import KL_PER_LINE, PERPLEXITY
from npcrl.evaluation.metrics import log_metrics
from npcrl.evaluation.model_metrics import heldout_persona_texts, line_kl, perplexity
from npcrl.playlog import NpcTurn, PlayLogWriter, read_log_dir
from npcrl.reward.spec import RewardSpec
from npcrl.runtime.model import OnnxCausalLM

Value = float | tuple[float, float, float]


@dataclass(frozen=True)
class EvalSettings:
    conversations: int = 24
    """simulated conversations per bundle"""
    seed: int = 0
    """seeds the players, the NPC samplers and the bootstrap"""
    kl_turns: int = 48
    """NPC turns teacher-forced through the reference for the KL per line"""
    max_new_tokens: int | None = None
    """cap on each NPC line (None: the agent's default)"""
    concurrency: int = 1
    """simulated conversations played at once (faster; the metrics do not depend on it)"""


def evaluate_bundle(
    model: OnnxCausalLM,
    log_dir: Path,
    personas: Sequence[Persona],
    profiles: Sequence[object],
    spec: RewardSpec,
    settings: EvalSettings,
    reference: OnnxCausalLM | None = None,
    system_prompts: dict[str, str] | None = None,
    resume_from: Path | None = None,
) -> dict[str, Value]:
    """Simulate with ``model``, then measure; returns report rows (metric -> value) for its bundle.
    ``resume_from``: a cut-off attempt's logs, whose finished conversations are kept, not played again.

    Callers pass loaded models so one bundle used as candidate, reference and simulator is
    loaded (and its files hashed) once."""
    from npcrl.agent.config import capped_config
    from npcrl.sim.resume import keep_finished
    from npcrl.sim.simulate import simulate

    config = capped_config(settings.max_new_tokens)
    with PlayLogWriter(log_dir) as writer:
        first = 0
        if resume_from is not None:
            first = keep_finished(resume_from, writer, model.bundle_id, settings.seed, settings.conversations)
        simulate(
            model,
            personas,
            profiles,  # type: ignore[arg-type]
            writer,
            settings.conversations,
            settings.seed,
            agent_config=config,
            system_prompts=system_prompts,
            concurrency=settings.concurrency,
            first=first,
        )
    rows: dict[str, Value] = dict(log_metrics(log_dir, spec, settings.seed, personas=personas).as_dict())
    turns = [r for r in read_log_dir(log_dir) if isinstance(r, NpcTurn) and not (r.filtered or r.fallback)]
    if reference is None:
        kl = 0.0
    elif not turns:  # every turn a fallback: no model line to compare
        kl = float("nan")
    else:
        kl = line_kl(model, reference, turns, max_turns=settings.kl_turns)
    rows[KL_PER_LINE] = kl
    rows[PERPLEXITY] = perplexity(model, heldout_persona_texts())
    return rows
