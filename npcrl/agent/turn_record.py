"""What a turn leaves in the play log: the ``NpcTurn`` record of a line, as the conversation's
``player_text_storage`` allows (docs/PRIVACY.md), with the samples the agent rejected for
contradicting the card (docs/PLAYLOG.md, ``rejected_samples``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from npcrl.agent.config import AgentConfig
from npcrl.agent.consistency import RESAMPLED
from npcrl.agent.pending import NpcLine
from npcrl.agent.player_text import RESPONSE_WITHHELD, PlayerTextStorage
from npcrl.playlog import NpcTurn
from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.sampler import SamplerConfig
from npcrl.runtime.tokenizer import BundleTokenizer


def turn_record(
    conversation_id: str,
    npc_id: str,
    model: OnnxCausalLM,
    config: AgentConfig,
    storage: PlayerTextStorage,
    line: NpcLine,
    raw_player_text: str,
    prompt: list[int],
    rejected: Sequence[NpcLine] = (),
) -> NpcTurn:
    """The record of ``line``; ``prompt`` is already the stored one (empty when withheld),
    ``rejected`` the lines of the samples that contradicted the card."""
    result, reason = line.generation, line.filter_reason
    # a resample ran with its own seed: the log names the sampler of the sample it holds
    sampler = result.sampler if result is not None and result.sampler else config.sampler.to_dict()
    sampled = model.tokenizer.decode(result.token_ids) if result is not None else ""
    if result is not None and storage.withholds_response(sampled, line.text):
        # the sample decodes to personal data: its ids cannot be logged, so neither can it be trained on
        shown = reason is None or reason.startswith(RESAMPLED)  # a line the player saw
        result, reason = None, RESPONSE_WITHHELD if shown else reason
    return NpcTurn(
        conversation_id=conversation_id,
        turn_index=line.turn_index,
        npc_id=npc_id,
        bundle_id=model.bundle_id,
        player_text=storage.player_text(raw_player_text, config.max_player_chars * 4),
        prompt_ids=list(prompt),
        response_ids=list(result.token_ids) if result else [],
        logprobs=list(result.logprobs) if result else [],
        full_logprobs=list(result.full_logprobs) if result else [],
        text=storage.npc_text(line.text),
        stop_reason=line.stop_reason,
        sampler=sampler,
        latency_s=line.latency_s,
        time_to_first_token_s=line.time_to_first_token_s,
        filtered=line.filtered,
        fallback=line.fallback,
        time=time.time(),
        filter_reason=reason,
        queue_s=line.queue_s,
        rejected_samples=rejected_samples(rejected, model.tokenizer, storage, config.sampler) if prompt else [],
    )


def rejected_samples(
    rejected: Sequence[NpcLine], tokenizer: BundleTokenizer, storage: PlayerTextStorage, sampler: SamplerConfig
) -> list[dict[str, Any]]:
    """``NpcTurn.rejected_samples`` of the lines whose samples contradicted the card; a sample that
    decodes to personal data is left out, as a shown one would be (``storage.withholds_response``).
    ``sampler``: the agent's, named for a sample that does not carry its own."""
    samples = []
    for line in rejected:
        result = line.generation
        if result is None or storage.withholds_response(tokenizer.decode(result.token_ids)):
            continue
        samples.append(
            {
                "response_ids": list(result.token_ids),
                "logprobs": list(result.logprobs),
                "full_logprobs": list(result.full_logprobs),
                "sampler": result.sampler or sampler.to_dict(),
                "reason": line.filter_reason or "",
            }
        )
    return samples
