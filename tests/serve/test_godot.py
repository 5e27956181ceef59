"""The Godot 3 example (examples/godot) holds a scripted conversation with a real ``npcrl serve``
headless: it exits 0, and its turns and rating are in the server's play log."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from engine_clients import HANG_GUARD_S, REPO, assert_rated_turns_logged, npcrl_serve, require_tool


def godot_dirs(root: Path) -> dict[str, str]:
    """Godot writes its user data, settings and cache under the XDG folders: keep them out of the user's home."""
    return {name: str(root / name.lower()) for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}


def test_godot_scripted_conversation_is_logged(tiny_bundle: Path, tmp_path: Path) -> None:
    godot = require_tool("godot3-server", " (apt-get install godot3-server)")
    with npcrl_serve(tiny_bundle, tmp_path) as server:
        run = subprocess.run(
            [godot, "--path", str(REPO / "examples" / "godot"), "--npcrl-scripted", f"--npcrl-url={server.ws_url}"],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            env={**os.environ, **godot_dirs(tmp_path), "NPCRL_TIMEOUT": str(HANG_GUARD_S)},
        )
    assert run.returncode == 0, f"godot exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    rated = re.findall(r"^npcrl: recorded rating for turn (\S+)$", run.stdout, re.MULTILINE)
    assert len(re.findall(r"^npcrl: turn ", run.stdout, re.MULTILINE)) == 3, run.stdout
    assert_rated_turns_logged(server.log_dir, rated)
