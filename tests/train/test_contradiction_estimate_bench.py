"""bench/contradiction_estimate.py on the toy rejection logs: the policy that wrote them is
estimated at the logged share by both weights, and the share played in the logs is the same."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from script_modules import load_script  # noqa: E402
from toy_logs import write_rejection_logs  # noqa: E402

from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train.policy import resolve_base_weights  # noqa: E402


def test_the_logging_policy_is_estimated_at_its_own_share(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    bench = load_script("contradiction_estimate_bench", "bench/contradiction_estimate.py")
    bundle = tiny_bundles["llama-fp32"]
    write_rejection_logs(bundle, tmp_path / "logs", 60, seed=3)
    weights_dir = resolve_base_weights(load_bundle(bundle), None)  # a policy given as its HF directory
    policies = {"same": (bundle, tmp_path / "logs"), "hf": (weights_dir, None)}
    logged, same, hf = bench.estimate_rows(tmp_path / "logs", bundle, policies, max_turns=None)
    assert hf["exact_estimate"] == pytest.approx(same["exact_estimate"]) and "played" not in hf
    assert 0.0 < logged["estimate"] < 1.0 and logged["first_draws"] == 60
    assert logged["played"] == pytest.approx(logged["estimate"]) and logged["played_turns"] == 60
    # the reference against itself: every weight is exactly 1
    assert same["estimate"] == pytest.approx(logged["estimate"]) and same["ess"] == pytest.approx(60)
    # an fp32 bundle's ONNX graph and its torch weights agree: every weight is ~1
    assert same["bundle_estimate"] == pytest.approx(logged["estimate"], abs=1e-3)
    assert same["exact_estimate"] == pytest.approx(logged["estimate"], abs=1e-3)
    assert same["exact_ess"] == pytest.approx(60, rel=1e-3) and same["exact_zero_weight"] == 0.0
    assert same["played"] == logged["played"]
