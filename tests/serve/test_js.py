"""The JavaScript client (examples/js) passes its Node tests, the last one against a real
``npcrl serve``; the turn it rated is in the server's play log."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from engine_clients import HANG_GUARD_S, REPO, assert_rated_turns_logged, npcrl_serve, require_tool


def node_command(node: str) -> list[str]:
    """``node`` with the flag its version needs for the global WebSocket (built in from Node 22)."""
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    assert major >= 20, f"the JS client needs Node 20 or later for its WebSocket; this is {version}"
    return [node] if major >= 22 else [node, "--experimental-websocket"]


def test_js_client_against_server(tiny_bundle: Path, tmp_path: Path) -> None:
    node = node_command(require_tool("node"))
    report = tmp_path / "report.json"
    with npcrl_serve(tiny_bundle, tmp_path) as server:
        run = subprocess.run(
            [*node, "--test", "--test-reporter=tap", str(REPO / "examples" / "js" / "npcrl-client.test.mjs")],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            env={**os.environ, "NPCRL_URL": server.ws_url, "NPCRL_REPORT": str(report)},
        )
    assert run.returncode == 0, f"node --test exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    assert "\n# skipped 0\n" in run.stdout, f"the test against the server did not run:\n{run.stdout}"
    assert_rated_turns_logged(server.log_dir, json.loads(report.read_text())["rated"])
