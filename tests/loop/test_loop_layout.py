"""``npcrl.loop`` as a package: the names of the old one-module ``npcrl.loop`` still import (with a
warning), importing the package stays light, and the loop's own files reach the disk whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_old_loop_names_still_import_with_a_deprecation_warning() -> None:
    import npcrl.loop.decision
    import npcrl.loop.run
    from npcrl.evaluation import metric_names

    with pytest.warns(DeprecationWarning, match=r"npcrl\.loop\.run_loop moved to npcrl\.loop\.run\.run_loop"):
        from npcrl.loop import run_loop
    assert run_loop is npcrl.loop.run.run_loop
    with pytest.warns(DeprecationWarning) as caught:
        from npcrl.loop import KL, Guards
    assert [str(w.message).split(";")[0] for w in caught] == [
        "npcrl.loop.KL moved to npcrl.evaluation.metric_names.KL_PER_LINE",
        "npcrl.loop.Guards moved to npcrl.loop.decision.Guards",
    ]
    assert caught[0].filename == __file__  # the warning points at the import that needs changing
    assert KL == metric_names.KL_PER_LINE and Guards is npcrl.loop.decision.Guards
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        npcrl.loop.nothing_here  # noqa: B018


def test_importing_the_loop_package_loads_neither_the_rounds_nor_torch() -> None:
    """Games import ``npcrl.loop.promotion``: that must not pull in the rounds, the trainer or torch."""
    probe = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "import npcrl.loop\n"
        "from npcrl.loop import promotion\n"
        "loaded = sorted(m for m in ('torch', 'npcrl.loop.run', 'npcrl.train') if m in sys.modules)\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Every file renamed into place from now on: its name -> whether its data was fsynced first."""
    synced: set[int] = set()
    seen: dict[str, bool] = {}
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        seen[Path(target).name] = os.stat(source).st_ino in synced
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def test_the_loop_state_reaches_the_disk_before_it_replaces_the_old(tmp_path: Path, renames: dict[str, bool]) -> None:
    """loop.json, stages.json and decision.json: each new version is fsynced before it is renamed
    over the old one, so a power cut leaves the old version or the new, never an empty file."""
    from npcrl.loop.state import RoundStages, write_decision, write_loop_record

    out = tmp_path / "loop"
    write_loop_record(out, {"rounds": 1})
    stages = RoundStages(out / "round-1")
    assert stages.start("simulate")
    stages.finish("simulate")
    write_decision(out / "round-1", {"round": 1, "promoted": False})
    assert renames == {"loop.json": True, "stages.json": True, "decision.json": True}


def test_the_loop_summary_is_replaced_whole(tmp_path: Path, renames: dict[str, bool]) -> None:
    from npcrl.loop.round import RoundResult
    from npcrl.loop.summary import write_summary

    rows = {
        "reward / conversation (95% CI)": [1.0, 0.5, 1.5],
        "KL to reference (nats / line)": 0.1,
        "held-out persona perplexity": 9.0,
    }
    result = RoundResult(1, "base", "candidate", False, ["not better"], {"current": rows, "candidate": rows})
    result.seconds.update(simulate=1.0, train_and_export=2.0, evaluate=3.0)
    write_summary(tmp_path, [result])
    assert renames == {"loop.md": True}
    assert (
        "| 1 | 1.000 | 1.000 | - | - | - | 0.10 | 9.00 | False | 1 | - | 2 | 3 | - |"
        in (tmp_path / "loop.md").read_text()
    )
