"""``python -m game_demo``: start the demo village."""

import sys

from game_demo.app import main

sys.exit(main())
