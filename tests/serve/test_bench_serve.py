"""The ``npcrl serve`` benchmark runs end to end on a tiny bundle with its smallest settings, so
that it keeps working as the server changes: every line arrives, no capacity fallback, and the
server's play log holds exactly the turns and events its clients made (the bench checks these
and exits with status 1 otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("websockets")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 600  # the run takes seconds; this only stops a hung server from stalling the suite


def test_bench_serve_smoke_run_passes_its_checks(tiny_bundle: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "bench_serve.py"), "--bundle", str(tiny_bundle)]
    command += ["--lines", "2", "--max-new-tokens", "4", "--clients", "3", "--seconds", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("TTFT p50 ms", "decode tok/s p50", "lines received / sent", "turns made / logged"):
        assert row in result.stdout
    assert "FAILED" not in result.stdout
