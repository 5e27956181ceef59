"""The static map: grass, paths, walls and gate, buildings and trees, drawn once into a surface
that every frame blits instead of redrawing."""

from __future__ import annotations

import math
import random

import pygame

from game_demo.rules.world import Building, Rect, World
from game_demo.view.palette import GRASS, PATH, PATH_EDGE, ROOFS, STONE, STONE_DARK, WALLS, WATER, WOOD


def draw_village(world: World, font: pygame.font.Font) -> pygame.Surface:
    """Everything that never moves, drawn once: grass, paths, walls and gate, buildings, trees."""
    surface = pygame.Surface((int(world.width), int(world.height)))
    surface.fill(GRASS)
    rng = random.Random(7)  # the same grass speckle every run
    for _ in range(900):
        x, y = rng.randrange(int(world.width)), rng.randrange(int(world.height))
        shade = rng.randint(-18, 18)
        pygame.draw.circle(surface, tuple(max(0, min(255, c + shade)) for c in GRASS), (x, y), rng.randint(1, 3))
    for path in world.paths:
        rect = _rect(path)
        pygame.draw.rect(surface, PATH, rect)
        pygame.draw.rect(surface, PATH_EDGE, rect, 2)
    for building in world.buildings:
        _draw_building(surface, building, font)
    _draw_gate(surface, world.gate)
    for tree in world.trees:
        x, y, r = int(tree.x), int(tree.y), int(tree.radius)
        pygame.draw.rect(surface, WOOD, (x - 3, y - 2, 6, 12))
        pygame.draw.circle(surface, (40, 96, 44), (x, y - 6), r)
        pygame.draw.circle(surface, (58, 122, 56), (x - r // 3, y - 6 - r // 3), r // 2)
    return surface


def _rect(rect: Rect) -> pygame.Rect:
    return pygame.Rect(int(rect.x), int(rect.y), int(rect.w), int(rect.h))


def _draw_building(surface: pygame.Surface, building: Building, font: pygame.font.Font) -> None:
    rect = _rect(building.rect)
    if building.kind == "wall":
        pygame.draw.rect(surface, STONE, rect)
        for row, y in enumerate(range(rect.top, rect.bottom, 8)):
            pygame.draw.line(surface, STONE_DARK, (rect.left, y), (rect.right, y))
            for x in range(rect.left + (row % 2) * 12, rect.right, 24):
                pygame.draw.line(surface, STONE_DARK, (x, y), (x, min(y + 8, rect.bottom)))
        pygame.draw.rect(surface, STONE_DARK, rect, 2)
        return
    wall = WALLS.get(building.kind, WALLS["house"])
    roof = ROOFS.get(building.kind, ROOFS["house"])
    roof_height = rect.height * 45 // 100
    pygame.draw.rect(surface, wall, rect)
    pygame.draw.rect(surface, roof, (rect.left - 6, rect.top, rect.width + 12, roof_height))
    for i in range(rect.left - 6, rect.right + 6, 10):  # roof tiles
        pygame.draw.line(surface, tuple(max(0, c - 30) for c in roof), (i, rect.top), (i, rect.top + roof_height))
    door = pygame.Rect(rect.centerx - 10, rect.bottom - 26, 20, 26)
    pygame.draw.rect(surface, WOOD, door)
    for wx in (rect.left + 14, rect.right - 34):
        pygame.draw.rect(surface, (250, 226, 140), (wx, rect.bottom - 34, 20, 16))
        pygame.draw.rect(surface, WOOD, (wx, rect.bottom - 34, 20, 16), 2)
    pygame.draw.rect(surface, (50, 40, 30), rect, 2)
    if building.kind == "forge":
        chimney = pygame.Rect(rect.right - 36, rect.top - 18, 18, 26)
        pygame.draw.rect(surface, STONE_DARK, chimney)
        pygame.draw.circle(surface, (255, 140, 40), (chimney.centerx, chimney.top), 6)
        anvil = pygame.Rect(rect.left + 8, rect.bottom + 4, 24, 10)
        pygame.draw.rect(surface, (60, 60, 66), anvil)
    elif building.kind == "inn":
        sign = pygame.Rect(rect.left - 2, rect.bottom - 50, 44, 18)
        pygame.draw.rect(surface, WOOD, sign)
        pygame.draw.circle(surface, (230, 120, 40), sign.center, 6)  # the fox
    elif building.kind == "mill":
        _draw_water_wheel(surface, rect.right - 22, rect.bottom - 24)
    label = font.render(building.name, True, (255, 255, 240))
    surface.blit(label, (rect.centerx - label.get_width() // 2, rect.top + roof_height // 2 - label.get_height() // 2))


def _draw_water_wheel(surface: pygame.Surface, cx: int, cy: int, radius: int = 17) -> None:
    """The mill's wheel on its east wall, over the millstream running along the wall's foot."""
    pygame.draw.rect(surface, WATER, (cx - radius - 4, cy + radius - 8, 2 * radius + 8, 10))
    pygame.draw.circle(surface, WOOD, (cx, cy), radius)
    pygame.draw.circle(surface, (80, 54, 30), (cx, cy), radius, 2)
    for i in range(8):  # spokes and paddles
        angle = i * math.pi / 4
        end = (cx + round(math.cos(angle) * radius), cy + round(math.sin(angle) * radius))
        pygame.draw.line(surface, (80, 54, 30), (cx, cy), end, 2)
    pygame.draw.circle(surface, STONE_DARK, (cx, cy), 4)  # the axle


def _draw_gate(surface: pygame.Surface, gate: Rect) -> None:
    rect = _rect(gate)
    for x in (rect.left - 6, rect.right - 2):  # posts
        pygame.draw.rect(surface, STONE_DARK, (x, rect.top, 8, rect.height + 8))
    # Open wooden doors folded back against the wall, so the opening reads as a gate.
    for x in (rect.left + 2, rect.right - 14):
        pygame.draw.rect(surface, WOOD, (x, rect.bottom - 2, 12, 16))
        pygame.draw.line(surface, (80, 54, 30), (x, rect.bottom + 6), (x + 12, rect.bottom + 6), 2)
    pygame.draw.arc(surface, STONE_DARK, (rect.left - 6, rect.top - 20, rect.width + 12, 40), 0, math.pi, 3)
