"""The learning loop: rounds of simulate → train → evaluate → promote, their resumable state, and
the promotion store the game hot-swaps bundles from.

Import the modules themselves: ``npcrl.loop.run`` pulls in the trainer (torch), while
``npcrl.loop.promotion`` is torch-free and used by games."""
