"""PendingLine tells listeners about new text and the end of the line, from the worker's thread."""

from __future__ import annotations

import logging
import threading

from npcrl.agent.pending import NpcLine, PendingLine


def finished_line(text: str = "Aye.") -> NpcLine:
    return NpcLine(0, text, False, False, None, 0.1, 0.05, "eos")


def test_listener_hears_every_piece_and_the_end_once():
    pending, heard = PendingLine(), []
    pending.on_change(lambda: heard.append((pending.poll(), pending.done)))
    pending.push_text("Ay")
    pending.push_text("e.")
    pending.finish(finished_line())
    assert heard == [("Ay", False), ("e.", False), ("", True)]
    pending.push_text("late")  # nothing should push after finish; if it does, listeners are gone
    assert len(heard) == 3


def test_listener_on_a_finished_line_is_called_at_once():
    pending, calls = PendingLine(), []
    pending.finish(finished_line())
    pending.on_change(lambda: calls.append(pending.done))
    assert calls == [True]


def test_removed_listener_is_not_called():
    pending, calls = PendingLine(), []
    remove = pending.on_change(lambda: calls.append(1))
    remove()
    remove()  # twice is harmless
    pending.push_text("x")
    pending.finish(finished_line())
    assert calls == []


def test_failing_listener_is_logged_and_the_others_still_hear(caplog):
    pending, calls = PendingLine(), []

    def broken() -> None:
        raise RuntimeError("listener bug")

    pending.on_change(broken)
    pending.on_change(lambda: calls.append(pending.poll()))
    with caplog.at_level(logging.ERROR, logger="npcrl.agent.pending"):
        pending.push_text("hi")
        pending.finish(finished_line())
    assert calls == ["hi", ""]
    assert pending.result(0).text == "Aye."
    assert "listener failed" in caplog.text


def test_listener_registered_while_the_worker_finishes_is_never_missed():
    """Register races finish: the listener is either called by finish or at once, never neither."""
    for _ in range(200):
        pending, called = PendingLine(), threading.Event()
        worker = threading.Thread(target=pending.finish, args=(finished_line(),))
        worker.start()
        pending.on_change(called.set)
        worker.join()
        assert called.is_set()
