"""The event loop is woken by a line's worker thread; nothing is lost between wake-ups."""

from __future__ import annotations

import asyncio
import threading

from npcrl.agent.pending import NpcLine, PendingLine
from npcrl.serve.wakeup import ThreadSignal, line_text

HANG_GUARD_S = 30.0


def finished_line() -> NpcLine:
    return NpcLine(0, "Well met.", False, False, None, 0.1, 0.05, "eos")


def test_text_pushed_from_a_worker_thread_arrives_whole_and_in_order():
    pieces = [f"piece {i} " for i in range(300)]

    async def consume() -> str:
        pending = PendingLine()

        def worker() -> None:
            for piece in pieces:
                pending.push_text(piece)
            pending.finish(finished_line())

        received = []
        thread = threading.Thread(target=worker)
        stream = line_text(pending)
        thread.start()
        async for text in stream:
            received.append(text)
        thread.join()
        return "".join(received)

    assert asyncio.run(asyncio.wait_for(consume(), HANG_GUARD_S)) == "".join(pieces)


def test_a_waiting_stream_is_woken_by_a_push_not_by_a_timer():
    """The consumer waits with no timeout: only the worker's push can wake it."""

    async def consume() -> list[str]:
        pending, received = PendingLine(), []
        waiting = asyncio.Event()

        async def reader() -> None:
            async for text in line_text(pending):
                received.append(text)
                waiting.set()

        task = asyncio.create_task(reader())
        await asyncio.sleep(0)  # the reader now waits on its signal
        threading.Thread(target=pending.push_text, args=("first",)).start()
        await waiting.wait()
        threading.Thread(target=pending.finish, args=(finished_line(),)).start()
        await task
        return received

    assert asyncio.run(asyncio.wait_for(consume(), HANG_GUARD_S)) == ["first"]


def test_idle_stream_yields_empty_text_for_keepalives_and_unregisters_at_the_end():
    async def consume() -> tuple[list[str], int]:
        pending = PendingLine()
        received = []
        async for text in line_text(pending, idle_s=0.001):
            received.append(text)
            if len(received) == 3:
                pending.push_text("done")
                pending.finish(finished_line())
        return received, len(pending._listeners)

    received, listeners = asyncio.run(asyncio.wait_for(consume(), HANG_GUARD_S))
    assert received == ["", "", "", "done"]
    assert listeners == 0


def test_signal_set_after_the_loop_closed_is_harmless():
    async def make() -> ThreadSignal:
        return ThreadSignal()

    signal = asyncio.run(make())
    signal.set()  # the loop is gone: must not raise in the worker thread
