"""Bad client messages get an error naming what is wrong, and the connection (and the server)
carry on: malformed JSON, oversized frames and texts, unknown types, floods, and messages that
do not fit the conversation's state."""

from __future__ import annotations

import json

from serve_helpers import client, running

from npcrl.serve.protocol import MAX_CONVERSATIONS, MAX_FRAME_BYTES, MAX_TEXT_CHARS
from npcrl.serve.security import RateLimiter


def assert_still_works(talk) -> None:
    talk.send(type="hello", protocol=1)
    assert talk.receive()["type"] == "welcome"


def test_malformed_oversized_and_unknown_messages_get_errors_on_a_connection_that_goes_on(make_state) -> None:
    bad = [
        ("{not json", "bad_json", None),
        ("[1, 2]", "bad_message", None),
        ("[" * 50_000, "bad_json", None),
        (json.dumps({"type": "dance", "id": "d1"}), "bad_message", "d1"),
        (json.dumps({"type": "say", "id": 3}), "bad_message", 3),
        (json.dumps({"type": "hello", "id": [1]}), "bad_message", None),
        (json.dumps({"type": "hello", "pad": "x" * MAX_FRAME_BYTES}), "too_large", None),
        (b"\x00binary", "bad_message", None),
    ]
    with running(make_state()) as port, client(port) as talk:
        for frame, code, message_id in bad:
            talk.send_raw(frame)
            error = talk.receive()
            assert error["type"] == "error" and error["code"] == code, (frame[:40], error)
            assert error.get("id") == message_id and error["message"]
            assert_still_works(talk)


def test_messages_that_do_not_fit_the_conversation_get_errors(make_state) -> None:
    with running(make_state()) as port, client(port) as talk:
        talk.send(type="say", conversation="nope", text="hi")
        assert talk.receive()["code"] == "unknown_conversation"
        talk.send(type="open", conversation="bad id!", npc="blacksmith")
        assert "'conversation'" in talk.receive()["message"]
        talk.send(type="open", conversation="c1", npc="dragon")
        assert talk.receive()["code"] == "unknown_npc"
        talk.send(type="open", conversation="c1", npc="../../etc/passwd")
        assert talk.receive()["code"] == "unknown_npc"
        talk.send(type="open", conversation="c1", persona={"name": "Tilda", "file": "/etc/passwd"})
        assert talk.receive()["code"] == "bad_message"
        talk.open("c1")
        talk.send(type="open", conversation="c1", npc="blacksmith")
        assert talk.receive()["code"] == "conversation_exists"
        talk.send(type="event", conversation="c1", kind="rating", value=1)
        assert "no NPC line yet" in talk.receive()["message"]
        talk.send(type="say", conversation="c1", text="x" * (MAX_TEXT_CHARS + 1))
        assert talk.receive()["code"] == "too_large"
        talk.send(type="say", conversation="c1", text="Hello")
        talk.send(type="say", conversation="c1", text="Hello again")
        busy, _ = talk.until("error")
        assert busy["code"] == "busy"
        talk.until("line")
        talk.send(type="event", conversation="c1", kind="Bad-Kind", value=1)
        assert "'kind'" in talk.receive()["message"]
        talk.send(type="event", conversation="c1", kind="rating", value="good")
        assert "'value'" in talk.receive()["message"]
        talk.send(type="event", conversation="c1", kind="rating", value=1, turn="someone-else:0")
        assert "'turn'" in talk.receive()["message"]


def test_a_connection_holds_at_most_its_share_of_conversations(make_state) -> None:
    with running(make_state()) as port, client(port) as talk:
        for index in range(1, MAX_CONVERSATIONS + 1):
            talk.open(f"c{index}")
        talk.send(type="open", conversation="one-too-many", npc="blacksmith")
        assert talk.receive()["code"] == "too_many_conversations"
        talk.send(type="end", conversation="c1")
        assert talk.receive()["type"] == "ended"
        assert talk.open("c1")["type"] == "opened"  # the freed place can be used again


def test_a_flood_is_rate_limited_and_the_connection_survives(make_state) -> None:
    flood = 400  # at 20 messages a second, answering these without a refusal would take 19 s
    with running(make_state()) as port, client(port) as talk:
        for index in range(flood):
            talk.send(type="hello", id=index)
        codes = [talk.receive().get("code") for _ in range(flood)]
        assert "rate_limited" in codes and codes.count(None) >= 20
        talk.ws.send(json.dumps({"type": "hello"}))
        reply = talk.receive()  # the bucket refills: a refusal here would only be another error reply
        assert reply["type"] in ("welcome", "error")


def test_the_rate_limiter_allows_bursts_and_the_steady_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=20.0, burst=20.0, clock=lambda: now[0])
    assert all(limiter.allow() for _ in range(20))
    assert not limiter.allow()
    now[0] += 0.5
    assert sum(limiter.allow() for _ in range(20)) == 10
    now[0] += 100.0
    assert sum(limiter.allow() for _ in range(40)) == 20
