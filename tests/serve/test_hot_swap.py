"""With a bundle store, a promotion reaches new conversations while open ones keep their model."""

from __future__ import annotations

import time
from pathlib import Path

from serve_helpers import HANG_GUARD_S, client, log_records, running

from npcrl.loop.promotion import promote
from npcrl.playlog.records import ConversationStart, NpcTurn
from npcrl.serve.loading import ModelSource


def test_a_promotion_moves_new_conversations_and_open_ones_keep_their_model(
    make_state, tiny_bundles: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = promote(store, tiny_bundles["llama-fp32"])
    state = make_state(ModelSource(store=store, poll_s=0.05))
    with running(state) as port, client(port) as talk:
        assert talk.open("old")["bundle_id"] == first.bundle_id
        second = promote(store, tiny_bundles["llama-q8"])
        deadline = time.monotonic() + HANG_GUARD_S
        while state.bundle_id != second.bundle_id:
            assert time.monotonic() < deadline, "the promotion never reached the server"
            time.sleep(0.05)
        assert talk.open("new")["bundle_id"] == second.bundle_id
        talk.say("old", "Hello")
        talk.say("new", "Hello")
    records = log_records(tmp_path / "logs")
    starts = {r.conversation_id: r.bundle_id for r in records if isinstance(r, ConversationStart)}
    turns = {r.conversation_id: r.bundle_id for r in records if isinstance(r, NpcTurn)}
    assert turns == starts and sorted(starts.values()) == sorted([first.bundle_id, second.bundle_id])
