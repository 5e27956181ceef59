"""Drawing: the village, the NPCs and the player, the dialogue panel, the HUD and the stats overlay.

Reads game state, never changes game rules. Kept cheap for 60 fps on a 2-core machine whose
cores are busy generating: the static map is drawn once into a surface, text surfaces are cached
(a streaming line re-renders only its last wrapped line), and wrapping is cached per entry.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pygame

from game_demo.rules.dialogue import Dialogue, Entry, Phase
from game_demo.rules.game import Game
from game_demo.rules.stats import RewardStats
from game_demo.rules.world import World
from game_demo.view.layout import displayable, tail_fitting, wrap_text
from game_demo.view.palette import (
    DIM,
    NOTICE,
    NPC_COLORS,
    NPC_TEXT,
    PLAYER,
    PLAYER_TEXT,
    QUEST,
    TEXT,
    Color,
)
from game_demo.view.village_map import draw_village

PANEL_HEIGHT = 250
PANEL_MARGIN = 10
LINE_HEIGHT = 20
TEXT_CACHE_SIZE = 800


@dataclass(frozen=True)
class HudInfo:
    """What the HUD shows besides game state: filled in by the app each frame."""

    fps: float
    model_source: str
    swap_status: str
    stats: RewardStats | None
    stats_busy: bool
    stats_error: str | None
    log_dir: str


class TextCache:
    """Rendered text surfaces by (font, text, colour), least recently used dropped first."""

    def __init__(self, size: int = TEXT_CACHE_SIZE) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[int, str, Color], pygame.Surface] = OrderedDict()

    def render(self, font: pygame.font.Font, text: str, color: Color) -> pygame.Surface:
        key = (id(font), text, color)
        surface = self._cache.get(key)
        if surface is None:
            surface = font.render(text, True, color)
            self._cache[key] = surface
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return surface


class Renderer:
    def __init__(self, screen: pygame.Surface, world: World) -> None:
        self.screen = screen
        self.world = world
        self.small = pygame.font.Font(None, 20)
        self.body = pygame.font.Font(None, 24)
        self.title = pygame.font.Font(None, 28)
        self.text = TextCache()
        self._wraps: OrderedDict[tuple[str, str, int], list[str]] = OrderedDict()
        self.background = draw_village(world, self.small)
        width, _ = screen.get_size()
        self.panel_rect = pygame.Rect(
            PANEL_MARGIN, screen.get_height() - PANEL_HEIGHT - PANEL_MARGIN, width - 2 * PANEL_MARGIN, PANEL_HEIGHT
        )
        self._panel_bg = _translucent(self.panel_rect.size, (18, 18, 28, 225))
        self._box_bg = _translucent((380, 300), (18, 18, 28, 220))

    # ------------------------------------------------------------------ frame

    def draw(self, game: Game, hud: HudInfo) -> None:
        screen = self.screen
        screen.blit(self.background, (0, 0))
        self._draw_npcs(game)
        self._draw_player(game)
        self._draw_hud(game, hud)
        if game.dialogue is not None:
            self.draw_dialogue(game.dialogue, game)
        if game.stats_visible:
            self._draw_stats(hud)

    def _blit_text(self, font: pygame.font.Font, text: str, color: Color, pos: tuple[int, int]) -> pygame.Rect:
        return self.screen.blit(self.text.render(font, text, color), pos)

    def _draw_npcs(self, game: Game) -> None:
        in_reach = game.npc_in_reach() if game.dialogue is None else None
        for npc in game.npcs:
            x, y = int(npc.spot.x), int(npc.spot.y)
            color = NPC_COLORS.get(npc.id, (180, 180, 180))
            pygame.draw.ellipse(self.screen, (50, 70, 40), (x - 12, y + 6, 24, 10))  # shadow
            pygame.draw.circle(self.screen, color, (x, y), 11)
            pygame.draw.circle(self.screen, (240, 206, 170), (x, y - 4), 6)  # face
            pygame.draw.circle(self.screen, (30, 30, 30), (x, y), 11, 1)
            label = self.text.render(self.small, npc.name, TEXT)
            self.screen.blit(label, (x - label.get_width() // 2, y - 32))
            talking = game.partner is npc and game.dialogue is not None and game.dialogue.npc_busy
            if talking:
                self._speech_bubble(x, y - 44, game.time)
            if npc is in_reach:
                hint = self.text.render(self.small, f"[E] Talk to {npc.name}", NOTICE)
                self.screen.blit(hint, (x - hint.get_width() // 2, y - 50))

    def _speech_bubble(self, x: int, y: int, now: float) -> None:
        pygame.draw.ellipse(self.screen, (250, 250, 250), (x + 8, y - 10, 34, 20))
        dots = 1 + int(now * 3) % 3
        for i in range(dots):
            pygame.draw.circle(self.screen, (60, 60, 60), (x + 16 + 8 * i, y), 2)

    def _draw_player(self, game: Game) -> None:
        x, y = int(game.player.x), int(game.player.y)
        pygame.draw.ellipse(self.screen, (50, 70, 40), (x - 11, y + 5, 22, 9))
        pygame.draw.circle(self.screen, PLAYER, (x, y), 10)
        pygame.draw.circle(self.screen, (20, 40, 80), (x, y), 10, 2)

    def _draw_hud(self, game: Game, hud: HudInfo) -> None:
        model = f"model {game.bundle_id[:8]} ({hud.model_source})"
        if game.swaps:
            model += f"  swaps: {game.swaps}"
        lines = [model] + ([hud.swap_status] if hud.swap_status else [])
        for row, line in enumerate(lines):
            self._blit_text(self.small, line, TEXT, (8, 30 + 18 * row))
        fps = self.text.render(self.small, f"{hud.fps:4.0f} fps", TEXT)
        self.screen.blit(fps, (self.screen.get_width() - fps.get_width() - 8, 30))
        if game.dialogue is None:
            help_text = "Arrows/WASD walk   E talk   Tab reward stats"
            if game.taken_quests:
                help_text += f"   quests taken: {len(game.taken_quests)}"
            self._blit_text(self.small, help_text, TEXT, (8, self.screen.get_height() - 22))

    # ------------------------------------------------------------------ dialogue panel

    def wrapped(self, entry: Entry, name: str, width: int) -> list[str]:
        label = f"{name}: " if entry.speaker == "npc" else "You: "
        text = displayable(entry.text)
        key = (entry.speaker, label + text, width)
        lines = self._wraps.get(key)
        if lines is None:
            lines = wrap_text(label + text, width, lambda s: self.body.size(s)[0])
            self._wraps[key] = lines
            if len(self._wraps) > TEXT_CACHE_SIZE:
                self._wraps.popitem(last=False)
        return lines

    def transcript_lines(self, dialogue: Dialogue, width: int) -> list[tuple[str, Color]]:
        lines: list[tuple[str, Color]] = []
        for entry in dialogue.entries:
            color = NPC_TEXT if entry.speaker == "npc" else PLAYER_TEXT
            lines += [(line, color) for line in self.wrapped(entry, dialogue.npc_name, width)]
        return lines

    def draw_dialogue(self, dialogue: Dialogue, game: Game) -> None:
        panel = self.panel_rect
        self.screen.blit(self._panel_bg, panel.topleft)
        pygame.draw.rect(self.screen, (200, 180, 120), panel, 2, border_radius=6)
        left, top, width = panel.x + 14, panel.y + 10, panel.width - 28
        role = game.partner.role if game.partner is not None else ""
        self._blit_text(self.title, f"{dialogue.npc_name}, {role}" if role else dialogue.npc_name, NOTICE, (left, top))
        if dialogue.offered is not None:
            offer = self.text.render(self.small, f"Quest offered: {dialogue.offered.name}  [Q] accept", QUEST)
            self.screen.blit(offer, (panel.right - offer.get_width() - 14, top + 4))

        lines = self.transcript_lines(dialogue, width - 16)
        scroll = dialogue.scroll
        scroll.update_total(len(lines))
        start, end = scroll.window()
        y = top + 30
        for text, color in lines[start:end]:
            self._blit_text(self.body, text, color, (left, y))
            y += LINE_HEIGHT
        if dialogue.phase is Phase.THINKING:
            dots = "." * (1 + int(game.time * 3) % 3)
            # The thinking line sits right after the NPC's (still empty) label.
            label_width = self.body.size(f"{dialogue.npc_name}: ")[0]
            self._blit_text(self.body, f"thinking{dots}", DIM, (left + label_width, y - LINE_HEIGHT))
        elif dialogue.phase is Phase.SPEAKING and int(game.time * 4) % 2 == 0 and scroll.at_bottom and lines:
            last = lines[-1][0]
            cursor_x = left + self.body.size(last)[0] + 2
            pygame.draw.rect(self.screen, NPC_TEXT, (cursor_x, y - LINE_HEIGHT + 3, 8, 14))
        self._scroll_marks(scroll.can_scroll_up, not scroll.at_bottom, panel.right - 24, top + 30, y)

        row = panel.y + 30 + LINE_HEIGHT * scroll.visible + 16
        pygame.draw.line(self.screen, (90, 90, 110), (left, row - 6), (panel.right - 14, row - 6))
        if dialogue.typing:
            box = pygame.Rect(left, row, width, 26)
            pygame.draw.rect(self.screen, (40, 40, 56), box, border_radius=4)
            pygame.draw.rect(self.screen, PLAYER_TEXT, box, 1, border_radius=4)
            shown = tail_fitting(dialogue.draft, width - 30, lambda s: self.body.size(s)[0])
            caret = "_" if int(game.time * 2) % 2 == 0 else ""
            self._blit_text(self.body, f"> {shown}{caret}", TEXT, (left + 6, row + 5))
        else:
            x = left
            for number, reply in enumerate(dialogue.quick_replies, 1):
                rect = self._blit_text(self.body, f"[{number}] {reply}", PLAYER_TEXT, (x, row + 4))
                x = rect.right + 24
        hint_y = row + 34
        if dialogue.notice:
            self._blit_text(self.small, dialogue.notice, NOTICE, (left, hint_y))
        elif dialogue.typing:
            self._blit_text(self.small, "Enter send   Esc close the reply box   arrows still walk", DIM, (left, hint_y))
        else:
            self._blit_text(
                self.small, "Enter type a reply   1-3 quick reply   +/- rate   Q quest   Esc leave", DIM, (left, hint_y)
            )

    def _scroll_marks(self, up: bool, down: bool, x: int, top: int, bottom: int) -> None:
        if up:
            pygame.draw.polygon(self.screen, DIM, [(x, top + 10), (x + 12, top + 10), (x + 6, top)])
        if down:
            pygame.draw.polygon(self.screen, DIM, [(x, bottom - 10), (x + 12, bottom - 10), (x + 6, bottom)])

    # ------------------------------------------------------------------ overlays

    def _draw_stats(self, hud: HudInfo) -> None:
        x, y = self.screen.get_width() - 390, 56
        lines: list[tuple[str, Color]] = [("Reward stats from the play logs", NOTICE)]
        stats = hud.stats
        if hud.stats_error:
            lines.append((f"failed: {hud.stats_error}", (255, 140, 140)))
        if stats is None:
            lines.append(("computing…" if hud.stats_busy else "no stats yet", DIM))
        else:
            lines += stats_lines(stats)
            if hud.stats_busy:
                lines.append(("updating…", DIM))
        lines.append((f"logs: {hud.log_dir}", DIM))
        lines = lines[:14]
        box = pygame.Rect(x, y, self._box_bg.get_width(), min(self._box_bg.get_height(), 20 * len(lines) + 20))
        self.screen.blit(self._box_bg, box.topleft, area=pygame.Rect((0, 0), box.size))
        pygame.draw.rect(self.screen, (200, 180, 120), box, 2, border_radius=6)
        for row, (text, color) in enumerate(lines):
            shown = tail_fitting(text, 360, lambda s: self.small.size(s)[0]) if text.startswith("logs:") else text
            self._blit_text(self.small, shown, color, (x + 12, y + 10 + 20 * row))


def stats_lines(stats: RewardStats) -> list[tuple[str, Color]]:
    def signed(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.3f}"

    lines: list[tuple[str, Color]] = [
        (f"{stats.conversations} conversations, {stats.turns} turns ({stats.trainable_turns} trainable)", TEXT),
        (f"mean reward {signed(stats.mean_reward)}", TEXT),
        (f"last {stats.recent_turns} turns {signed(stats.recent_mean)}", TEXT),
        ("per NPC:", DIM),
    ]
    lines += [(f"  {npc}: {signed(mean)}", TEXT) for npc, mean in stats.per_npc.items()]
    lines.append(("per model:", DIM))
    lines += [(f"  {bundle[:8]}: {signed(mean)}", TEXT) for bundle, mean in list(stats.per_bundle.items())[-4:]]
    return lines


def _translucent(size: tuple[int, int], rgba: tuple[int, int, int, int]) -> pygame.Surface:
    surface = pygame.Surface(size, pygame.SRCALPHA)
    surface.fill(rgba)
    return surface
