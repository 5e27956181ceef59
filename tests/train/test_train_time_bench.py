"""bench/bench_train_time.py writes each variant's settings as TOML the trainer reads back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from script_modules import load_script

from npcrl.tomlfile import tomllib


def _bench() -> Any:
    return load_script("train_time_bench", "bench/bench_train_time.py")


def test_variant_settings_keep_their_types() -> None:
    toml = _bench().variant_toml("model.pad_shapes=true,model.precision=bf16,ppo.epochs=2,ppo.kl_stop=none", 5)
    assert tomllib.loads(toml) == {
        "ppo": {"iterations": 5, "epochs": 2, "kl_stop": "none"},
        "model": {"pad_shapes": True, "precision": "bf16"},
    }


def test_a_setting_without_a_value_is_refused() -> None:
    with pytest.raises(SystemExit, match="model.pad_shapes"):
        _bench().variant_toml("model.pad_shapes", 5)


FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--out") + 1])
if "fail" in out.name:
    sys.exit(3)
ballast = bytearray(400 * 2**20)  # resident: the bench must see this child's peak
ballast[:: 4096] = b"x" * len(ballast[:: 4096])
(out / "report").mkdir(parents=True)
(out / "report" / "metrics.jsonl").write_text(json.dumps({"iteration": 1}) + "\\n")
(out / "run.json").write_text(json.dumps({"phases_s": {"update": 1.0}}))
"""


def test_a_run_reports_its_own_time_peak_memory_and_records(tmp_path: Path) -> None:
    """Each run's CPU time and peak memory are read for that child (``os.wait4``), and a failed run
    stops the bench. Linux counts a child's peak from the size of the process that started it, so
    only a floor can be checked here (under pytest that process holds the test models)."""
    import subprocess

    root = tmp_path / "checkout"
    (root / "npcrl").mkdir(parents=True)
    (root / "npcrl" / "__init__.py").write_text("")
    (root / "npcrl" / "cli.py").write_text(FAKE_TRAIN)
    config = tmp_path / "a.toml"
    config.write_text("")
    result = _bench().run_train(root, "logs", "bundle", config, tmp_path / "run")
    assert result["metrics"] == [{"iteration": 1}] and result["phases_s"] == {"update": 1.0}
    assert result["peak_rss_gb"] >= 0.40  # 400 MiB = 0.42 GB touched
    assert result["cpu_s"] > 0 and result["wall_s"] > 0
    with pytest.raises(subprocess.CalledProcessError):
        _bench().run_train(root, "logs", "bundle", config, tmp_path / "fail")
