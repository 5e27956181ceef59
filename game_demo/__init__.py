"""The npcrl demo game: Oakrest, a small pygame village whose NPCs speak through npcrl's public API.

``rules`` (the game's state and rules) and ``services`` (bundles, hot swap, warm-up, starting
and stopping the workers) hold no pygame and are tested headless; ``view`` is the pygame side
(input, layout, drawing, the frame loop). Start it with ``python -m game_demo`` (see
docs/GAME.md). npcrl never imports this package.
"""

import os

# pygame prints a banner on import; the game's own terminal output is the log lines and messages.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
