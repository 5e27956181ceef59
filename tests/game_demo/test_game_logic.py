"""The demo game's logic without pygame: world and movement, quests, text layout, the dialogue
state machine and the per-frame game rules (talk, walk-away, hot swap between conversations)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from game_demo.rules.actions import Act, Action
from game_demo.rules.dialogue import Dialogue, Phase
from game_demo.rules.game import LEAVE_RADIUS, MAX_FRAME_DT, TALK_RADIUS, Game
from game_demo.rules.npcs import Npc
from game_demo.rules.quests import offered_quest, quest_title, quests_from_goals
from game_demo.rules.scroll import ScrollWindow
from game_demo.rules.world import Player, Rect, distance, move, nearest_npc, village
from game_demo.view.layout import wrap_text
from npcrl.agent.persona import builtin_personas

LOGIC_MODULES = (
    "rules.actions",
    "rules.dialogue",
    "rules.game",
    "rules.npcs",
    "rules.quests",
    "rules.scroll",
    "rules.stats",
    "rules.world",
    "services.bundles",
    "services.startup",
    "services.swap",
    "services.warmup",
    "view.layout",
)


def test_logic_modules_do_not_import_pygame():
    # In a fresh interpreter: the pygame tests in this session have imported pygame already.
    code = "import sys\n" + "".join(f"import game_demo.{name}\n" for name in LOGIC_MODULES)
    code += "assert 'pygame' not in sys.modules, 'pygame was imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


# ---------------------------------------------------------------------- world and movement


def test_movement_is_timed_by_dt_not_by_frames():
    world = village()
    fast, slow = Player(480, 560), Player(480, 560)
    for _ in range(60):
        move(fast, 0, -1, 1 / 60, world)
    for _ in range(20):
        move(slow, 0, -1, 1 / 20, world)
    assert fast.y == pytest.approx(560 - fast.speed, abs=1e-6)
    assert slow.y == pytest.approx(fast.y, abs=1e-6)


def test_diagonal_is_not_faster_than_straight():
    world = village()
    player = Player(480, 560)
    move(player, 1, -1, 0.1, world)
    travelled = ((player.x - 480) ** 2 + (player.y - 560) ** 2) ** 0.5
    assert travelled == pytest.approx(player.speed * 0.1, rel=1e-6)


def test_buildings_block_and_the_player_slides_along_them():
    world = village()
    forge = next(b for b in world.buildings if b.kind == "forge").rect
    player = Player(forge.x + 60, forge.bottom + 40)  # below the forge, west of Brom
    for _ in range(120):
        move(player, 0, -1, 1 / 60, world)
    assert player.rect.y == pytest.approx(forge.bottom)  # stopped flush against the wall
    x_before = player.x
    for _ in range(10):
        move(player, -1, -1, 1 / 60, world)  # diagonal into the wall: slides west
    assert player.x < x_before
    assert not world.blocked(player.rect)


def test_a_long_frame_cannot_tunnel_through_a_wall():
    world = village()
    wall = next(b for b in world.buildings if b.kind == "wall").rect
    player = Player(200, wall.bottom + 12)
    move(player, 0, -1, 1.0, world)  # 170 px in one step: would jump over a 24 px wall unsplit
    assert player.rect.y >= wall.bottom - 1e-9


def test_player_cannot_leave_the_map():
    world = village()
    player = Player(480, 600)
    for _ in range(300):
        move(player, 0, 1, 1 / 60, world)
    assert player.rect.bottom <= world.height


def _reachable_cells(world: Any, start: tuple[float, float], step: float = 10.0) -> set[tuple[int, int]]:
    seen = {(round(start[0] / step), round(start[1] / step))}
    queue = deque(seen)
    while queue:
        cx, cy = queue.popleft()
        for nx, ny in ((cx + 1, cy), (cx - 1, cy), (cx, cy + 1), (cx, cy - 1)):
            if (nx, ny) in seen:
                continue
            if not world.blocked(Player(nx * step, ny * step).rect):
                seen.add((nx, ny))
                queue.append((nx, ny))
    return seen


def test_every_npc_can_be_reached_from_the_start():
    world = village()
    assert not world.blocked(Player(*world.player_start).rect)
    cells = _reachable_cells(world, world.player_start)
    for spot in world.npcs:
        near = [c for c in cells if ((c[0] * 10 - spot.x) ** 2 + (c[1] * 10 - spot.y) ** 2) ** 0.5 <= TALK_RADIUS]
        assert near, f"no walkable place within talking distance of {spot.persona_id}"


def test_village_has_the_builtin_npcs_at_their_places():
    world = village()
    assert {spot.persona_id for spot in world.npcs} == set(builtin_personas())
    kinds = {b.kind for b in world.buildings}
    assert {"forge", "inn", "mill", "house", "wall"} <= kinds
    forge = next(b for b in world.buildings if b.kind == "forge").rect
    smith = next(s for s in world.npcs if s.persona_id == "blacksmith")
    assert forge.x <= smith.x <= forge.right and smith.y - forge.bottom < 30
    mill = next(b for b in world.buildings if b.kind == "mill").rect
    miller = next(s for s in world.npcs if s.persona_id == "miller")
    assert mill.x <= miller.x <= mill.right and miller.y - mill.bottom < 30
    guard = next(s for s in world.npcs if s.persona_id == "guard")
    assert abs(guard.x - world.gate.center[0]) < 80 and guard.y < 80


def test_npcs_stand_clear_of_buildings_trees_and_each_other():
    world = village()
    obstacles = [b.rect for b in world.buildings] + [t.trunk for t in world.trees]
    for spot in world.npcs:
        assert not any(spot.rect.intersects(rect) for rect in obstacles), spot.persona_id
    for a, b in itertools.combinations(world.npcs, 2):
        # No place is within talking distance of two NPCs: E always means one of them.
        assert distance((a.x, a.y), (b.x, b.y)) > 2 * TALK_RADIUS, (a.persona_id, b.persona_id)


def test_nearest_npc_within_radius_only():
    spots = village().npcs
    smith = next(s for s in spots if s.persona_id == "blacksmith")
    assert nearest_npc((smith.x + 30, smith.y + 30), spots, TALK_RADIUS) is smith
    assert nearest_npc((smith.x + 100, smith.y), spots, TALK_RADIUS) is None


def test_rect_edges_touching_do_not_intersect():
    assert not Rect(0, 0, 10, 10).intersects(Rect(10, 0, 10, 10))
    assert Rect(0, 0, 10, 10).intersects(Rect(9.5, 0, 10, 10))


# ---------------------------------------------------------------------- quests


def test_quests_come_from_the_persona_goals():
    personas = builtin_personas()
    for persona in personas.values():
        quests = quests_from_goals(persona.id, persona.goals)
        assert len(quests) == 2
        assert all(len(q.name) <= 60 and q.name[0].isupper() for q in quests)
    brom = quests_from_goals("blacksmith", personas["blacksmith"].goals)
    assert brom[0].name.startswith("Ride up the north road")
    assert {"iron", "wagon", "greyvein"} <= brom[0].keywords
    assert "charcoal" in brom[1].keywords and "charcoal" not in brom[0].keywords


def test_a_line_offers_the_quest_it_talks_about():
    brom = quests_from_goals("blacksmith", builtin_personas()["blacksmith"].goals)
    line = "No iron from Greyvein for two weeks. Somebody ought to ride up the north road and look."
    assert offered_quest(line, brom) is brom[0]
    assert offered_quest("Bring me charcoal from old Wenna in Ashwood, friend.", brom) is brom[1]
    assert offered_quest("Good steel takes time. Bad steel takes lives.", brom) is None
    assert offered_quest("The iron is hot.", brom) is None  # one shared word is small talk
    assert offered_quest(line, brom, taken={brom[0].name}) is None
    mara = quests_from_goals("innkeeper", builtin_personas()["innkeeper"].goals)
    assert offered_quest("Rats got into my cellar again, dear!", mara) is mara[0]


def test_quest_title_cuts_at_a_word():
    assert quest_title("clear the rats out of the cellar. You will get a room.") == "Clear the rats out of the cellar"
    long = quest_title("walk " * 30)
    assert len(long) <= 60 and long.endswith("…") and not long[:-1].endswith(" ")


# ---------------------------------------------------------------------- layout


def test_wrap_breaks_at_spaces_within_width():
    text = "Hm. Mind the sparks, friend. You after a blade, or just out of the rain?"
    lines = wrap_text(text, 20, len)
    assert all(len(line) <= 20 for line in lines)
    assert " ".join(lines) == text
    assert len(lines) == 4


def test_wrap_splits_words_wider_than_the_panel_and_keeps_newlines():
    lines = wrap_text("a " + "x" * 25 + " b\nc", 10, len)
    assert lines == ["a", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx b", "c"]
    assert wrap_text("", 10, len) == [""]
    with pytest.raises(ValueError):
        wrap_text("x", 0, len)


def test_scroll_window_follows_new_lines_unless_scrolled_up():
    window = ScrollWindow(visible=3)
    window.update_total(10)
    assert window.window() == (7, 10) and window.at_bottom
    window.scroll(4)
    assert window.window() == (3, 6) and window.can_scroll_up
    window.update_total(12)  # text streams in below: the view stays on the same lines
    assert window.window() == (3, 6)
    window.scroll(100)
    assert window.window() == (0, 3) and not window.can_scroll_up
    window.scroll(-100)
    assert window.window() == (9, 12) and window.at_bottom


# ---------------------------------------------------------------------- dialogue


@dataclass
class FakeLine:
    text: str
    turn_index: int
    fallback: bool = False
    filtered: bool = False


class FakePending:
    """A streaming NPC line the test advances by hand."""

    def __init__(self, turn_index: int) -> None:
        self.turn_index = turn_index
        self._pieces: list[str] = []
        self._streamed = False
        self._line: FakeLine | None = None
        self.cancelled = False

    def stream(self, piece: str) -> None:
        self._pieces.append(piece)
        self._streamed = True

    def finish(self, text: str, **flags: bool) -> None:
        self._line = FakeLine(text, self.turn_index, **flags)

    @property
    def started(self) -> bool:
        return self._streamed or self._line is not None

    @property
    def done(self) -> bool:
        return self._line is not None

    def poll(self) -> str:
        new, self._pieces = "".join(self._pieces), []
        return new

    def cancel(self) -> None:
        self.cancelled = True

    def result(self, timeout: float | None = None) -> FakeLine:
        if self._line is None:
            raise TimeoutError
        return self._line


@dataclass
class FakeConversation:
    greeting: str = "Hail, traveller."
    calls: list[tuple[str, Any]] = field(default_factory=list)
    pendings: list[FakePending] = field(default_factory=list)

    def player_typing(self, text: str) -> None:
        self.calls.append(("typing", text))

    def respond_async(self, player_text: str) -> FakePending:
        self.calls.append(("respond", player_text))
        pending = FakePending(len(self.pendings))
        self.pendings.append(pending)
        return pending

    def rate(self, positive: bool) -> None:
        self.calls.append(("rate", positive))

    def accept_quest(self, quest: str) -> None:
        self.calls.append(("quest", quest))

    def walk_away(self) -> None:
        self.calls.append(("walk_away", None))

    def end(self, reason: str = "ended") -> None:
        self.calls.append(("end", reason))


def brom_dialogue(conversation: FakeConversation) -> Dialogue:
    persona = builtin_personas()["blacksmith"]
    return Dialogue(
        conversation, "blacksmith", "Brom", ("Hi", "Work?", "News?"), quests_from_goals("blacksmith", persona.goals)
    )


def test_dialogue_streams_the_line_then_shows_the_final_text():
    conversation = FakeConversation()
    dialogue = brom_dialogue(conversation)
    assert [(e.speaker, e.text) for e in dialogue.entries] == [("npc", "Hail, traveller.")]
    assert dialogue.phase is Phase.LISTENING
    assert dialogue.send("  Can you fix my sword?  ")
    assert conversation.calls == [("respond", "Can you fix my sword?")]
    dialogue.update(0.1)
    assert dialogue.phase is Phase.THINKING  # nothing arrived yet: the panel shows "thinking…"
    pending = conversation.pendings[0]
    pending.stream("Aye, ")
    dialogue.update(0.2)
    assert dialogue.phase is Phase.SPEAKING and dialogue.entries[-1].text == "Aye, "
    pending.stream("bring it here. Player: give me")
    dialogue.update(0.3)
    assert dialogue.entries[-1].text == "Aye, bring it here. Player: give me"
    pending.finish("Aye, bring it here.")  # npcrl trimmed the line
    dialogue.update(0.4)
    last = dialogue.entries[-1]
    assert (last.text, last.revised, last.streaming, last.turn_index) == ("Aye, bring it here.", True, False, 0)
    assert dialogue.phase is Phase.LISTENING


def test_dialogue_refuses_a_second_line_while_the_npc_talks():
    conversation = FakeConversation()
    dialogue = brom_dialogue(conversation)
    dialogue.send("Hello")
    assert not dialogue.send("Hello again")
    assert dialogue.notice == "Brom is still talking."
    dialogue.begin_typing()
    dialogue.type_text("wait for me")
    assert not dialogue.submit() and dialogue.draft == "wait for me"  # the draft is kept
    conversation.pendings[0].finish("Aye.")
    dialogue.update(1.0)
    assert dialogue.submit() and dialogue.draft == "" and not dialogue.typing
    assert [c for c in conversation.calls if c[0] == "respond"] == [("respond", "Hello"), ("respond", "wait for me")]


def test_reply_box_takes_text_only_while_open():
    dialogue = brom_dialogue(FakeConversation())
    dialogue.type_text("ignored")
    assert dialogue.draft == ""
    dialogue.begin_typing()
    dialogue.type_text("Hi\x07 there\u200b")
    assert dialogue.draft == "Hi there"
    dialogue.backspace()
    assert dialogue.draft == "Hi ther"
    dialogue.type_text("x" * 500)
    assert len(dialogue.draft) == 200
    dialogue.cancel_typing()
    assert (dialogue.typing, dialogue.draft) == (False, "")
    # every change of the draft reaches the NPC, so it can prefill the prompt while the player types
    typed = [text for kind, text in dialogue.conversation.calls if kind == "typing"]
    assert typed[:3] == ["Hi there", "Hi ther", "Hi ther" + "x" * 193]
    dialogue.begin_typing()
    assert not dialogue.submit() and not dialogue.typing  # an empty Enter closes the box


def test_rating_goes_to_the_last_finished_line_once():
    conversation = FakeConversation()
    dialogue = brom_dialogue(conversation)
    assert not dialogue.rate(True)  # the greeting is not a model line
    dialogue.send("Hello")
    conversation.pendings[0].finish("Aye.")
    dialogue.update(0.0)
    assert dialogue.rate(True)
    assert not dialogue.rate(False)
    assert [c for c in conversation.calls if c[0] == "rate"] == [("rate", True)]
    dialogue.update(10.0)
    assert dialogue.notice is None  # notices expire
    dialogue.send("And?")
    assert not dialogue.rate(False)  # the next line is on its way: npcrl could attach it there
    assert dialogue.notice == "Wait for Brom to finish."
    conversation.pendings[1].finish("Hm.")
    dialogue.update(11.0)
    assert dialogue.rate(False)
    assert [c for c in conversation.calls if c[0] == "rate"] == [("rate", True), ("rate", False)]


def test_quest_offered_in_a_line_can_be_accepted_once():
    conversation = FakeConversation()
    dialogue = brom_dialogue(conversation)
    assert dialogue.accept_quest() is None
    dialogue.send("Any work?")
    conversation.pendings[0].finish("No wagon from Greyvein. Someone should ride up the north road for the iron.")
    dialogue.update(0.0)
    assert dialogue.offered is not None and dialogue.offered.name.startswith("Ride up the north road")
    quest = dialogue.accept_quest()
    assert quest is not None and ("quest", quest.name) in conversation.calls
    assert dialogue.offered is None and quest.name in dialogue.taken_quests
    dialogue.send("More?")
    conversation.pendings[1].finish("The iron wagon from Greyvein, friend. The north road.")
    dialogue.update(0.0)
    assert dialogue.offered is None  # taken quests are not offered again


@pytest.mark.parametrize(
    ("walked_off", "busy", "expected_call", "reason"),
    [
        (True, False, ("walk_away", None), "walked_away"),
        (False, True, ("walk_away", None), "walked_away"),
        (False, False, ("end", "player_left"), "player_left"),
    ],
)
def test_leaving(walked_off, busy, expected_call, reason):
    conversation = FakeConversation()
    dialogue = brom_dialogue(conversation)
    dialogue.send("Hello")
    if not busy:
        conversation.pendings[0].finish("Aye.")
        dialogue.update(0.0)
    assert dialogue.leave(walked_off) == reason
    assert conversation.calls[-1] == expected_call
    assert dialogue.ended and not dialogue.send("hello?")
    assert dialogue.leave(True) == reason and conversation.calls[-1] == expected_call  # only once


# ---------------------------------------------------------------------- game rules


@dataclass
class FakeAgent:
    conversations: list[FakeConversation] = field(default_factory=list)
    models: list[Any] = field(default_factory=list)
    player_ids: list[str] = field(default_factory=list)

    def start_conversation(self, player_id: str = "player") -> FakeConversation:
        self.player_ids.append(player_id)
        self.conversations.append(FakeConversation())
        return self.conversations[-1]

    def swap_model(self, model: Any) -> None:
        self.models.append(model)

    def warm_up(self) -> Any:
        return None


@dataclass
class FakeSwapper:
    ready: tuple[str, Any] | None = None
    idle_calls: list[bool] = field(default_factory=list)
    status: str = ""

    def set_idle(self, idle: bool) -> None:
        self.idle_calls.append(idle)

    def take_ready(self) -> tuple[str, Any] | None:
        ready, self.ready = self.ready, None
        return ready


@dataclass
class Recorder:
    calls: list[Any] = field(default_factory=list)

    def request(self) -> bool:
        self.calls.append("request")
        return True

    def start(self, agents: Any) -> None:
        self.calls.append(("start", len(agents), agents[0].models[-1]))


def make_game(**kwargs: Any) -> tuple[Game, dict[str, FakeAgent]]:
    world = village()
    personas = builtin_personas()
    agents = {spot.persona_id: FakeAgent() for spot in world.npcs}
    npcs = [
        Npc(spot, personas[spot.persona_id].name, "", agents[spot.persona_id], (), ("a", "b", "c"))
        for spot in world.npcs
    ]
    return Game(world, npcs, bundle_id="old", player_id="p7", **kwargs), agents


def stand_by(game: Game, persona_id: str, dx: float = 25) -> None:
    spot = next(s for s in game.world.npcs if s.persona_id == persona_id)
    game.player.x, game.player.y = spot.x + dx, spot.y + 30


def quick_reply_to(persona_id: str, index: int) -> tuple[Game, FakeConversation]:
    """A new game whose player walks up to ``persona_id``, talks and picks quick reply ``index``;
    returns the game and that NPC's conversation."""
    game, agents = make_game()
    stand_by(game, persona_id)
    game.apply(Action(Act.TALK))
    game.apply(Action(Act.QUICK_REPLY, index=index))
    return game, agents[persona_id].conversations[0]


def test_talk_needs_an_npc_in_reach():
    game, agents = make_game()
    game.apply(Action(Act.TALK))
    assert game.dialogue is None and not any(a.conversations for a in agents.values())
    stand_by(game, "innkeeper")
    game.apply(Action(Act.TALK))
    assert game.dialogue is not None and game.partner is not None and game.partner.id == "innkeeper"
    assert agents["innkeeper"].player_ids == ["p7"]
    game.apply(Action(Act.TALK))  # Enter inside a conversation opens the reply box, not a 2nd talk
    assert game.typing and len(agents["innkeeper"].conversations) == 1


def test_walking_off_ends_the_talk_as_walk_away():
    game, agents = make_game()
    stand_by(game, "blacksmith", dx=40)
    game.apply(Action(Act.TALK))
    conversation = agents["blacksmith"].conversations[0]
    for _ in range(15):  # a quarter second east along the lane: still within the leave radius
        game.update(1 / 60, 1, 0)
    assert game.dialogue is not None
    for _ in range(120):
        game.update(1 / 60, 1, 0)
        if game.dialogue is None:
            break
    assert game.dialogue is None and conversation.calls[-1] == ("walk_away", None)
    smith = next(s for s in game.world.npcs if s.persona_id == "blacksmith")
    gap = ((game.player.x - smith.x) ** 2 + (game.player.y - smith.y) ** 2) ** 0.5
    assert LEAVE_RADIUS < gap < LEAVE_RADIUS + game.player.speed / 60  # ended on the frame it crossed


def test_escape_leaves_the_talk_and_then_closes_the_stats():
    stats = Recorder()
    game, agents = make_game(stats=stats)
    stand_by(game, "guard")
    game.apply(Action(Act.TALK))
    game.apply(Action(Act.TOGGLE_STATS))
    assert game.stats_visible and stats.calls == ["request"]
    game.apply(Action(Act.LEAVE))
    assert game.dialogue is None and agents["guard"].conversations[0].calls[-1] == ("end", "player_left")
    assert game.stats_visible
    game.apply(Action(Act.LEAVE))
    assert not game.stats_visible


def test_dialogue_actions_reach_the_conversation():
    game, conversation = quick_reply_to("blacksmith", 1)
    assert conversation.calls == [("respond", "b")]
    conversation.pendings[0].finish("Aye.")
    game.update(1 / 60, 0, 0)
    game.apply(Action(Act.RATE_DOWN))
    game.apply(Action(Act.START_TYPING))
    for piece in ("Thanks", "!"):
        game.apply(Action(Act.TYPE, text=piece))
    game.apply(Action(Act.SUBMIT))
    # the draft reaches the NPC as it grows (it prefills the prompt), then Enter sends it
    expected = [("rate", False), ("typing", "Thanks"), ("typing", "Thanks!"), ("respond", "Thanks!")]
    assert conversation.calls[1:] == expected


def test_hot_swap_waits_for_the_conversation_to_end():
    swapper, warmer = FakeSwapper(), Recorder()
    game, agents = make_game(swapper=swapper, warmer=warmer)
    stand_by(game, "blacksmith")
    game.apply(Action(Act.TALK))
    swapper.ready = ("new", "MODEL")
    game.update(1 / 60, 0, 0)
    assert swapper.idle_calls[-1] is False and swapper.ready is not None  # not taken mid-conversation
    assert game.bundle_id == "old" and not agents["blacksmith"].models
    game.apply(Action(Act.LEAVE))
    game.update(1 / 60, 0, 0)
    assert swapper.idle_calls[-1] is True
    assert game.bundle_id == "new" and game.swaps == 1
    assert all(agent.models == ["MODEL"] for agent in agents.values())
    assert warmer.calls == [("start", len(agents), "MODEL")]


def test_swap_to_the_running_bundle_is_ignored():
    swapper = FakeSwapper(ready=("old", "SAME"))
    game, agents = make_game(swapper=swapper)
    game.update(1 / 60, 0, 0)
    assert game.swaps == 0 and not any(a.models for a in agents.values())


def test_a_stalled_frame_moves_at_most_max_dt():
    game, _ = make_game()
    y = game.player.y
    game.update(5.0, 0, -1)
    assert y - game.player.y == pytest.approx(game.player.speed * MAX_FRAME_DT)
    assert game.time == pytest.approx(MAX_FRAME_DT)


def test_quit_action():
    game, _ = make_game()
    game.apply(Action(Act.QUIT))
    assert game.quit_requested


def test_closing_the_game_mid_line_cancels_it_without_a_walk_away():
    game, conversation = quick_reply_to("blacksmith", 0)
    pending = conversation.pendings[0]
    game.shutdown()
    assert game.dialogue is None and pending.cancelled
    assert conversation.calls[-1] == ("end", "game_closed") and ("walk_away", None) not in conversation.calls
    assert game.in_flight == [pending]  # the app waits for it before closing the play log
    pending.finish("Hm.", fallback=True)
    game.update(1 / 60, 0, 0)
    assert game.in_flight == []


def test_walking_off_mid_line_keeps_the_line_in_flight():
    game, agents = make_game()
    stand_by(game, "guard")
    game.apply(Action(Act.TALK))
    game.apply(Action(Act.QUICK_REPLY, index=2))
    game.apply(Action(Act.LEAVE))  # Esc while Hedda is still talking: she was cut off
    conversation = agents["guard"].conversations[0]
    assert conversation.calls[-1] == ("walk_away", None)
    assert game.in_flight == [conversation.pendings[0]]
