"""A WebSocket conversation end to end: open, say (deltas, then the line), an event, end; and
what the play log holds afterwards."""

from __future__ import annotations

from pathlib import Path

from serve_helpers import client, log_records, running

from npcrl.playlog.records import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn


def test_a_conversation_streams_its_line_and_logs_turn_and_event(make_state, tmp_path: Path) -> None:
    state = make_state()
    with running(state) as port, client(port) as talk:
        talk.send(type="hello", protocol=1, id="h1")
        welcome = talk.receive()
        assert welcome["type"] == "welcome" and welcome["protocol"] == 1 and welcome["id"] == "h1"
        assert welcome["server"].startswith("npcrl")

        opened = talk.open("c1")
        assert opened["npc"] == "blacksmith" and opened["greeting"] and opened["bundle_id"] == state.bundle_id

        line, before = talk.say("c1", "Can you fix my sword?")
        assert all(m["type"] == "delta" and m["turn"] == line["turn"] for m in before)
        assert line["conversation"] == "c1" and line["text"]
        assert line["fallback"] is False and line["cancelled"] is False
        assert {"filtered", "queue_s", "ttft_s"} <= set(line)

        talk.send(type="event", conversation="c1", kind="rating", value=1, id=7)
        recorded = talk.receive()
        assert recorded == {"type": "recorded", "conversation": "c1", "kind": "rating", "turn": line["turn"], "id": 7}

        talk.send(type="end", conversation="c1")
        assert talk.receive() == {"type": "ended", "conversation": "c1"}

    records = log_records(tmp_path / "logs")
    turns = [r for r in records if isinstance(r, NpcTurn)]
    assert len(turns) == 1 and line["turn"] == f"{turns[0].conversation_id}:{turns[0].turn_index}"
    assert turns[0].text == line["text"]
    ratings = [r for r in records if isinstance(r, EngagementEvent) and r.kind == "rating"]
    assert [(r.conversation_id, r.turn_index, r.value) for r in ratings] == [(turns[0].conversation_id, 0, 1.0)]
    assert [r.npc_id for r in records if isinstance(r, ConversationStart)] == ["blacksmith"]
    assert [r.reason for r in records if isinstance(r, ConversationEnd)] == ["ended"]


def test_events_of_every_builtin_kind_and_a_custom_one_are_logged(make_state, tmp_path: Path) -> None:
    with running(make_state()) as port, client(port) as talk:
        talk.open("c1")
        first, _ = talk.say("c1", "Hello there")
        talk.say("c1", "Any work for me?")
        events = [
            {"kind": "quest_accepted", "quest": "wolves", "turn": first["turn"]},
            {"kind": "trade", "value": 12, "item": "sword"},
            {"kind": "gift_given", "value": 2.5},
            {"kind": "walked_away"},
        ]
        for event in events:
            talk.send(type="event", conversation="c1", **event)
            assert talk.receive()["type"] == "recorded"
        talk.send(type="say", conversation="c1", text="still there?")
        assert talk.receive()["code"] == "unknown_conversation"  # walking away ended it

    logged = [r for r in log_records(tmp_path / "logs") if isinstance(r, EngagementEvent) and r.kind != "reply"]
    assert [(r.kind, r.turn_index, r.value, r.data) for r in logged] == [
        ("quest_accepted", 0, 1.0, {"quest": "wolves"}),
        ("trade", 1, 12.0, {"item": "sword"}),
        ("gift_given", 1, 2.5, {}),
        ("walk_away", 1, 1.0, {}),
    ]


def test_an_inline_persona_speaks_under_its_own_id(make_state, tmp_path: Path) -> None:
    card = {
        "name": "Tilda",
        "role": "a ferry keeper",
        "traits": ["patient"],
        "speaking_style": "Slow and kind.",
        "lore": ["The river floods in spring."],
        "greeting": "Need a crossing?",
        "fallback_lines": ["Hm."],
    }
    with running(make_state()) as port, client(port) as talk:
        talk.send(type="open", conversation="f", persona=card)
        opened = talk.receive()
        assert opened["npc"] == "inline-tilda" and opened["greeting"] == "Need a crossing?"
        assert talk.say("f", "Hello")[0]["text"]
    starts = [r for r in log_records(tmp_path / "logs") if isinstance(r, ConversationStart)]
    assert [(r.npc_id, r.persona_name) for r in starts] == [("inline-tilda", "Tilda")]


def test_a_conversation_id_reopened_after_its_end_is_logged_as_a_new_conversation(make_state, tmp_path: Path) -> None:
    """Clients may reuse an id once its conversation ended; the log must keep both conversations
    (a reused log id would make the second one's records look like copies of the first's)."""
    with running(make_state()) as port, client(port) as talk:
        lines = []
        for text in ("Hello there", "Back again"):
            talk.open("c1")
            lines.append(talk.say("c1", text)[0])
            talk.send(type="end", conversation="c1")
            assert talk.receive()["type"] == "ended"

    turns = [r for r in log_records(tmp_path / "logs") if isinstance(r, NpcTurn)]
    assert len(turns) == 2 and len({t.conversation_id for t in turns}) == 2
    assert [t.text for t in turns] == [line["text"] for line in lines]
