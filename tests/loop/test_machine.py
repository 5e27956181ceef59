"""Each loop stage records the machine it ran on, and a round says when the two evaluations it
compares did not run on one kind of machine (the same seeds play other lines where the kernels
round differently)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from npcrl.loop.machine import describe, merged, mixed_machines, numerics, this_machine
from npcrl.loop.state import RoundStages

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8
"""

SAPPHIRE = {
    "cpu": "Intel Xeon",
    "architecture": "x86_64",
    "units": ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"],
    "cores": 2,
    "onnxruntime": "1.32.0",
}
EPYC = {"cpu": "AMD EPYC", "architecture": "x86_64", "units": ["avx2", "fma"], "cores": 2, "onnxruntime": "1.32.0"}


def test_the_machine_record_names_the_cpu_and_the_units_that_pick_kernels(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO, encoding="utf-8")
    record = this_machine(cpuinfo)
    assert record["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert record["units"] == [
        "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    ]  # fmt: skip
    assert record["onnxruntime"] and record["cores"]
    assert json.loads(json.dumps(record)) == record  # a JSON record, as stages.json stores it
    unreadable = this_machine(tmp_path / "missing")  # another OS: no /proc/cpuinfo
    assert unreadable["units"] == [] and unreadable["cpu"]
    assert "avx512_vnni" in describe(SAPPHIRE) and "AMD EPYC" in describe(EPYC)


def test_only_what_changes_the_numbers_makes_machines_differ() -> None:
    renamed = {**SAPPHIRE, "cpu": "another name", "cores": 64}
    assert numerics(renamed) == numerics(SAPPHIRE)
    assert mixed_machines({"current": [SAPPHIRE], "candidate": [renamed]}) is None
    assert numerics({**SAPPHIRE, "onnxruntime": "1.31.0"}) != numerics(SAPPHIRE)  # its kernels change too
    said = mixed_machines({"current": [SAPPHIRE], "candidate": [EPYC]})
    assert said is not None and "current on Intel Xeon" in said and "candidate on AMD EPYC" in said
    # a side resumed elsewhere counts both of its machines
    assert mixed_machines({"current": [EPYC], "candidate": [EPYC, SAPPHIRE]}) is not None
    assert mixed_machines({"current": [], "candidate": [EPYC]}) is None  # recorded before machines were
    assert merged([EPYC], EPYC) == [EPYC] and merged([EPYC], SAPPHIRE) == [EPYC, SAPPHIRE]


def test_a_stage_records_every_machine_it_ran_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import npcrl.loop.state

    monkeypatch.setattr(npcrl.loop.state, "this_machine", lambda: EPYC)
    stages = RoundStages(tmp_path / "round-1")
    assert stages.start("evaluate_candidate")  # cut off: never finished
    monkeypatch.setattr(npcrl.loop.state, "this_machine", lambda: SAPPHIRE)
    resumed = RoundStages(tmp_path / "round-1")
    assert resumed.start("evaluate_candidate")
    resumed.finish("evaluate_candidate", {"rows": 1})
    read_back = RoundStages(tmp_path / "round-1")
    assert read_back.machines("evaluate_candidate") == [EPYC, SAPPHIRE]
    assert read_back.machines("simulate") == []
    read_back.reopen("evaluate_candidate")  # a curve's larger size: the machines stay
    assert RoundStages(tmp_path / "round-1").machines("evaluate_candidate") == [EPYC, SAPPHIRE]


def test_a_round_whose_evaluations_ran_on_different_machines_says_so(
    tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate's evaluation is cut off and resumed on a machine of another kind: the round
    still decides, and its reasons (decision.json, loop.md) say the gain is not the bundles' alone."""
    import npcrl.evaluation.run
    import npcrl.loop.state
    from tests.loop.test_loop import full_tiny_config, tiny_loop

    real_evaluate = npcrl.evaluation.run.evaluate_bundle

    def stop_in_the_candidates(model: Any, log_dir: Path, *args: Any, **kwargs: Any) -> Any:
        if log_dir.name == "candidate":
            raise KeyboardInterrupt
        return real_evaluate(model, log_dir, *args, **kwargs)

    out, config = tmp_path / "loop", full_tiny_config()
    monkeypatch.setattr(npcrl.loop.state, "this_machine", lambda: EPYC)
    monkeypatch.setattr(npcrl.evaluation.run, "evaluate_bundle", stop_in_the_candidates)
    with pytest.raises(KeyboardInterrupt):
        tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2)
    monkeypatch.setattr(npcrl.evaluation.run, "evaluate_bundle", real_evaluate)
    monkeypatch.setattr(npcrl.loop.state, "this_machine", lambda: SAPPHIRE)  # moved to another machine
    (result,) = tiny_loop(tiny_bundles["llama-fp32"], out, config, eval_conversations=2, resume=True)

    stages = json.loads((out / "round-1" / "stages.json").read_text())
    assert stages["evaluate_current"]["machines"] == [EPYC]
    assert stages["evaluate_candidate"]["machines"] == [EPYC, SAPPHIRE]
    mixed = [r for r in result.reasons if r.startswith("the evaluations ran not all on one kind of machine")]
    assert len(mixed) == 1 and "current on AMD EPYC" in mixed[0]
    assert json.loads((out / "round-1" / "decision.json").read_text())["reasons"] == result.reasons
    assert "the evaluations ran not all on one kind of machine" in (out / "loop.md").read_text()
