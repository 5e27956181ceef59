"""Round 1 on another run's play: compare training setups on the same logs and the same base evaluation.

Round 1's simulated play and the base's evaluation depend on the base bundle, the players, the
cards, the seeds, the sizes and the reward spec that scores the evaluation, never on how the
candidate is trained. So a run that differs from an earlier one only in that (the rest of
``train_config``, the guards, the promotion rule) may take that run's round-1 logs and base
evaluation instead of playing them again: it trains and evaluates its own candidate only
(training, the longest stage, is not saved), and its candidate is measured on exactly the logs
and players the other candidate was. That is what choosing between training setups needs
(``npcrl populations --same-play-as``).

The adopted stages are copied (the other run is only read) into ``round-1`` and recorded in its
``stages.json`` as finished in 0 s of this run, with ``adopted_from`` naming where they came from.
When both runs confirm with as many fresh players (``confirm_conversations``), the base's play
against round 1's fresh players is taken too: it depends only on the play settings and that number.

A learning curve (``npcrl curve --same-play-as``) takes the same two stages for its base, from a
run that played fewer conversations (the base then plays only the rest), and takes a whole finished
round for the size that run played when it was trained with the same settings too (when that run had
the persona probe off and the curve has it on, the round is taken undecided: its candidate is probed
and the round decided again, training and evaluation kept). The run may be
a loop run (its ``round-1``) or another curve (its ``base``, and its ``size-N`` rounds): a curve
with another training config then trains every size on the other curve's play and players.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from npcrl.durable import replace_dir
from npcrl.errors import LoopError
from npcrl.loop.state import (
    ADOPTED_FROM,
    DECISION_FILE,
    LOOP_FILE,
    MACHINES,
    STAGES_FILE,
    RoundStages,
    as_read_back,
    differing_settings,
    read_loop_record,
)

ADOPTED_STAGES = {"simulate": "logs", "evaluate_current": "eval/current"}
"""round 1's stages that depend only on the play settings -> the output each one wrote"""
ADOPTED_PROBE = "probe_current"
"""the base's persona probe in round 1 (it writes no output), taken too when both runs probe as many
lines per persona (its seed, cards, prompts and caps are play settings)"""
PROBE_GUARD = "persona_probe_lines"
"""the guard setting that says how many lines per persona the probe runs (0: no probe)"""
ADOPTED_CONFIRMATION = {"confirm_current": "confirm/current"}
"""the base's fresh players in round 1, taken too when both runs play as many of them (the fresh
players' seed follows from ``seed``, a play setting); the candidate's are its own"""
PLAY_SETTINGS = (
    "base",
    "conversations",
    "eval_conversations",
    "seed",
    "players",
    "personas",
    "system_prompts",
    "max_new_tokens",
)
"""the ``loop.json`` keys that decide round 1's play and the base's evaluation (with the reward spec)"""


def play_folder(source: Path) -> Path:
    """Where the run ``source`` keeps the play and base evaluation another run may take: a curve's
    ``base`` (its ``loop.json`` names its ``sizes``), a loop run's ``round-1``."""
    if (source / LOOP_FILE).is_file() and "sizes" in read_loop_record(source):
        return source / "base"
    return source / "round-1"


def sized_run(source: Path, conversations: int) -> Path:
    """The loop run whose round 1 may be a curve's round on ``conversations``: a curve's size of as
    many conversations, or the loop run ``source`` itself (taken only if it played as many)."""
    if play_folder(source).name == "base":
        return source / f"size-{conversations}"
    return source


def play_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What of a loop record (``LoopSettings.record()``) round 1's play and base evaluation depend
    on: the play settings and the reward spec that scores the evaluation."""
    settings = {key: record.get(key) for key in PLAY_SETTINGS}
    settings["reward_spec"] = (record.get("train_config") or {}).get("data", {}).get("reward_spec")
    return as_read_back(settings)


def adopt_round_one_play(source_round: Path, out: Path, confirm_conversations: int = 0, probe_lines: int = 0) -> bool:
    """Copy into the loop run ``out`` the round-1 play and base evaluation of ``source_round`` (as
    ``check_play_source`` returned it), the base's fresh players when ``source_round``'s run
    played ``confirm_conversations`` of them (> 0), and the base's persona probe when it probed
    ``probe_lines`` lines per persona (> 0); False (nothing done) when ``out`` already has a round 1."""
    return adopt_play(source_round, out / "round-1", confirm_conversations, probe_lines)


def adopt_play(source_round: Path, target: Path, confirm_conversations: int = 0, probe_lines: int = 0) -> bool:
    """Copy ``source_round``'s play and base evaluation into the round folder ``target`` (a loop's
    ``round-1``, a curve's ``base``), recorded as finished there, with the base's fresh players and
    persona probe as ``adopt_round_one_play`` says; False when ``target`` exists."""
    if target.exists():
        return False  # adopted before a stop, or played: a resume goes on from what is there
    scratch = target.parent / f".{target.name}.adopting"  # whole or not at all: a stop mid-copy leaves nothing half
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    earlier = RoundStages(source_round)
    stages: dict[str, str | None] = dict(ADOPTED_STAGES)
    if confirmation_adoptable(source_round, confirm_conversations):
        stages.update(ADOPTED_CONFIRMATION)
    if probe_adoptable(source_round, probe_lines):
        stages[ADOPTED_PROBE] = None
    adopted: dict[str, dict[str, Any]] = {}
    for name, output in stages.items():
        if output is not None:
            shutil.copytree(source_round / output, scratch / output)
        adopted[name] = {
            "seconds": 0.0,
            "result": earlier.result(name),
            ADOPTED_FROM: str(source_round.resolve()),
            MACHINES: earlier.machines(name),  # where it ran, which need not be here
        }
    (scratch / STAGES_FILE).write_text(json.dumps(adopted, indent=1), encoding="utf-8")
    replace_dir(scratch, target)  # fsynced, then renamed into place
    extra = [what for name, what in _EXTRAS.items() if name in stages]
    parts = ["simulated play", "base evaluation", *extra]
    what = ", ".join(parts[:-1]) + " and " + parts[-1]
    print(f"[npcrl loop] {target.name}: {what} adopted from {source_round}", flush=True)
    return True


_EXTRAS = {"confirm_current": "the base's fresh players", ADOPTED_PROBE: "the base's persona probe"}


def probe_adoptable(source_round: Path, probe_lines: int) -> bool:
    """Whether ``source_round`` (a loop run's round 1) finished the base's persona probe of
    ``probe_lines`` (> 0) lines per persona, as this run would probe it."""
    if probe_lines <= 0:
        return False
    guards = read_loop_record(source_round.parent).get("guards") or {}
    return guards.get(PROBE_GUARD) == probe_lines and RoundStages(source_round).done(ADOPTED_PROBE)


def confirmation_adoptable(source_round: Path, confirm_conversations: int) -> bool:
    """Whether ``source_round`` (a loop run's round 1) finished the base's fresh players, played
    ``confirm_conversations`` (> 0) of them per bundle as this run will."""
    if confirm_conversations <= 0:
        return False
    recorded = read_loop_record(source_round.parent).get("confirm_conversations", 0)
    return recorded == confirm_conversations and RoundStages(source_round).done("confirm_current")


def adopt_finished_round(source: Path, record: dict[str, Any], target: Path) -> bool:
    """Copy the loop run ``source``'s finished round 1 into the round folder ``target`` when
    ``source`` was started with exactly the settings ``record`` (a ``loop.json``): the round this run
    would play, already played; or when the settings differ only in the persona probe, off there and
    on here: then the round is copied without its decision, and the loop goes on from its last stage
    with the candidate's probe and decides it again. False (nothing done, and why printed) otherwise."""
    folder = source / "round-1"
    if target.exists() or not (folder / DECISION_FILE).is_file():
        return False
    differing = differing_settings(source, record)
    to_probe = probe_added_only(differing)
    if differing and not to_probe:
        print(
            f"[npcrl loop] {target.parent.name}: not adopting {folder} (its {', '.join(differing)} differ)", flush=True
        )
        return False
    scratch = target.parent / f".{target.name}.adopting"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(folder, scratch)
    if to_probe:  # undecided again: the round goes on with the candidate's probe, then decides
        (scratch / DECISION_FILE).unlink()
    stages = json.loads((scratch / STAGES_FILE).read_text(encoding="utf-8"))
    for stage in stages.values():  # each stage ran there, in its own time: say where
        stage.setdefault(ADOPTED_FROM, str(folder.resolve()))
    (scratch / STAGES_FILE).write_text(json.dumps(stages, indent=1), encoding="utf-8")
    replace_dir(scratch, target)
    what = "the trained round, to be probed and decided again," if to_probe else "the finished round"
    print(f"[npcrl loop] {target.parent.name}: {what} adopted from {folder}", flush=True)
    return True


def probe_added_only(differing: dict[str, tuple[Any, Any]]) -> bool:
    """Whether the settings ``differing_settings`` found differ only in the persona probe, off in the
    earlier run and on in this one: that round's play, training and evaluation are this run's too,
    and only the candidate's probe and the decision it guards are missing."""
    if set(differing) != {"guards"}:
        return False
    before, now = differing["guards"]
    if before.get(PROBE_GUARD) != 0 or not now.get(PROBE_GUARD):
        return False
    return {k: v for k, v in before.items() if k != PROBE_GUARD} == {k: v for k, v in now.items() if k != PROBE_GUARD}


def check_play_source(source: Path, record: dict[str, Any], any_conversations: bool = False) -> Path:
    """``source``'s round-1 folder, once its play settings match ``record``'s (this run's
    ``loop.json``) and it finished the stages to adopt; else a LoopError saying what differs.
    ``any_conversations``: ``source`` may have played another number of conversations than
    ``record``'s (a curve: simulation is seeded per conversation, so its conversations are the first
    of the curve's, and its base plays the rest)."""
    if not (source / LOOP_FILE).is_file():
        raise LoopError(f"{source}: not a loop run ({LOOP_FILE} is missing); name the --out of an earlier run")
    earlier = play_settings(read_loop_record(source))
    now = play_settings(record)
    for key in now:
        if key == "conversations" and any_conversations:
            continue
        if earlier[key] != now[key]:
            raise LoopError(
                f"{source}: its round 1 was played with a different {key} ({earlier[key]!r}, now {now[key]!r});"
                " only a run with the same play settings can share its play"
            )
    folder = play_folder(source)
    stages = RoundStages(folder)
    missing = [name for name in ADOPTED_STAGES if not stages.done(name)]
    if missing:
        raise LoopError(f"{folder}: has not finished {', '.join(missing)}; finish that run's round 1 first")
    return folder
