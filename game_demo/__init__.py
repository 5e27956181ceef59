"""The npcrl demo game: a small pygame village whose NPCs speak through npcrl's public API.

The playable game is built on the agent and play-log layers; until those land this package holds
no code, so that ``npcrl`` never depends on it.
"""
