"""An earlier evaluation's play logs as the side a new bundle is compared with.

Evaluation plays conversation k with the same player, persona and seeds for every bundle, so a
base evaluated once can be paired with any number of candidates (``npcrl curve`` does this for its
sizes; ``npcrl eval --against-logs`` lets a user do it). The pairing is only sound when the logs
are one evaluation of exactly the conversations the new one plays: ``check_evaluation_logs``
refuses anything else, naming the directory and what differs. Player profiles leave no trace in the
logs that could be checked; the caller passes the same ``--players``/``--population``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from npcrl.agent.persona import Persona
from npcrl.errors import NpcrlError
from npcrl.playlog import ConversationStart, read_log_dir

_SIMULATED_ID = re.compile(r"^sim-(?P<bundle>[0-9a-f]+)-s(?P<seed>\d+)-(?P<index>\d+)$")


def check_evaluation_logs(
    log_dir: Path, seed: int, conversations: int, personas: Sequence[Persona], max_new_tokens: int
) -> str:
    """Refuse ``log_dir`` unless it holds one simulated evaluation of conversations 0..n-1 under
    ``seed``, persona k mod len(personas) in conversation k, lines capped at ``max_new_tokens``;
    returns the bundle id (its first 16 hex digits) the logs were played with."""
    starts = [r for r in read_log_dir(log_dir) if isinstance(r, ConversationStart)]
    if not starts:
        raise NpcrlError(f"{log_dir}: no conversations to compare with")
    bundles, indices = set(), []
    for start in starts:
        found = _SIMULATED_ID.match(start.conversation_id)
        if found is None:
            raise NpcrlError(f"{log_dir}: {start.conversation_id!r} is not a simulated conversation")
        if int(found["seed"]) != seed:
            raise NpcrlError(f"{log_dir}: played with seed {found['seed']}, this evaluation uses --seed {seed}")
        bundles.add(found["bundle"])
        index = int(found["index"])
        indices.append(index)
        expected = personas[index % len(personas)]
        if start.persona_hash != expected.persona_hash:
            raise NpcrlError(
                f"{log_dir}: conversation {index} played another persona card than {expected.name!r}"
                " (evaluate with the same --personas)"
            )
        if start.sampler.get("max_new_tokens") != max_new_tokens:
            raise NpcrlError(
                f"{log_dir}: lines capped at {start.sampler.get('max_new_tokens')} tokens,"
                f" this evaluation caps them at {max_new_tokens} (--max-new-tokens)"
            )
    if len(bundles) != 1:
        raise NpcrlError(f"{log_dir}: holds the evaluations of {len(bundles)} bundles; give one bundle's logs")
    if sorted(indices) != list(range(conversations)):
        raise NpcrlError(
            f"{log_dir}: holds {len(indices)} conversation(s), not conversations 0..{conversations - 1}"
            " (evaluate with the same --conversations)"
        )
    return bundles.pop()
