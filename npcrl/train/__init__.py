"""Offline PPO from play logs (``npcrl train``). Needs the ``train`` extra (torch, transformers, peft).

Nothing in the game runtime imports this package: it is the only part of npcrl that uses torch.
"""
