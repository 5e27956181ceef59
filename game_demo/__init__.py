"""The npcrl demo game: Oakrest, a small pygame village whose NPCs speak through npcrl's public API.

Logic (``world``, ``game``, ``dialogue``, ``quests``, ``layout``) holds no pygame and is tested
headless; ``controls`` and ``render`` are the pygame side; ``app`` runs the frame loop. Start it
with ``python -m game_demo`` (see docs/GAME.md). npcrl never imports this package.
"""

import os

# pygame prints a banner on import; the game's own terminal output is the log lines and messages.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
