"""The demo game's real pygame loop, headless (SDL dummy driver), driven by injected events on tiny
bundles: a scripted session checked against the play log, a dialogue screenshot, a hot swap
between conversations, the first-start message, and the command-line entry points."""

from __future__ import annotations

import os

os.environ["SDL_VIDEODRIVER"] = "dummy"  # before pygame is imported: no window, no audio device
os.environ["SDL_AUDIODRIVER"] = "dummy"

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pygame
import pytest

from game_demo.app import main
from game_demo.cli import GameOptions, parse_args
from game_demo.rules.dialogue import Phase
from game_demo.services.startup import session_options
from game_demo.view.app import App
from game_demo.view.clock import EventQueue, FixedClock
from game_demo.view.controls import Controls
from game_demo.view.render import Renderer
from npcrl.agent.npc_agent import AgentConfig, NpcAgent
from npcrl.agent.persona import Persona
from npcrl.loop.promotion import promote
from npcrl.paths import default_key_path
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter, read_log_dir
from npcrl.privacy.pseudonym import load_key, pseudonym
from npcrl.runtime.model import OnnxCausalLM, SessionOptions
from npcrl.runtime.sampler import SamplerConfig

FRAME_LIMIT = 4000  # frames to wait for a tiny-model line; each frame sleeps 1 ms, so a few seconds


def tiny_agent(model: OnnxCausalLM, persona: Persona, writer: PlayLogWriter) -> NpcAgent:
    """The shipped persona prompts overflow the tiny models' 256 positions; a one-line system
    prompt lets them generate real (random) text instead of falling back."""
    config = AgentConfig(sampler=SamplerConfig(temperature=1.0, seed=1, max_new_tokens=16), prompt_token_budget=200)
    return NpcAgent(model, persona, log_writer=writer, config=config, system_prompt=f"You are {persona.name}.")


def key_down(key: int, unicode: str = "") -> pygame.event.Event:
    return pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode=unicode, scancode=0)


def key_up(key: int) -> pygame.event.Event:
    return pygame.event.Event(pygame.KEYUP, key=key, mod=0, unicode="", scancode=0)


def press(queue: EventQueue, key: int, unicode: str = "") -> None:
    queue.push(key_down(key, unicode), key_up(key))


def type_keys(queue: EventQueue, text: str) -> None:
    """What SDL sends for typing: KEYDOWN, TEXTINPUT, KEYUP per character."""
    for ch in text:
        key = ord(ch.lower()) if ch.isascii() else 0
        queue.push(key_down(key, ch), pygame.event.Event(pygame.TEXTINPUT, text=ch), key_up(key))


def walk(app: App, queue: EventQueue, x: float | None = None, y: float | None = None) -> None:
    """Hold an arrow key until the player is at ``x`` (then ``y``), like a player would."""
    player = app.game.player
    for axis, target, less, more in (("x", x, pygame.K_LEFT, pygame.K_RIGHT), ("y", y, pygame.K_UP, pygame.K_DOWN)):
        if target is None:
            continue
        key = less if getattr(player, axis) > target else more
        queue.push(key_down(key))
        assert app.run_until(lambda a, axis=axis, target=target: abs(getattr(a.game.player, axis) - target) < 3, 600)
        queue.push(key_up(key))
        app.run(1)


def walk_to_npc(app: App, queue: EventQueue, persona_id: str) -> None:
    routes = {"blacksmith": (225, 335), "innkeeper": (715, 335)}
    if persona_id == "guard":
        walk(app, queue, y=60)
        walk(app, queue, x=510)
    else:
        walk(app, queue, y=335)
        walk(app, queue, x=routes[persona_id][0])
    near = app.game.npc_in_reach()
    assert near is not None and near.id == persona_id


def npc_line_finished(count: int) -> Callable[[App], bool]:
    """The dialogue shows ``count`` finished NPC lines (greeting not counted)."""

    def check(app: App) -> bool:
        dialogue = app.game.dialogue
        if dialogue is None or dialogue.phase is not Phase.LISTENING:
            return False
        return sum(1 for e in dialogue.entries if e.speaker == "npc" and e.turn_index is not None) == count

    return check


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[App, EventQueue]]]:
    monkeypatch.setenv("NPCRL_CACHE_DIR", str(tmp_path / "cache"))  # no real bundle: the tests pick theirs
    apps: list[App] = []

    def make(**changes: Any) -> tuple[App, EventQueue]:
        options = GameOptions(logs=tmp_path / "logs", store=tmp_path / "store", **changes)
        queue = EventQueue()
        app = App(options, events=queue, clock=FixedClock(sleep_s=0.001), agent_factory=tiny_agent)
        apps.append(app)
        return app, queue

    yield make
    for app in apps:
        app.close()


def records(log_dir: Path) -> list[Any]:
    return list(read_log_dir(log_dir))


# ---------------------------------------------------------------------- a scripted session


def test_scripted_session_is_logged_turn_by_turn(make_app, tiny_bundles, tmp_path):
    app, queue = make_app(bundle=tiny_bundles["llama-fp32"])
    assert app.message is None and app.model_source == "--bundle"
    walk_to_npc(app, queue, "blacksmith")
    press(queue, pygame.K_e, "e")
    app.run(1)
    dialogue = app.game.dialogue
    assert dialogue is not None and dialogue.npc_name == "Brom"
    assert dialogue.entries[0].text == app.game.partner.agent.persona.greeting

    # Turn 0: Enter opens the reply box; the typed letters include s, d and w, which must not walk.
    position = app.game.player.pos
    press(queue, pygame.K_RETURN)
    type_keys(queue, "Hello smith, how goes the work?")
    press(queue, pygame.K_RETURN)
    assert app.run_until(npc_line_finished(1), FRAME_LIMIT)
    assert app.game.player.pos == position
    assert [e.text for e in dialogue.entries if e.speaker == "player"] == ["Hello smith, how goes the work?"]
    press(queue, pygame.K_MINUS, "-")  # rate turn 0 down

    # Turn 1: a quick reply, then rate it up with "+" (the "=" key).
    press(queue, pygame.K_2, "2")
    assert app.run_until(npc_line_finished(2), FRAME_LIMIT)
    press(queue, pygame.K_EQUALS, "=")
    app.run(1)
    shown = [e.text for e in dialogue.entries if e.speaker == "npc" and e.turn_index is not None]

    # Walk away east along the lane.
    queue.push(key_down(pygame.K_RIGHT))
    assert app.run_until(lambda a: a.game.dialogue is None, 600)
    queue.push(key_up(pygame.K_RIGHT))
    app.run(1)
    app.close()

    log = records(tmp_path / "logs")
    starts = [r for r in log if isinstance(r, ConversationStart)]
    assert (
        len(starts) == 1
        and starts[0].npc_id == "blacksmith"
        and starts[0].player_id == pseudonym("player", load_key(default_key_path()))
    )
    cid = starts[0].conversation_id
    turns = [r for r in log if isinstance(r, NpcTurn)]
    assert [(t.turn_index, t.player_text) for t in turns] == [
        (0, "Hello smith, how goes the work?"),
        (1, "Is there work for me?"),
    ]
    assert [t.text for t in turns] == shown  # the player saw exactly the logged final lines
    assert all(t.conversation_id == cid and t.bundle_id == starts[0].bundle_id for t in turns)
    events = [(e.turn_index, e.kind, e.value) for e in log if isinstance(e, EngagementEvent)]
    assert (0, "rating", -1.0) in events and (1, "rating", 1.0) in events
    assert [e[:2] for e in events if e[1] == "reply"] == [(0, "reply")]
    assert events[-1][:2] == (1, "walk_away")
    ends = [r for r in log if isinstance(r, ConversationEnd)]
    assert [(e.conversation_id, e.reason) for e in ends] == [(cid, "walked_away")]


def test_dialogue_panel_screenshot_has_text(make_app, tiny_bundles, tmp_path):
    app, queue = make_app(bundle=tiny_bundles["llama-fp32"])
    walk_to_npc(app, queue, "innkeeper")
    before = app.screen.copy()
    press(queue, pygame.K_e, "e")
    press(queue, pygame.K_1, "1")
    assert app.run_until(npc_line_finished(1), FRAME_LIMIT)
    app.run(1)
    path = tmp_path / "dialogue.png"
    pygame.image.save(app.screen, str(path))
    shot = pygame.image.load(str(path))
    panel = app.renderer.panel_rect
    pixels = pygame.surfarray.array3d(shot.subsurface(panel))
    colours = {tuple(int(c) for c in p) for p in pixels.reshape(-1, 3)[::3]}
    assert len(colours) > 100  # anti-aliased text in several colours, not a flat box
    bright = ((pixels.min(axis=2) > 150) | (pixels[:, :, 0] > 200)).sum()
    assert bright > 2000  # text pixels: greeting, player line, NPC line, quick replies, hints
    old = pygame.surfarray.array3d(before.subsurface(panel))
    assert (old != pixels).any(axis=2).mean() > 0.5  # the panel covers the map


def test_wrapped_transcript_never_exceeds_the_panel(make_app, tiny_bundles):
    app, queue = make_app(bundle=tiny_bundles["llama-fp32"])
    walk_to_npc(app, queue, "guard")
    press(queue, pygame.K_e, "e")
    app.run(1)
    dialogue = app.game.dialogue
    # A random byte-level model emits control bytes too; a NUL would make pygame's font raise.
    dialogue.entries[0].text = "Halt!\x00\x1b " + "x" * 400 + " and " + "long words " * 40
    renderer: Renderer = app.renderer
    width = renderer.panel_rect.width - 44
    lines = renderer.transcript_lines(dialogue, width)
    assert len(lines) > 5
    assert all(renderer.body.size(text)[0] <= width for text, _ in lines)
    assert lines[0][0] == "Captain Hedda: Halt!"  # control bytes dropped, not drawn
    app.run(1)  # and it draws, scrolled to the newest line
    assert dialogue.scroll.at_bottom and dialogue.scroll.can_scroll_up
    queue.push(pygame.event.Event(pygame.MOUSEWHEEL, x=0, y=1, flipped=False))
    app.run(1)
    assert not dialogue.scroll.at_bottom


# ---------------------------------------------------------------------- hot swap


def test_hot_swap_between_conversations(make_app, tiny_bundles, tmp_path):
    store = tmp_path / "store"
    first = promote(store, tiny_bundles["llama-fp32"])
    app, queue = make_app(swap_poll_s=0.02)
    assert app.model_source == "store" and app.game.bundle_id == first.bundle_id
    walk_to_npc(app, queue, "blacksmith")
    press(queue, pygame.K_e, "e")
    press(queue, pygame.K_1, "1")
    assert app.run_until(npc_line_finished(1), FRAME_LIMIT)

    second = promote(store, tiny_bundles["llama-q8"])
    assert second.bundle_id != first.bundle_id
    app.run(150)  # many store polls' worth of frames while the conversation is open
    assert app.game.bundle_id == first.bundle_id and app.swapper.status == ""

    press(queue, pygame.K_ESCAPE)
    assert app.run_until(lambda a: a.game.bundle_id == second.bundle_id, FRAME_LIMIT)
    assert app.game.swaps == 1
    press(queue, pygame.K_e, "e")
    press(queue, pygame.K_3, "3")
    assert app.run_until(npc_line_finished(1), FRAME_LIMIT)
    press(queue, pygame.K_ESCAPE)
    app.run(1)
    app.close()

    log = records(tmp_path / "logs")
    starts = [r.bundle_id for r in log if isinstance(r, ConversationStart)]
    assert starts == [first.bundle_id, second.bundle_id]
    assert [r.bundle_id for r in log if isinstance(r, NpcTurn)] == [first.bundle_id, second.bundle_id]
    assert [r.reason for r in log if isinstance(r, ConversationEnd)] == ["player_left", "player_left"]


# ---------------------------------------------------------------------- stats overlay


def test_stats_overlay_is_computed_in_the_background(make_app, tiny_bundles):
    app, queue = make_app(bundle=tiny_bundles["llama-fp32"])
    walk_to_npc(app, queue, "blacksmith")
    press(queue, pygame.K_e, "e")
    press(queue, pygame.K_1, "1")
    assert app.run_until(npc_line_finished(1), FRAME_LIMIT)
    press(queue, pygame.K_EQUALS, "=")
    press(queue, pygame.K_TAB)
    assert app.run_until(lambda a: a.stats.result is not None and not a.stats.busy, FRAME_LIMIT)
    stats = app.stats.result
    assert stats.turns == 1 and stats.conversations == 1
    assert stats.mean_reward == pytest.approx(0.5)  # one rating of +1 at weight 0.5
    assert app.game.stats_visible


# ---------------------------------------------------------------------- first start and entry points


def test_first_start_without_a_model_shows_the_command_and_exits(make_app, tmp_path):
    app, queue = make_app()
    assert app.game is None and app.exit_code == 1
    assert any(line.strip() == "npcrl quickstart" for line in app.message)
    assert app.step()  # the message stays up until a key is pressed
    lit = pygame.surfarray.array3d(app.screen).max(axis=2) > 200
    assert lit.sum() > 1000  # the message is drawn
    press(queue, pygame.K_SPACE, " ")
    assert not app.step()
    assert not (tmp_path / "logs").exists()  # nothing was played, nothing logged


def test_a_broken_bundle_is_reported_not_raised(make_app, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    app, _ = make_app(bundle=broken)
    assert app.game is None and app.exit_code == 1
    assert app.message[0] == "The game cannot start:" and str(broken) in app.message[1]


def test_main_runs_frames_and_closes_the_log(tiny_bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("NPCRL_CACHE_DIR", str(tmp_path / "cache"))
    logs = tmp_path / "logs"
    argv = ["--bundle", str(tiny_bundles["gpt2-fp32"]), "--logs", str(logs), "--store", str(tmp_path / "s")]
    assert main([*argv, "--frames", "5", "--threads", "1", "--no-spin"]) == 0
    assert list(logs.glob("*.npl"))  # the writer created and closed its file
    assert records(logs) == []  # no conversation happened


def test_session_options_leave_a_core_to_the_frame_loop_on_small_machines():
    auto = GameOptions()
    assert session_options(auto, cores=2) == SessionOptions(intra_op_threads=1, allow_spinning=False)
    assert session_options(auto, cores=4) == SessionOptions(intra_op_threads=None, allow_spinning=True)
    explicit = parse_args(["--threads", "2", "--spin"])
    assert session_options(explicit, cores=2) == SessionOptions(intra_op_threads=2, allow_spinning=True)
    assert parse_args(["--no-spin"]).spin is False and parse_args([]).spin is None


def test_main_without_a_model_prints_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPCRL_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["--store", str(tmp_path / "s"), "--logs", str(tmp_path / "l"), "--frames", "2"]) == 1
    assert "npcrl quickstart" in capsys.readouterr().err


def test_python_dash_m_game_demo_help():
    result = subprocess.run(
        [sys.executable, "-m", "game_demo", "--help"], capture_output=True, text=True, timeout=600, check=True
    )
    assert "--bundle" in result.stdout and "--logs" in result.stdout and "--store" in result.stdout


def test_npcrl_never_imports_pygame_and_the_game_never_imports_torch():
    code = (
        "import sys, importlib, pkgutil, npcrl\n"
        "for m in pkgutil.walk_packages(npcrl.__path__, 'npcrl.'):\n"
        "    if m.name.startswith(('npcrl.cli.main', 'npcrl.cli.__main__', 'npcrl.train')): continue\n"
        "    importlib.import_module(m.name)\n"
        "assert 'pygame' not in sys.modules, 'npcrl imported pygame'\n"
        "assert 'torch' not in sys.modules, 'npcrl outside npcrl.train imported torch'\n"
        "import game_demo.app\n"
        "assert 'torch' not in sys.modules, 'the game imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


# ---------------------------------------------------------------------- controls


def test_letters_are_commands_outside_the_reply_box_and_text_inside_it():
    controls = Controls()
    acts = lambda event, typing: [a.act.value for a in controls.handle(event, typing=typing, in_dialogue=True)]  # noqa: E731
    text_q = pygame.event.Event(pygame.TEXTINPUT, text="q")
    assert acts(key_down(pygame.K_q, "q"), False) == ["accept_quest"]
    assert acts(text_q, False) == []
    assert acts(key_down(pygame.K_q, "q"), True) == []
    assert [a.text for a in controls.handle(text_q, typing=True, in_dialogue=True)] == ["q"]
    assert acts(key_down(pygame.K_RETURN), False) == ["talk"]
    assert acts(key_down(pygame.K_RETURN), True) == ["submit"]
    assert acts(key_down(pygame.K_ESCAPE), True) == ["cancel_typing"]
    assert acts(key_down(pygame.K_ESCAPE), False) == ["leave"]
    assert acts(key_down(pygame.K_KP_PLUS), False) == ["rate_up"]
    assert acts(key_down(pygame.K_3), False) == ["quick_reply"]


def test_held_keys_make_the_move_vector():
    controls = Controls()
    for key in (pygame.K_RIGHT, pygame.K_w):
        controls.handle(key_down(key), typing=False, in_dialogue=False)
    assert controls.move_vector() == (1, -1)
    controls.handle(key_down(pygame.K_a), typing=True, in_dialogue=True)  # a letter while typing
    assert controls.move_vector() == (1, -1)
    controls.handle(key_up(pygame.K_w), typing=False, in_dialogue=False)
    assert controls.move_vector() == (1, 0)
    controls.handle(pygame.event.Event(pygame.WINDOWFOCUSLOST), typing=False, in_dialogue=False)
    assert controls.move_vector() == (0, 0)
