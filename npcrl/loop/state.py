"""Where an ``npcrl loop`` run stands on disk, so a stopped run resumes instead of starting over.

    OUT/loop.json               the loop's settings; a resume must match them (only ``rounds`` may change)
    OUT/loop.lock               held (flock) while a run works in OUT
    OUT/round-N/stages.json     the round's stages: finished ones' seconds and results, and when the
                                unfinished one started; rewritten atomically
    OUT/round-N/decision.json   written last: the round is finished

A round's stages take hours on a laptop-class CPU, so a stop loses at most the stage it was in. That
stage's partial output is moved aside (``NAME.interrupted-K``), never deleted, and the stage runs
again. Simulation and evaluation are seeded per conversation, so the redo copies the conversations
the cut-off attempt finished from the set-aside logs and plays only the rest (``npcrl.sim.resume``).
Training resumes from its own last checkpoint (``npcrl train --resume``).

A run may be moved (or copied) and resumed where it now lies: what its records name inside the run
(a round's candidate bundle, the weights it was trained from) is recorded relative to the record.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from npcrl.durable import atomic_write, set_aside
from npcrl.errors import LoopError
from npcrl.loop.machine import merged, this_machine

LOOP_FILE = "loop.json"
LOCK_FILE = "loop.lock"
STAGES_FILE = "stages.json"
DECISION_FILE = "decision.json"
STARTED = "started"  # wall-clock time an unfinished stage started
CUT_OFF = "cut_off_seconds"  # what cut-off attempts of a stage spent
MACHINES = "machines"  # the machines a stage ran on (more than one when resumed elsewhere)
ADOPTED_FROM = "adopted_from"  # the round a stage's output was copied from (``npcrl.loop.adopt``)


def fingerprint(items: Sequence[Any]) -> str:
    """Identifies player profiles, personas or prompts by value (their reprs hold every field)."""
    return hashlib.sha256(repr(list(items)).encode("utf-8")).hexdigest()


def check_loop_out(out: Path, resume: bool, record: dict[str, Any], may_change: Collection[str] = ()) -> None:
    """Refuse an output directory in use unless resuming, and a resume whose settings differ.

    ``record`` is this run's settings; every key but ``rounds`` and those in ``may_change`` (whose
    caller checks them: a curve may add sizes) must equal the recorded run's, so the rounds already
    finished are rounds this run would have played."""
    path = out / LOOP_FILE
    if not resume:
        if out.exists() and any(entry.name != LOCK_FILE for entry in out.iterdir()):
            hint = " (pass --resume to continue it)" if path.is_file() else ""
            raise LoopError(f"{out}: output directory is not empty{hint}")
        return
    for key, (previous, now) in differing_settings(out, record).items():
        if key != "rounds" and key not in may_change:
            raise LoopError(
                f"{path}: the loop was started with a different {key} "
                f"({previous!r}, now {now!r}); resume with the same settings"
            )
    finished = finished_rounds(out)
    if record["rounds"] < finished:
        raise LoopError(f"{out}: {finished} rounds are already finished; --rounds must be at least that")


def differing_settings(out: Path, record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Each key, in sorted order, whose value in ``record`` (a run's settings) differs from the run
    in ``out``'s ``loop.json`` (settings and guards added since it was written count at their defaults), with
    its recorded value and ``record``'s (None where one side lacks the key)."""
    now = as_read_back(with_later_settings(record))  # so tuples and lists compare alike
    previous = with_later_settings(read_loop_record(out))
    keys = sorted(key for key in set(previous) | set(now) if previous.get(key) != now.get(key))
    return {key: (previous.get(key), now.get(key)) for key in keys}


def read_loop_record(out: Path) -> dict[str, Any]:
    """The settings a run in ``out`` was started with (``loop.json``)."""
    path = out / LOOP_FILE
    if not path.is_file():
        raise LoopError(f"{out}: nothing to resume ({LOOP_FILE} is missing)")
    return _read_object(path, "a loop's settings")


SETTINGS_ADDED_LATER = {"confirm_rule": "both"}
"""settings ``loop.json`` gained after runs were recorded without them, at the value those runs
had in effect (``LoopSettings``' defaults)"""


def with_later_settings(previous: dict[str, Any]) -> dict[str, Any]:
    """``previous`` with the settings, guards and training settings added since it was written at
    their defaults: a run started before one existed resumes under it only if this run leaves it at
    its default (as ``npcrl train --resume`` reads a recorded config)."""
    from dataclasses import asdict

    from npcrl.loop.decision import Guards

    previous = {**SETTINGS_ADDED_LATER, **previous}
    guards = previous.get("guards")
    if isinstance(guards, dict):
        previous = {**previous, "guards": {**asdict(Guards()), **guards}}
    train_config = previous.get("train_config")
    if isinstance(train_config, dict):
        previous = {**previous, "train_config": _train_config_read_back(train_config)}
    return previous


def _train_config_read_back(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded ``train_config`` read back through the parser (keys added since take their
    defaults); one that no longer parses stays as it is, so it differs and the resume is refused."""
    from npcrl.errors import TrainConfigError
    from npcrl.train.config import TrainConfig

    try:
        return TrainConfig.from_record(recorded, where="train_config").to_dict()
    except TrainConfigError:
        return recorded


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``OUT/loop.lock`` while a run works in ``out``: a second ``npcrl loop`` there (say, a
    resume started while the first run still goes) fails at once instead of writing the same
    round's files. The OS drops the lock when the process ends, however it ends. POSIX only (fcntl);
    elsewhere runs are not guarded."""
    if out.exists() and not out.is_dir():
        raise LoopError(f"{out}: is a file; --out must be a directory")
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise LoopError(f"{out}: another npcrl loop is working in this directory ({LOCK_FILE} is held)") from None
        yield


def write_loop_record(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / LOOP_FILE, record)


def finished_rounds(out: Path) -> int:
    """How many rounds, counting from 1 without a gap, have their decision written."""
    number = 0
    while (out / f"round-{number + 1}" / DECISION_FILE).is_file():
        number += 1
    return number


def recorded_path(path: Path, folder: Path) -> str:
    """``path`` as a round's records keep it: relative to the round's ``folder`` when it lies in
    the run (``folder``'s parent), so a moved run still finds it; else absolute."""
    path = Path(path).resolve()
    run = folder.resolve().parent
    if path.is_relative_to(run):
        return os.path.relpath(path, folder.resolve())
    return str(path)


def placed_path(recorded: str, folder: Path) -> Path:
    """A path ``recorded_path`` wrote for ``folder``, where it lies now (an absolute one as it is)."""
    return folder / recorded


def read_decision(folder: Path) -> dict[str, Any]:
    return _read_object(folder / DECISION_FILE, "a round decision")


def write_decision(folder: Path, decision: dict[str, Any]) -> dict[str, Any]:
    """Write the round's decision; returns it as a resumed run reads it back (tuples become lists)."""
    _write_json(folder / DECISION_FILE, decision)
    return dict(as_read_back(decision))


class RoundStages:
    """The stages of one round (``round-N/stages.json``): each finished one with its seconds and
    result, and the one in progress with when it started, so a resume can count what a cut-off
    attempt spent; each with the machines it ran on (``npcrl.loop.machine``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / STAGES_FILE
        self._stages: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}
        self._set_aside: dict[str, Path] = {}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise LoopError(f"{self.path}: cannot be read ({exc})") from None
            if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
                raise LoopError(f"{self.path}: not a record of stages (name -> {{seconds, result}})")
            self._stages = loaded

    def done(self, name: str) -> bool:
        return "seconds" in self._stages.get(name, {})

    def result(self, name: str) -> Any:
        return self._stages[name].get("result")

    def seconds(self) -> dict[str, float]:
        """Each finished stage's seconds, cut-off attempts included (see ``cut_off_seconds``)."""
        return {
            name: float(stage["seconds"]) + float(stage.get(CUT_OFF, 0.0))
            for name, stage in self._stages.items()
            if "seconds" in stage
        }

    def machines(self, name: str) -> list[dict[str, Any]]:
        """The machines stage ``name`` ran on ([] where unknown: not run, or recorded before machines were)."""
        return list(self._stages.get(name, {}).get(MACHINES, []))

    def cut_off_seconds(self) -> dict[str, float]:
        """The finished stages that were cut off before, with what those attempts spent: from each
        one's start to the last file it wrote, so an undercount of the compute the stop lost."""
        return {name: float(stage[CUT_OFF]) for name, stage in self._stages.items() if stage.get(CUT_OFF)}

    def start(self, name: str, output: Path | None = None, *, resumes_output: bool = False) -> bool:
        """True when the stage is to run now (it did not finish earlier); its clock starts. ``output``
        is the directory it writes: a cut-off attempt's is set aside, unless the stage resumes from
        it (``resumes_output``, as training resumes from its checkpoint)."""
        label = f"[npcrl loop] {self.folder.name}: {name}"
        if self.done(name):
            print(f"{label} finished earlier, read back", flush=True)
            return False
        unfinished = self._stages.get(name, {})  # a cut-off attempt's record, if one was cut off
        cut_off = float(unfinished.get(CUT_OFF, 0.0))
        if STARTED in unfinished and output is not None:
            cut_off += max(0.0, _last_write(output) - float(unfinished[STARTED]))
        if output is not None and not resumes_output and (aside := set_aside(output)) is not None:
            why = "was cut off; its partial output" if STARTED in unfinished else "runs again; its earlier output"
            print(f"{label} {why} moved to {aside}", flush=True)
            self._set_aside[name] = aside
        print(f"{label} ...", flush=True)
        self._started[name] = time.perf_counter()
        machines = merged(self.machines(name), this_machine())
        self._record(name, {STARTED: time.time(), CUT_OFF: cut_off, MACHINES: machines, **self._adopted(name)})
        return True

    def reopen(self, name: str) -> None:
        """Let finished stage ``name`` run again to make more of its output (a curve that gained a
        larger size plays more conversations); its seconds so far count as an earlier attempt's."""
        stage = self._stages.get(name, {})
        if "seconds" in stage:
            earlier = float(stage["seconds"]) + float(stage.get(CUT_OFF, 0.0))
            self._record(name, {CUT_OFF: earlier, MACHINES: self.machines(name), **self._adopted(name)})

    def cut_off_output(self, name: str) -> Path | None:
        """Where ``start`` just moved a cut-off attempt's output (None when there was none): a
        seeded stage reads what it already finished from there (``npcrl.sim.resume``)."""
        return self._set_aside.get(name)

    def finish(self, name: str, result: Any = None) -> None:
        """Record a started stage as finished, with its seconds and ``result`` (JSON)."""
        seconds = time.perf_counter() - self._started.pop(name)
        cut_off = float(self._stages[name].get(CUT_OFF, 0.0))
        # stored as read back, so a resumed round decides on exactly what an uninterrupted one did
        finished = {"seconds": seconds, "result": as_read_back(result), MACHINES: self.machines(name)}
        self._record(name, finished | ({CUT_OFF: cut_off} if cut_off else {}) | self._adopted(name))
        earlier = f" (and {cut_off:.0f} s in cut-off attempts)" if cut_off else ""
        print(f"[npcrl loop] {self.folder.name}: {name} done in {seconds:.0f} s{earlier}", flush=True)

    def adopted_from(self, name: str) -> str | None:
        """The round stage ``name``'s output was copied from (``npcrl.loop.adopt``); None if it ran here."""
        source = self._stages.get(name, {}).get(ADOPTED_FROM)
        return None if source is None else str(source)

    def _adopted(self, name: str) -> dict[str, Any]:
        """Where stage ``name``'s first output came from, kept when it runs on to make more of it."""
        source = self.adopted_from(name)
        return {} if source is None else {ADOPTED_FROM: source}

    def _record(self, name: str, stage: dict[str, Any]) -> None:
        self._stages[name] = stage
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_json(self.path, self._stages)


def _last_write(output: Path) -> float:
    """When anything under ``output`` was last written (0 when nothing is there)."""
    if not output.exists():
        return 0.0
    times = [output.stat().st_mtime] + [p.stat().st_mtime for p in output.rglob("*") if p.is_file()]
    return max(times)


def as_read_back(value: Any) -> Any:
    """``value`` as it reads back from the JSON the loop writes (tuples become lists)."""
    return json.loads(json.dumps(value, default=list))


def _read_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a LoopError naming the file when it cannot be read or is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoopError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(value, dict):
        raise LoopError(f"{path}: not {what} (a JSON object)")
    return value


def _write_json(path: Path, value: Any) -> None:
    """Replace ``path`` whole and durably: a resume after a power cut reads the old record or the new."""
    atomic_write(path, json.dumps(value, indent=1, default=list))
