"""npcrl."""
