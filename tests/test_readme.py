"""The code in README.md's "Add a talking NPC to your game" runs as written: on the real default
bundle (``real_model``), and on every run with the default bundle path pointed at a tiny bundle."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from npcrl.paths import default_bundle_dir
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, read_log_dir
from npcrl.runtime.bundle_migrate import migrate_if_old

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Add a talking NPC to your game"


def snippet() -> str:
    """The first Python block of the section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block in README.md's {SECTION!r}"
    return match.group(1)


def run_snippet(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """Run the snippet in ``workdir``; returns the records it logged."""
    monkeypatch.chdir(workdir)
    exec(compile(snippet(), str(README), "exec"), {"__name__": "readme_snippet"})
    return list(read_log_dir(workdir / "playlogs"))


def check_conversation(records: list, printed: str) -> None:
    kinds = [type(r) for r in records]
    assert kinds[0] is ConversationStart and kinds[-1] is ConversationEnd
    turns = [r for r in records if isinstance(r, NpcTurn)]
    assert len(turns) == 1 and turns[0].text and turns[0].text in printed  # the NpcLine's .text was shown
    assert [(r.kind, r.value) for r in records if isinstance(r, EngagementEvent)] == [("rating", 1.0)]
    assert records[-1].reason == "ended"


def test_the_snippet_is_short() -> None:
    assert len(snippet().strip().splitlines()) <= 15


def test_the_snippet_runs_on_a_tiny_default_bundle(tiny_bundles, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NPCRL_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(tiny_bundles["llama-fp32"], default_bundle_dir())
    records = run_snippet(tmp_path, monkeypatch)
    check_conversation(records, capsys.readouterr().out)


@pytest.mark.real_model
def test_the_snippet_runs_on_the_real_default_bundle(tmp_path, monkeypatch, capsys) -> None:
    from exporters.export import export_bundle
    from exporters.fetch import fetch_default_model

    path = default_bundle_dir()
    migrate_if_old(path)  # a cache exported by an earlier npcrl
    if not (path / "manifest.json").is_file():
        export_bundle(fetch_default_model(), path, quant="q8")
    # The snippet's sampler is unseeded; seeded here so the check below cannot fail by chance
    # (the agent falls back when every sample contradicts the card: a few turns in a hundred).
    import npcrl
    from npcrl.agent.config import AgentConfig, with_sampler

    agent = npcrl.NpcAgent
    monkeypatch.setattr(npcrl, "NpcAgent", lambda *a, **k: agent(*a, config=with_sampler(AgentConfig(), seed=1), **k))
    records = run_snippet(tmp_path, monkeypatch)
    check_conversation(records, capsys.readouterr().out)
    turn = next(r for r in records if isinstance(r, NpcTurn))
    assert not turn.fallback, turn.filter_reason  # the real model answers in character
