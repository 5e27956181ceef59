"""The game's rules and state: the village, movement, NPCs, quests, conversations, a frame's
actions and the reward stats. Pure Python: nothing here imports pygame (a test checks)."""
