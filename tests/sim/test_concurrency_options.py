"""``--concurrency N`` plays N conversations at once: the model is given the KV slots for it."""

from __future__ import annotations

import pytest

from npcrl.cli.main import build_parser
from npcrl.runtime.session import SessionOptions
from npcrl.sim.ordered import session_options_for


@pytest.mark.parametrize("concurrency, slots", [(1, 8), (4, 8), (8, 16), (12, 24)])
def test_models_for_simulation_get_two_slots_per_conversation(concurrency: int, slots: int) -> None:
    options = session_options_for(concurrency)
    assert options.kv_slots == slots
    assert options.kv_slots // 2 >= concurrency  # what max_concurrency allows on such a model
    assert options.intra_op_threads == SessionOptions().intra_op_threads
    # whole prefills: a chunked one rounds differently, and on the real q8 model 1 of 24 seeded
    # conversations then came out different at concurrency 8 than one at a time
    assert options.prefill_chunk == 0


@pytest.mark.parametrize("command", ["simulate", "eval", "loop"])
def test_concurrency_flag_and_its_old_spelling(command: str) -> None:
    required = {
        "simulate": ["--bundle", "b", "--conversations", "2", "--logs", "l"],
        "eval": ["--bundle", "b", "--conversations", "2", "--out", "o"],
        "loop": ["--bundle", "b", "--out", "o", "--rounds", "1", "--conversations", "2"],
    }[command]
    parser = build_parser()
    assert parser.parse_args([command, *required, "--concurrency", "8"]).concurrent == 8
    assert parser.parse_args([command, *required, "--concurrent", "3"]).concurrent == 3
