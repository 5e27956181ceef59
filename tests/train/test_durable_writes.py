"""The trainer's files reach the disk before they replace the ones a kill must leave whole: each
report file, ``run.json`` and every checkpoint is fsynced before it is renamed into place, and the
leftovers of a run killed mid-replace are cleared when it resumes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from npcrl.durable import set_aside_path  # noqa: E402
from npcrl.train import checkpoint as ckpt  # noqa: E402
from npcrl.train.report import METRICS_FILE, write_json, write_markdown, write_metrics  # noqa: E402
from npcrl.train.run_record import RUN_FILE, write_run_record  # noqa: E402


@pytest.fixture
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """("fsync", "") and ("replace", target name) in the order the code under test does them."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", ""))
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        events.append(("replace", Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def fsynced_before_replacing(events: list[tuple[str, str]], name: str) -> bool:
    replaced = events.index(("replace", name))
    return ("fsync", "") in events[:replaced]


SUMMARY: dict[str, Any] = {
    "parent_bundle": "parent",
    "base_weights": "weights",
    "data_summary": "2 turns",
    "time_s": 1.0,
    "metrics": [],
}


@pytest.mark.parametrize(
    "write,name",
    [
        (lambda d: write_metrics(d / METRICS_FILE, [{"iteration": 1}]), METRICS_FILE),
        (lambda d: write_json(d / "off_policy.json", {"note": "none"}), "off_policy.json"),
        (lambda d: write_markdown(d / "report.md", SUMMARY), "report.md"),
        (lambda d: write_run_record(d, {"logs": "L"}), RUN_FILE),
    ],
    ids=["metrics", "json", "markdown", "run-record"],
)
def test_report_files_are_fsynced_before_they_replace_the_old_ones(
    tmp_path: Path, disk_events: list[tuple[str, str]], write: Callable[[Path], None], name: str
) -> None:
    (tmp_path / name).write_text("the previous version", encoding="utf-8")
    write(tmp_path)
    assert fsynced_before_replacing(disk_events, name)
    assert (tmp_path / name).read_text(encoding="utf-8") != "the previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def checkpoint_state() -> tuple[dict[str, Any], Any]:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.sum().backward()
    optimizer.step()
    return {"weight": weight}, optimizer


def test_a_checkpoint_is_fsynced_whole_before_it_is_renamed_in(
    tmp_path: Path, disk_events: list[tuple[str, str]]
) -> None:
    trainable, optimizer = checkpoint_state()
    final = ckpt.save_checkpoint(tmp_path, 1, trainable, optimizer, {"kl": 0.1}, keep=2)
    files = [p for p in final.iterdir() if p.is_file()]
    before = disk_events[: disk_events.index(("replace", final.name))]
    assert before.count(("fsync", "")) > len(files)  # every file and the directory itself
    assert ckpt.load_checkpoint(final)[2]["kl"] == 0.1


def test_resuming_clears_a_replaced_checkpoint_a_kill_left_set_aside(tmp_path: Path) -> None:
    trainable, optimizer = checkpoint_state()
    kept = ckpt.save_checkpoint(tmp_path, 1, trainable, optimizer, {}, keep=2)
    aside = set_aside_path(tmp_path / "ckpt-000002")  # killed between the two renames of a rerun
    aside.mkdir()
    (tmp_path / ".staging-x").mkdir()
    ckpt.clean_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]
