"""``python -m npcrl.cli`` runs the command line (used by ``torchrun -m npcrl.cli train``)."""

from npcrl.cli.main import main

raise SystemExit(main())
