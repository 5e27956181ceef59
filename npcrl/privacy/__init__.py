"""Privacy of play logs: what of a player's words and identity reaches the disk.

``npcrl.privacy.scrub`` masks personal data in player text (emails, phone and card numbers, …).
"""
