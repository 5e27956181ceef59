"""The command line as a shell sees it: pipes that close early, help pages with working examples,
and help or log commands that never load the trainer."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playlog_helpers import build_log, conversation, write_log

from npcrl.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HANG_GUARD_S = 600


def npcrl_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "npcrl.cli", *argv]


def big_log(directory: Path, conversations: int) -> Path:
    """A play log whose ``logs inspect`` output is far larger than a pipe's buffer."""
    records = [r for k in range(conversations) for r in conversation(f"conv-{k}", turns=2)]
    write_log(directory / "play-20250101T000000Z-000000.npl", build_log(records)[0])
    return directory


def test_a_reader_that_closes_after_one_line_ends_inspect_quietly(tmp_path: Path) -> None:
    logs = big_log(tmp_path, conversations=800)
    proc = subprocess.Popen(
        npcrl_command("logs", "inspect", str(logs)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like ``| head -1``: the writer is still far from done
    err = proc.stderr.read()
    code = proc.wait(timeout=HANG_GUARD_S)
    assert first.startswith(b"play-20250101T000000Z-000000.npl@")
    assert err == b""
    assert code == 141


def test_stats_into_a_pipe_nobody_reads_ends_quietly(tmp_path: Path) -> None:
    logs = big_log(tmp_path, conversations=2)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a byte is written
    try:
        result = subprocess.run(
            npcrl_command("logs", "stats", str(logs)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=ENV,
            timeout=HANG_GUARD_S,
        )
    finally:
        os.close(write_end)
    assert result.stderr == b""
    assert result.returncode == 141


def test_help_and_log_commands_never_import_the_trainer(tmp_path: Path) -> None:
    logs = big_log(tmp_path, conversations=2)
    code = (
        "import contextlib, io, json, sys\n"
        "from npcrl.cli.main import main\n"
        f"for argv in (['--help'], ['logs', 'stats', '--help'], ['logs', 'stats', {str(logs)!r}]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "heavy = ('torch', 'transformers', 'pygame', 'npcrl.train')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=HANG_GUARD_S, check=True
    )
    assert json.loads(result.stdout) == []


def command_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The command path of every parser in the tree, the top one as ``()``."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_parsers(sub, (*path, name))


def parser_at(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def examples(help_text: str) -> list[str]:
    """The command lines under ``Example:``, one a line."""
    after = help_text.split("Example:\n", 1)[1]
    return [line.strip() for line in after.splitlines() if line.startswith("  npcrl ")]


PATHS = sorted(command_parsers(build_parser()))


def test_the_parser_tree_holds_every_command_group() -> None:
    groups = {path[0] for path in PATHS if path}
    assert {"export", "bundle", "logs", "reward-model", "loop", "promote", "simulate", "eval", "quickstart"} <= groups
    assert ("logs", "purge") in PATHS and ("reward-model", "score") in PATHS and ("bundle", "migrate") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "npcrl")
def test_every_help_page_has_an_example_that_parses(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = parser_at(path).format_help()
    assert "Example:" in text
    lines = examples(text)
    assert lines, f"no example command line in:\n{text}"
    for line in lines:
        argv = shlex.split(line)[1:]
        assert tuple(argv[: len(path)]) == path, f"{line!r} is no example of {' '.join(path)}"
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"example {line!r} does not parse: {capsys.readouterr().err}")
        assert callable(args.func)
