"""What runs beside the frame loop: choosing and loading bundles, the hot-swap watcher, persona
prefix warm-up, and starting and stopping the game's background workers. No pygame here."""
