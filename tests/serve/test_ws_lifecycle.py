"""The server's life: loading then ready, many clients sharing few KV slots, cancelled lines, and
conversations that end (with their records written) when a client goes away."""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from serve_helpers import HANG_GUARD_S, client, log_records, running

from npcrl.playlog.records import ConversationEnd, ConversationStart, NpcTurn
from npcrl.serve.loading import ModelSource


@dataclass(frozen=True)
class GatedSource(ModelSource):
    """A model source whose first load waits until the test opens ``gate``."""

    gate: threading.Event = field(default_factory=threading.Event)

    def first_bundle(self) -> Path:
        assert self.gate.wait(HANG_GUARD_S), "the test never opened the gate"
        return super().first_bundle()


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=HANG_GUARD_S) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_health_says_loading_then_ready_and_open_waits_for_the_model(make_state, tiny_bundle: Path) -> None:
    source = GatedSource(bundle=tiny_bundle)
    with running(make_state(source)) as port, client(port) as talk:
        assert health(port) == {"status": "loading", "bundle_id": None, "protocol": 1, "conversations": 0}
        talk.send(type="hello", protocol=1)
        assert talk.receive()["ready"] is False
        talk.send(type="open", conversation="c1", npc="blacksmith")  # waits for the model
        source.gate.set()
        opened = talk.until("opened")[0]
        ready = health(port)
        assert ready["status"] == "ready" and ready["bundle_id"] == opened["bundle_id"]
        assert ready["conversations"] == 1


def test_eight_clients_on_two_kv_slots_all_get_their_lines(make_state, tmp_path: Path) -> None:
    clients, lines_each = 8, 2
    received: dict[int, list[dict]] = {}
    errors: list[BaseException] = []

    def play(number: int, port: int) -> None:
        try:
            with client(port) as talk:
                talk.open(f"npc-{number}")
                received[number] = [talk.say(f"npc-{number}", f"Hello number {i}")[0] for i in range(lines_each)]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with running(make_state(kv_slots=2)) as port:
        threads = [threading.Thread(target=play, args=(n, port)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG_GUARD_S * 2)
    assert not errors, errors
    lines = [line for got in received.values() for line in got]
    assert len(lines) == clients * lines_each
    assert not [line for line in lines if line["fallback"] or line["cancelled"]]
    turns = [r for r in log_records(tmp_path / "logs") if isinstance(r, NpcTurn)]
    assert len(turns) == clients * lines_each and not [t for t in turns if t.fallback]


def test_cancel_ends_the_running_line_with_its_line_message(make_state) -> None:
    with running(make_state()) as port, client(port) as talk:
        talk.open("c1")
        talk.send(type="say", conversation="c1", text="Tell me a long story")
        talk.send(type="cancel", conversation="c1")
        line, _ = talk.until("line")
        # the line may have finished before the cancel reached it; either way exactly one line comes
        assert line["cancelled"] == (line["fallback"] and line["cancelled"])
        talk.send(type="say", conversation="c1", text="Hello again")
        assert talk.until("line")[0]["cancelled"] is False


def test_a_client_leaving_mid_line_ends_its_conversations_and_their_records_are_written(
    make_state, tmp_path: Path
) -> None:
    state = make_state()
    with running(state) as port:
        with client(port) as talk:
            talk.open("c1")
            talk.open("c2")
            talk.send(type="say", conversation="c1", text="Can you fix my sword?")
        # the connection is closed; the line it asked for finishes (or is cancelled) and is logged
        deadline_loops = int(HANG_GUARD_S / 0.05)
        for _ in range(deadline_loops):
            if health(port)["conversations"] == 0:
                break
            threading.Event().wait(0.05)
        assert health(port)["conversations"] == 0
    records = log_records(tmp_path / "logs")  # leaving ``running`` closed the writer: all is on disk
    started = {r.conversation_id for r in records if isinstance(r, ConversationStart)}
    ended = {r.conversation_id: r.reason for r in records if isinstance(r, ConversationEnd)}
    assert len(started) == 2 and ended == dict.fromkeys(started, "disconnected")
    assert len([r for r in records if isinstance(r, NpcTurn)]) == 1
