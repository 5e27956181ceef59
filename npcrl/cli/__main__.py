"""``python -m npcrl.cli`` runs the command line (used by ``torchrun -m npcrl.cli train``)."""

from npcrl.cli.main import main

if __name__ == "__main__":  # importing the module (e.g. to list the package) runs nothing
    raise SystemExit(main())
