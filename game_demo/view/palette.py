"""The demo's colours."""

from __future__ import annotations

Color = tuple[int, int, int]

GRASS: Color = (86, 138, 70)
PATH: Color = (196, 172, 124)
PATH_EDGE: Color = (160, 136, 92)
STONE: Color = (128, 128, 136)
STONE_DARK: Color = (92, 92, 100)
WOOD: Color = (122, 84, 48)
TEXT: Color = (240, 236, 226)
DIM: Color = (170, 170, 180)
NPC_TEXT: Color = (250, 228, 180)
PLAYER_TEXT: Color = (170, 210, 255)
NOTICE: Color = (255, 214, 90)
QUEST: Color = (140, 230, 140)
PLAYER: Color = (60, 140, 230)
NPC_COLORS: dict[str, Color] = {
    "blacksmith": (150, 78, 40),
    "innkeeper": (196, 86, 140),
    "guard": (70, 92, 168),
    "miller": (208, 172, 70),
}
ROOFS: dict[str, Color] = {
    "house": (150, 60, 50),
    "forge": (70, 64, 64),
    "inn": (110, 70, 40),
    "mill": (176, 150, 80),
}
WALLS: dict[str, Color] = {
    "house": (226, 210, 170),
    "forge": (112, 104, 100),
    "inn": (214, 190, 140),
    "mill": (196, 188, 170),
}
WATER: Color = (70, 130, 190)
