#!/usr/bin/env bash
# Create .venv-trl, a separate environment holding TRL for the PPO comparison benchmark
# (bench/trl_ppo.py). It is kept apart from .venv because TRL pulls in dependencies that the
# product's environment must not carry, and only that benchmark needs it.
# trl is pinned to 1.12.0: the last release that still ships PPO (trl.experimental.ppo).
# transformers, peft and accelerate match the versions in .venv so both sides compare the same
# model code. torch is pinned and installed first: its CPU build is what pip takes for this
# exact version, while an unpinned torch may pull a multi-GB CUDA build as a dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-trl/bin/python ]; then
  "$PYTHON" -m venv .venv-trl
fi
.venv-trl/bin/python -m pip install --quiet --upgrade pip
.venv-trl/bin/python -m pip install --quiet "torch==2.13.0"
.venv-trl/bin/python -m pip install --quiet \
  "transformers==5.23.0" "trl==1.12.0" "peft==0.21.2" "accelerate==1.15.0"
