"""The bundle store: atomic promotion, rollback, concurrent promoters, corruption and repair.

New API (``repair``, ``StoreError``, the record parsers) is imported inside the tests that use it,
so each test states on its own which behaviour it needs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import npcrl
from npcrl.cli.main import main
from npcrl.errors import BundleError
from npcrl.loop.promotion import CURRENT, current_bundle, history, promote, rollback
from npcrl.runtime.bundle import load_bundle

REPO_ROOT = Path(npcrl.__file__).resolve().parents[1]
HISTORY_FILE = "HISTORY"


def _copy(tiny_bundles: dict[str, Path], tmp_path: Path, name: str, source: str = "llama-q4") -> Path:
    """A bundle of its own directory (same content as ``source``), so tests can delete or break it."""
    return Path(shutil.copytree(tiny_bundles[source], tmp_path / "bundles" / name))


def _store_with_two(tiny_bundles: dict[str, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    store, first, second = tmp_path / "store", _copy(tiny_bundles, tmp_path, "a"), _copy(tiny_bundles, tmp_path, "b")
    promote(store, first)
    promote(store, second)
    return store, first.resolve(), second.resolve()


def test_promote_then_rollback(tiny_bundles, tmp_path):
    store = tmp_path / "store"
    assert current_bundle(store) is None
    first = promote(store, tiny_bundles["llama-fp32"])
    assert current_bundle(store).bundle_id == first.bundle_id == load_bundle(tiny_bundles["llama-fp32"]).bundle_id
    second = promote(store, tiny_bundles["llama-q8"])
    assert current_bundle(store).bundle_id == second.bundle_id != first.bundle_id
    assert [p.bundle_id for p in history(store)] == [first.bundle_id]
    restored = rollback(store)
    assert restored.bundle_id == first.bundle_id == current_bundle(store).bundle_id
    assert history(store) == []
    with pytest.raises(BundleError, match="no earlier promotion"):
        rollback(store)


def test_a_broken_bundle_is_never_promoted(tiny_bundles, tmp_path):
    with pytest.raises(BundleError, match="bundle directory does not exist"):
        promote(tmp_path / "store", tmp_path / "missing")
    assert current_bundle(tmp_path / "store") is None


def test_corrupt_pointer_is_named(tmp_path):
    (tmp_path / "CURRENT").write_text("{oops")
    with pytest.raises(BundleError, match="CURRENT: unreadable promotion pointer"):
        current_bundle(tmp_path)


# ---------------------------------------------------------------------- concurrent promoters

PROMOTER = """
import sys, time
from pathlib import Path
from npcrl.loop.promotion import promote

store, bundle, go, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + 300
while not go.exists():  # all promoters start together, so their promotions overlap
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.001)
for _ in range(count):
    promote(store, bundle)
"""


def test_concurrent_promoters_keep_every_promotion(tiny_bundles, tmp_path):
    processes, each = 8, 16
    store, go = tmp_path / "store", tmp_path / "go"
    bundles = [_copy(tiny_bundles, tmp_path, f"p{i}") for i in range(processes)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    promoters = [
        subprocess.Popen(
            [sys.executable, "-c", PROMOTER, str(store), str(bundle), str(go), str(each)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for bundle in bundles
    ]
    go.touch()
    seen = 0
    hang_guard = time.monotonic() + 600
    while any(p.poll() is None for p in promoters) and time.monotonic() < hang_guard:
        seen += current_bundle(store) is not None  # a lock-free reader never sees half a pointer
        history(store)
    errors = [p.communicate(timeout=60)[1] for p in promoters]
    assert [p.returncode for p in promoters] == [0] * processes, errors
    kept = [*history(store), current_bundle(store)]
    assert len(kept) == processes * each
    assert Counter(p.bundle_dir for p in kept) == {b.resolve(): each for b in bundles}
    assert [p.promoted_at for p in kept] == sorted(p.promoted_at for p in kept)


# ---------------------------------------------------------------------- corruption and repair


def _truncated_pointer(store: Path) -> None:
    text = (store / CURRENT).read_text()
    (store / CURRENT).write_text(text[: len(text) // 2])


CORRUPTIONS = {
    "garbage": lambda store, bundle: (store / CURRENT).write_bytes(b"\x00\xff not a pointer \x81"),
    "empty": lambda store, bundle: (store / CURRENT).write_bytes(b""),
    "truncated JSON": lambda store, bundle: _truncated_pointer(store),
    "deleted bundle": lambda store, bundle: shutil.rmtree(bundle),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_current_is_a_clear_error_and_repair_restores_the_last_good(corruption, tiny_bundles, tmp_path, capsys):
    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    CORRUPTIONS[corruption](store, second)
    with pytest.raises(BundleError, match=r"CURRENT.*npcrl promote --repair"):
        current_bundle(store)
    assert main(["promote", "--repair", str(store)]) == 0
    assert "restored" in capsys.readouterr().out
    assert current_bundle(store).bundle_dir == first
    assert history(store) == []
    assert main(["promote", "--repair", str(store)]) == 0  # a sound store is left as it is
    assert "is sound" in capsys.readouterr().out


def test_repair_skips_history_entries_whose_bundle_no_longer_verifies(tiny_bundles, tmp_path):
    from npcrl.loop.promotion import repair

    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    third = _copy(tiny_bundles, tmp_path, "c")
    promote(store, third)
    (second / "tokenizer.json").write_text("{}")  # the newest earlier entry no longer verifies
    shutil.rmtree(third)
    result = repair(store)
    assert result.restored and result.current.bundle_dir == first == current_bundle(store).bundle_dir
    assert any("no longer verifies" in problem and str(second) in problem for problem in result.problems)
    assert history(store) == []


def test_repair_with_nothing_left_to_restore_says_what_to_do(tiny_bundles, tmp_path):
    from npcrl.loop.promotion import repair

    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    shutil.rmtree(first)
    shutil.rmtree(second)
    with pytest.raises(BundleError, match=r"none of the 1 HISTORY entries.*npcrl promote .* BUNDLE"):
        repair(store)
    (tmp_path / "never-used").mkdir()
    assert repair(tmp_path / "never-used").current is None


def test_a_corrupt_pointer_does_not_block_promote_or_rollback(tiny_bundles, tmp_path):
    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    (store / CURRENT).write_text("{not json")
    assert rollback(store).bundle_dir == first
    (store / CURRENT).write_text("")
    third = promote(store, _copy(tiny_bundles, tmp_path, "c"))
    assert current_bundle(store) == third
    assert history(store) == []  # the corrupt pointer was replaced, not recorded


def test_a_corrupt_history_line_is_skipped_and_reported(tiny_bundles, tmp_path, caplog):
    from npcrl.loop.promotion import read_history, repair

    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    good = (store / HISTORY_FILE).read_text()
    (store / HISTORY_FILE).write_text('{"bundle_dir": "relative"\n\x00garbage\n' + good + '{"bundle_dir": "/torn')
    with caplog.at_level(logging.WARNING, logger="npcrl.loop.promotion"):
        assert [p.bundle_dir for p in history(store)] == [first]
    assert "HISTORY:1" in caplog.text and "HISTORY:2" in caplog.text and "HISTORY:4" in caplog.text
    result = repair(store)
    assert not result.restored and len(result.problems) == 3
    assert read_history(store).problems == []
    assert rollback(store).bundle_dir == first


def test_rollback_to_a_deleted_bundle_leaves_the_store_unchanged(tiny_bundles, tmp_path):
    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    shutil.rmtree(first)
    before = (store / CURRENT).read_text(), (store / HISTORY_FILE).read_text()
    with pytest.raises(BundleError, match=r"cannot roll back: bundle .* no longer verifies.*unchanged"):
        rollback(store)
    assert ((store / CURRENT).read_text(), (store / HISTORY_FILE).read_text()) == before


def test_a_promotion_cut_off_between_its_writes_is_not_recorded_twice(tiny_bundles, tmp_path):
    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    current = json.loads((store / CURRENT).read_text())
    with open(store / HISTORY_FILE, "a") as handle:  # HISTORY written, CURRENT not yet switched
        handle.write(json.dumps(current) + "\n")
    promote(store, first)
    assert [p.bundle_dir for p in history(store)] == [first, second]


def test_a_held_lock_times_out_naming_the_lock_file(tiny_bundles, tmp_path):
    from filelock import FileLock

    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    with FileLock(str(store / "LOCK")):
        with pytest.raises(BundleError, match=r"LOCK: another promote, rollback or repair has held"):
            promote(store, first, lock_timeout_s=0.2)
    assert current_bundle(store).bundle_dir == second


# ---------------------------------------------------------------------- clear errors


def test_a_store_path_that_is_a_file_is_a_clear_error(tiny_bundles, tmp_path, capsys):
    store = tmp_path / "store"
    store.write_text("not a directory")
    for call in (lambda: current_bundle(store), lambda: history(store), lambda: rollback(store)):
        with pytest.raises(BundleError, match=r"store: bundle store path is not a directory"):
            call()
    for argv in (["promote", str(store), str(tiny_bundles["llama-q4"])], ["rollback", str(store)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("npcrl: error: ") and f"{store}: " in err


def test_cli_store_path_that_is_a_file_exits_2_without_a_traceback(tiny_bundles, tmp_path):
    store = tmp_path / "store"
    store.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "npcrl.cli", "promote", str(store), str(tiny_bundles["llama-q4"])],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"npcrl: error: {store}: bundle store path is not a directory\n"


def test_unreadable_store_files_are_named(tiny_bundles, tmp_path):
    store, first, second = _store_with_two(tiny_bundles, tmp_path)
    (store / HISTORY_FILE).unlink()
    (store / HISTORY_FILE).mkdir()
    with pytest.raises(BundleError, match=r"HISTORY: cannot be read"):
        history(store)
    (store / CURRENT).unlink()
    (store / CURRENT).mkdir()
    with pytest.raises(BundleError, match=r"CURRENT: cannot be read.*--repair"):
        current_bundle(store)


def test_a_path_that_is_not_a_bundle_is_refused_naming_it(tmp_path, capsys):
    store, plain_file, empty_dir = tmp_path / "store", tmp_path / "model.onnx", tmp_path / "empty"
    plain_file.write_bytes(b"onnx")
    empty_dir.mkdir()
    with pytest.raises(BundleError, match=r"model.onnx: is a file, not a bundle directory"):
        promote(store, plain_file)
    assert main(["promote", str(store), str(empty_dir)]) == 2
    assert capsys.readouterr().err == f"npcrl: error: {empty_dir}: not a model bundle (manifest.json is missing)\n"
    assert main(["promote", str(store)]) == 2
    assert main(["promote", "--repair", str(store), str(empty_dir)]) == 2
    assert current_bundle(store) is None


# ---------------------------------------------------------------------- parser fuzz

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
RECORDS = st.dictionaries(st.sampled_from(["bundle_dir", "bundle_id", "promoted_at", "x"]), JSON_VALUES, max_size=4)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(raw=st.binary(max_size=200) | RECORDS.map(lambda r: json.dumps(r).encode()))
@example(raw=b"[" * 100_000)
@example(raw=b'{"bundle_dir": "/b\\u0000", "bundle_id": "x", "promoted_at": 1}')
@example(raw=b'{"bundle_dir": "/b", "bundle_id": "x", "promoted_at": NaN}')
@example(raw=b'{"bundle_dir": "/\\ud800", "bundle_id": "x", "promoted_at": 1}')
def test_fuzzed_pointer_gives_a_promotion_or_a_store_error(raw, tmp_path):
    (tmp_path / CURRENT).write_bytes(raw)
    try:
        promotion = current_bundle(tmp_path)
    except BundleError as exc:
        assert "npcrl promote --repair" in str(exc) and "\n" not in str(exc)
    else:
        assert promotion is not None and promotion.bundle_dir.is_absolute()


@FUZZ
@given(lines=st.lists(st.binary(max_size=60) | RECORDS.map(lambda r: json.dumps(r).encode()), max_size=6))
@example(lines=[b'{"bundle_dir": "/b", "bundle_id": "x", "promoted_at": ' + b"9" * 4000 + b"}"])
def test_fuzzed_history_is_parsed_line_by_line_without_raising(lines):
    from npcrl.loop.promotion_records import Promotion, format_history, parse_history

    valid = Promotion(Path("/bundles/kept"), "0123456789abcdef", 1.5)
    raw = b"\n".join(lines) + b"\n" + format_history([valid]).encode()
    read = parse_history(raw, "HISTORY")
    assert read.promotions[-1] == valid
    assert len(read.promotions) + len(read.problems) <= raw.count(b"\n") + 1
    assert all(problem.startswith("HISTORY:") and "\n" not in problem for problem in read.problems)
