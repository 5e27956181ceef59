#!/usr/bin/env bash
# Create .venv and install npcrl with every extra. torch is pinned and installed first: its
# CPU build is what pip takes for this exact version, while an unpinned torch may pull a
# multi-GB CUDA build as a dependency of the train extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[train,game,serve,dev]"
