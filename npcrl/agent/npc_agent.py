"""NPC agents: what a game drops in to let NPCs talk, and to record how players react.

One ``OnnxCausalLM`` is shared by every NPC; each NPC is an ``NpcAgent`` with a persona; each
talk between an NPC and a player is a ``Conversation`` (``npcrl.agent.conversation``). Every turn
and every engagement event goes to the play log when a ``PlayLogWriter`` is given.

The names this module has always offered stay importable from it (``import X as X``: re-exports).
"""

from __future__ import annotations

from npcrl.agent.config import BUILTIN_EVENTS as BUILTIN_EVENTS
from npcrl.agent.config import DEFAULT_STOPS as DEFAULT_STOPS
from npcrl.agent.config import MAX_CONVERSATION_ID as MAX_CONVERSATION_ID
from npcrl.agent.config import AgentConfig
from npcrl.agent.config import with_sampler as with_sampler
from npcrl.agent.conversation import Conversation
from npcrl.agent.pending import NpcLine as NpcLine
from npcrl.agent.pending import PendingLine as PendingLine
from npcrl.agent.persona import Persona
from npcrl.agent.prompt import prompt_stem
from npcrl.agent.readiness import Readiness
from npcrl.agent.safety import OutputFilter, delimit_player_text
from npcrl.agent.speaker import RecordSink
from npcrl.runtime.kvcache import KVCache
from npcrl.runtime.model import OnnxCausalLM


class NpcAgent:
    """One NPC: a persona speaking through a shared model."""

    def __init__(
        self,
        model: OnnxCausalLM,
        persona: Persona,
        *,
        log_writer: RecordSink | None = None,
        config: AgentConfig | None = None,
        npc_id: str | None = None,
        output_filter: OutputFilter | None = None,
        system_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.persona = persona
        self.log_writer = log_writer
        self.config = config or AgentConfig()
        self.npc_id = npc_id or persona.id
        self.output_filter = output_filter or OutputFilter(refuse_topics=persona.refuse_topics)
        self.system_prompt = system_prompt if system_prompt is not None else persona.system_prompt()
        self._system_ids: tuple[str, str, list[int]] | None = None  # (bundle id, system prompt, its ids)

    def prefix_cache(self, model: OnnxCausalLM) -> KVCache | None:
        """The KV cache every prompt of this NPC starts with on ``model``: the system turn and the
        header of the player's first line. Computed once per persona and bundle and kept in the
        model's LRU prefix store, so NPCs with the same persona share it. It is most of a first
        turn's prompt (about 600 of 640 tokens for the shipped cards)."""
        key = (model.bundle_id, self.system_prompt)
        memo = self._system_ids
        if memo is None or memo[:2] != key:
            memo = self._system_ids = (*key, self._prefix_ids(model))
        return model.prefix_cache(memo[2])

    def _prefix_ids(self, model: OnnxCausalLM) -> list[int]:
        """What every first-turn prompt starts with: the system turn and the user header."""
        system = {"role": "system", "content": self.system_prompt}
        stem = prompt_stem(
            lambda text: model.tokenizer.encode_chat([system, {"role": "user", "content": delimit_player_text(text)}])
        )
        return stem or model.tokenizer.encode_chat([system])[:1]

    def conversation(self, player_id: str = "player", conversation_id: str | None = None) -> Conversation:
        """A new conversation, best used as ``with agent.conversation() as talk:`` so that it ends
        however the block is left. ``conversation_id`` (default: a random uuid) names it in the
        log and must be unique there: records are grouped by it."""
        return Conversation(self, player_id, conversation_id)

    def start_conversation(self, player_id: str = "player", conversation_id: str | None = None) -> Conversation:
        """The same as ``conversation``."""
        return self.conversation(player_id, conversation_id)

    def warm_up(self) -> Readiness:
        """Prepare this NPC's first turn in a background thread: compute the persona prefix (seconds
        on a small CPU) and run one decode step from it, rather than in the first turn. Returns at
        once; poll ``.done`` from a loading screen, ``.wait(timeout)``, or ``await`` it. A
        failure is reported by ``.result()`` (the first turn then simply does the work itself).
        Call it again after ``swap_model``."""
        return Readiness(lambda: self._warm(self.model), f"npcrl-{self.npc_id}-warm-up")

    def _warm(self, model: OnnxCausalLM) -> None:
        if not self.config.reuse_persona_prefix:
            return  # turns do not start from the prefix: there is nothing to prepare
        prefix = self.prefix_cache(model)
        if prefix is not None and len(prefix):
            ids = list(prefix.token_ids)
            # one decode-shaped pass from the prefix (a copy of it): the first turn's path, warmed up
            model.extend([*ids, ids[-1]], None, prefix).release()

    def swap_model(self, model: OnnxCausalLM) -> None:
        """Use another bundle from the next conversation on (hot swap between conversations)."""
        self.model = model
