"""Reward: the reward spec (TOML event weights and bounds) and the credit of engagement events to
the NPC turns they follow."""
