"""``model.precision = "bf16"``: the transformer body runs in bfloat16 under CPU autocast, the
log-prob arithmetic stays float32, and the toy reward is still learned."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from toy_logs import target_rate, toy_config  # noqa: E402

from npcrl.errors import TrainConfigError  # noqa: E402
from tests.train.test_train import make_trainer, toy  # noqa: E402,F401  (its toy logs fixture)


def bf16(config: Any) -> Any:
    return replace(config, model=replace(config.model, precision="bf16")).validate()


def with_spec(config: Any, toy_run: dict[str, Any]) -> Any:
    """The config's data section reading the toy reward spec (as ``npcrl train --config`` would)."""
    return replace(config.data, reward_spec=str(toy_run["spec"]))


def test_bf16_runs_the_body_in_bfloat16_and_keeps_float32_log_probs(toy: dict[str, Any]) -> None:  # noqa: F811
    exact = make_trainer(toy, toy_config("lora", iterations=1))
    fast = make_trainer(toy, bf16(toy_config("lora", iterations=1)))
    turns = exact.rollout_turns(0)
    a, b = exact.score(turns), fast.score(turns)
    assert a.old_logprobs.dtype == b.old_logprobs.dtype == torch.float32
    mask = a.batch.mask.bool()
    gap = (a.old_logprobs - b.old_logprobs)[mask].abs()
    assert float(gap.max()) > 0.0  # another precision really ran
    assert float(gap.mean()) < 0.05, float(gap.mean())  # and only rounding moved the log-probs
    # before the first update the policy is the reference in both: its ratio and KL start exact
    assert torch.equal(b.ref_logprobs, b.old_logprobs) and float(b.kl.abs().max()) == 0.0


def test_the_toy_reward_is_learned_in_bf16(toy: dict[str, Any]) -> None:  # noqa: F811
    trainer = make_trainer(toy, bf16(toy_config("lora", kl_target=3.0, kl_horizon=200)))
    base_rate = target_rate(trainer, toy, reference=True)
    for _ in range(9):
        trainer.run_iteration()
    assert target_rate(trainer, toy) > 2.5 * base_rate
    assert all(torch.isfinite(p).all() for _, p in trainer.policy.trainable_parameters())
    assert all(p.dtype == torch.float32 for _, p in trainer.policy.trainable_parameters())


def test_an_unknown_precision_is_refused_naming_the_field(tmp_path: Path) -> None:
    from npcrl.train.config import load_train_config

    path = tmp_path / "train.toml"
    path.write_text('[model]\nprecision = "fp16"\n', encoding="utf-8")
    with pytest.raises(TrainConfigError, match="model.precision"):
        load_train_config(path)


def test_auto_takes_bf16_only_where_the_cpu_multiplies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from npcrl.train import cpu_precision

    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: True)
    assert [cpu_precision.resolve_precision(p) for p in ("auto", "bf16", "fp32")] == ["bf16", "bf16", "fp32"]
    assert cpu_precision.precision_warning("bf16", "bf16") is None
    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: False)
    assert [cpu_precision.resolve_precision(p) for p in ("auto", "bf16", "fp32")] == ["fp32", "bf16", "fp32"]
    # an explicit bf16 is honoured, but said to be slow here; auto and fp32 have nothing to warn of
    warning = cpu_precision.precision_warning("bf16", "bf16")
    assert warning is not None and "model.precision" in warning and "'auto'" in warning
    assert cpu_precision.precision_warning("auto", "fp32") is None
    assert cpu_precision.precision_warning("fp32", "fp32") is None
    # a resumed auto run that started in bf16 elsewhere keeps it, and is told what that costs here
    kept = cpu_precision.precision_warning("auto", "bf16")
    assert kept is not None and "resumed run keeps it" in kept and "new run started here trains in fp32" in kept
    with pytest.raises(ValueError, match="model.precision"):
        cpu_precision.resolve_precision("fp16")


def test_the_probe_agrees_with_the_cpus_own_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux x86 the kernel lists the CPU's bfloat16 units; the probe must see the same."""
    from npcrl.train.cpu_precision import NATIVE_BF16_ENV, native_bf16

    monkeypatch.delenv(NATIVE_BF16_ENV)  # the suite's override (conftest): this test is of the probe

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags: set[str] = set()
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx2" not in flags:
        pytest.skip("not an x86 CPU that torch probes the same way")
    if "avx512_bf16" in flags:
        assert native_bf16()
    elif not flags & {"amx_bf16", "amx_tile"}:
        assert not native_bf16()  # e.g. AVX2 only: bf16 would be emulated


def test_the_environment_can_say_what_auto_means(monkeypatch: pytest.MonkeyPatch) -> None:
    from npcrl.train import cpu_precision

    monkeypatch.setenv(cpu_precision.NATIVE_BF16_ENV, "1")
    assert cpu_precision.resolve_precision("auto") == "bf16"
    monkeypatch.setenv(cpu_precision.NATIVE_BF16_ENV, "0")
    assert cpu_precision.resolve_precision("auto") == "fp32"
    monkeypatch.setenv(cpu_precision.NATIVE_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="NPCRL_NATIVE_BF16 must be 0 or 1"):
        cpu_precision.native_bf16()


@pytest.mark.parametrize("native", [True, False])
def test_a_run_with_auto_trains_in_what_this_cpu_resolves_and_records_it(
    toy: dict[str, Any],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    native: bool,
) -> None:
    from npcrl.train import cpu_precision
    from npcrl.train.config import load_train_config
    from npcrl.train.run import train

    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: native)
    path = tmp_path / "train.toml"
    path.write_text('[model]\nprecision = "auto"\n', encoding="utf-8")
    assert load_train_config(path).model.precision == "auto"
    config = toy_config("lora", iterations=1)
    config = replace(config, model=replace(config.model, precision="auto"), data=with_spec(config, toy))
    train(toy["logs"], toy["bundle"], tmp_path / "run", config, progress=False)
    expected = "bf16" if native else "fp32"
    provenance = json.loads((tmp_path / "run" / "report" / "provenance.json").read_text())
    assert provenance["precision"] == expected and provenance["config"]["model"]["precision"] == "auto"
    assert f"parameters in {expected} (model.precision = 'auto'" in capsys.readouterr().out


def test_an_explicit_bf16_on_a_cpu_without_it_is_run_and_warned_of(
    toy: dict[str, Any],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from npcrl.train import cpu_precision
    from npcrl.train.run import train

    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: False)
    config = bf16(toy_config("lora", iterations=1))
    config = replace(config, data=with_spec(config, toy))
    train(toy["logs"], toy["bundle"], tmp_path / "run", config, progress=False)
    assert json.loads((tmp_path / "run" / "report" / "provenance.json").read_text())["precision"] == "bf16"
    assert "warning: model.precision = 'bf16' on a CPU without bfloat16 units" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["interrupted", "extended"])
def test_a_resumed_run_keeps_the_precision_it_started_in_on_another_cpu(
    toy: dict[str, Any],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    """A run started with "auto" on a CPU with bfloat16 units and resumed on one without goes on in
    bf16 (a resumed run must end where an uninterrupted one would), and says what that costs."""
    from npcrl.train import cpu_precision
    from npcrl.train.ppo import PPOTrainer
    from npcrl.train.run import train

    config = toy_config("lora", iterations=2)
    config = replace(
        config,
        model=replace(config.model, precision="auto"),
        data=with_spec(config, toy),
        run=replace(config.run, checkpoint_every=1),
    ).validate()
    out = tmp_path / "run"
    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: True)
    if how == "interrupted":  # killed after iteration 1's checkpoint
        real_iteration, calls = PPOTrainer.run_iteration, []

        def stop_at_the_second(self: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_iteration(self)

        monkeypatch.setattr(PPOTrainer, "run_iteration", stop_at_the_second)
        with pytest.raises(KeyboardInterrupt):
            train(toy["logs"], toy["bundle"], out, config, progress=False)
        monkeypatch.setattr(PPOTrainer, "run_iteration", real_iteration)
        resumed = config
    else:  # finished, then extended by one iteration
        train(toy["logs"], toy["bundle"], out, config, progress=False)
        resumed = replace(config, ppo=replace(config.ppo, iterations=3)).validate()
    assert json.loads((out / "run.json").read_text())["precision"] == "bf16"
    capsys.readouterr()

    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: False)  # the run goes on elsewhere
    train(toy["logs"], toy["bundle"], out, resumed, progress=False, resume=True)
    provenance = json.loads((out / "report" / "provenance.json").read_text())
    assert provenance["precision"] == "bf16" and provenance["iterations"] == resumed.ppo.iterations
    assert json.loads((out / "run.json").read_text())["precision"] == "bf16"
    said = capsys.readouterr().out
    assert "parameters in bf16 (model.precision = 'auto', as the run started" in said
    assert "warning: model.precision = 'auto' resolved to bf16 where this run started" in said
