"""The offline PPO trainer on a tiny Llama: a toy reward written into real play logs is learned,
runs resume exactly after SIGKILL, 2 gloo processes match 1, and the CLI writes a loadable bundle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402
from toy_logs import TOY_SPEC, target_rate, toy_config, toy_prompts, write_toy_logs  # noqa: E402

from npcrl.durable import set_aside_path  # noqa: E402
from npcrl.errors import TrainConfigError  # noqa: E402
from npcrl.reward.spec import load_reward_spec  # noqa: E402
from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train.config import PPOConfig, TrainConfig  # noqa: E402
from npcrl.train.data import load_training_data  # noqa: E402
from npcrl.train.distributed import Dist  # noqa: E402
from npcrl.train.policy import build_policy, resolve_base_weights  # noqa: E402
from npcrl.train.ppo import PPOTrainer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("toy")
    bundle = tiny_bundles["llama-fp32"]
    target = write_toy_logs(bundle, root / "logs", 240, seed=0)
    spec = root / "toy-rewards.toml"
    spec.write_text(TOY_SPEC, encoding="utf-8")
    return {"root": root, "bundle": bundle, "logs": root / "logs", "spec": spec, "target": target}


def make_trainer(toy: dict[str, Any], config: TrainConfig) -> PPOTrainer:
    torch.set_num_threads(1)  # tiny matrices: threads only add synchronisation cost
    bundle = load_bundle(toy["bundle"])
    data = load_training_data(
        toy["logs"], load_reward_spec(toy["spec"]), {bundle.bundle_id}, bundle.manifest.vocab_size, config.data, 0
    )
    policy = build_policy(resolve_base_weights(bundle, None), config.model, config.seed)
    return PPOTrainer(policy, data.train, config, Dist(), policy.tokenizer.pad_token_id)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_toy_reward_is_learned_within_kl_budget(toy: dict[str, Any], mode: str) -> None:
    # The adaptive controller (Ziegler et al.) holds KL near 3 nats per line while the reward is learned.
    trainer = make_trainer(toy, toy_config(mode, kl_target=3.0, kl_horizon=200))
    before = {n: p.detach().clone() for n, p in trainer.policy.trainable_parameters()}
    base_rate = target_rate(trainer, toy, reference=True)
    rates = []
    for _ in range(3):
        for _ in range(3):
            trainer.run_iteration()
        rates.append(target_rate(trainer, toy))
    assert base_rate < 0.25
    assert rates[0] < rates[1] < rates[2], rates
    assert rates[-1] > 2.5 * base_rate, (base_rate, rates)
    kl = [m["kl_per_turn"] for m in trainer.metrics]
    assert kl[0] == 0.0 and all(k >= 0 for k in kl)
    assert kl[-1] < 6.0, kl  # nats per 8-token line: the penalty holds the policy near the reference
    budget = trainer.config.ppo.kl_budget
    assert budget is not None
    for m in trainer.metrics:  # a mean above the budget means some minibatch crossed it: stopped
        assert m["approx_kl"] <= budget or m["early_stopped"] == 1.0
    changed = [n for n, p in trainer.policy.trainable_parameters() if not torch.equal(p, before[n])]
    assert "value_head.weight" in changed
    assert any("lora" in n for n in changed) if mode == "lora" else len(changed) == len(before)
    # The reference really is frozen: its samples are what they were before training.
    assert target_rate(trainer, toy, reference=True) == base_rate


def test_kl_budget_stops_the_epochs_early(toy: dict[str, Any]) -> None:
    trainer = make_trainer(toy, toy_config(iterations=3, kl_budget=1e-6, learning_rate=1e-3))
    records = [trainer.run_iteration() for _ in range(3)]
    # Iteration 1's first minibatch starts at pi_old (approx-KL 0); later iterations cross at once.
    assert all(r["early_stopped"] == 1.0 for r in records[1:])
    assert all(r["epochs_run"] == 1.0 for r in records[1:])
    assert trainer.updates < 3 * 2 * 2  # fewer optimizer steps than epochs x minibatches allow


def test_minibatch_order_by_prefix_cuts_minibatches_from_the_grouped_order(
    toy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ppo.minibatch_order = "by_prefix"``: every epoch's minibatches are cut from
    ``prefixes_together``'s order (each persona's rows adjacent); an unknown order is refused."""
    from npcrl.train import ppo as ppo_module

    orders: list[list[int]] = []
    real = ppo_module.prefixes_together

    def spy(order: list[int], prompts: Any, rng: Any) -> list[int]:
        orders.append(real(order, prompts, rng))
        return orders[-1]

    stepped: list[list[int]] = []
    real_micro = ppo_module.PPOTrainer._micro_step

    def micro_spy(self: Any, model: Any, rollout: Any, rows: list[int], tokens: float) -> list[float]:
        stepped.append(list(rows))
        return real_micro(self, model, rollout, rows, tokens)

    monkeypatch.setattr(ppo_module, "prefixes_together", spy)
    monkeypatch.setattr(ppo_module.PPOTrainer, "_micro_step", micro_spy)
    config = toy_config("lora", iterations=1, minibatch_order="by_prefix", kl_budget=None)
    trainer = make_trainer(toy, config)
    trainer.run_iteration()
    assert len(orders) == config.ppo.epochs
    minibatch = config.ppo.minibatch_turns
    per_epoch = len(stepped) // config.ppo.epochs
    for epoch, order in enumerate(orders):
        rows = stepped[epoch * per_epoch : (epoch + 1) * per_epoch]
        cut = [order[i : i + minibatch] for i in range(0, len(order), minibatch)]
        assert sorted(r for micro in rows for r in micro) == sorted(order)
        for micro in rows:  # a micro-batch never mixes two minibatches of the grouped order
            assert any(set(micro) <= set(chunk) for chunk in cut), (micro, cut)
    with pytest.raises(TrainConfigError, match="ppo.minibatch_order"):
        toy_config(minibatch_order="by_persona").validate()


def test_rollout_logprobs_match_the_logged_model(toy: dict[str, Any]) -> None:
    """Alignment of prompt/response positions and temperature: pi_old at iteration 0 is the logging
    bundle's temperature-scaled softmax, which the runtime logged as full_logprobs."""
    trainer = make_trainer(toy, toy_config(iterations=1))
    turns = trainer.rollout_turns(0)
    rollout = trainer.score(turns)
    for row, turn in enumerate(turns):
        n = len(turn.response_ids)
        logged = torch.tensor(turn.full_logprobs, dtype=torch.float32)
        assert torch.allclose(rollout.old_logprobs[row, :n], logged, atol=2e-4)
        assert torch.equal(rollout.ref_logprobs[row, :n], rollout.old_logprobs[row, :n])
        assert float(rollout.kl[row, :n].abs().max()) == 0.0


def test_importance_weights_correct_for_the_sampler(toy: dict[str, Any]) -> None:
    """mu (top-p 0.95, renormalised) >= pi_old on every kept token, so w = pi_old/mu <= 1 at iteration 0."""
    trainer = make_trainer(toy, toy_config(iterations=1))
    rollout = trainer.score(trainer.rollout_turns(0))
    trainer.advantages(rollout)
    assert rollout.weights is not None
    mask = rollout.batch.mask.bool()
    weights = rollout.weights[mask]
    expected = (rollout.old_logprobs - rollout.batch.behaviour_logprobs).exp().clamp(max=2.0)[mask]
    assert torch.allclose(weights, expected, atol=1e-5)
    assert float(weights.max()) <= 1.0 + 1e-4 and float(weights.min()) > 0.5


@pytest.mark.parametrize("standardize", [False, True])
def test_turn_rewards_reach_the_returns_standardized_when_asked(toy: dict[str, Any], standardize: bool) -> None:
    # gamma = lam = 1 and no KL at iteration 0 (pi_old is the reference): a turn's return at every
    # token is its (standardised) score.
    config = toy_config(iterations=1, gamma=1.0, lam=1.0, standardize_rewards=standardize)
    trainer = make_trainer(toy, config)
    rollout = trainer.score(trainer.rollout_turns(0))
    trainer.advantages(rollout)
    scores = rollout.batch.scores.double()
    assert float(scores.std()) > 0  # the toy rollout has a spread to standardise
    expected = (scores - scores.mean()) / scores.std() if standardize else scores
    assert rollout.returns is not None
    torch.testing.assert_close(rollout.returns[:, 0].double(), expected, atol=1e-5, rtol=1e-5)


# -- command line: resume, distributed, outputs ---------------------------------------------------


def write_config(path: Path, spec: Path, iterations: int, export: str = "none", **extra: Any) -> Path:
    lines = [
        "seed = 3",
        "[data]",
        f"reward_spec = {json.dumps(str(spec))}",
        "holdout_fraction = 0.2",
        "[model]",
        f"mode = {json.dumps(extra.pop('mode', 'full'))}",
        "lora_r = 8",
        "[ppo]",
        "rollout_turns = 32",
        "minibatch_turns = 16",
        "micro_batch_turns = 8",
        "epochs = 2",
        f"iterations = {iterations}",
        "learning_rate = 3e-4",
        "kl_coef = 0.2",
        "[run]",
        "threads = 1",
        f"export_quant = {json.dumps(export)}",
        f"export_graph = {json.dumps(extra.pop('graph', 'auto'))}",
        "sample_prompts = 2",
        "sample_tokens = 8",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_command(toy: dict[str, Any], out: Path, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "npcrl.cli",
        "train",
        "--logs",
        str(toy["logs"]),
        "--bundle",
        str(toy["bundle"]),
        "--out",
        str(out),
        "--config",
        str(config),
        "--no-progress",
        *extra,
    ]


HANG_GUARD_S = 1800
"""subprocess limit of a training run: a hang guard only, far above the work (a minute when the machine is idle)"""


def run_ok(cmd: list[str], timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def checkpoint_tensors(out: Path) -> dict[str, Any]:
    tensors = {}
    for path in sorted((out / "checkpoint").glob("*.safetensors")):
        tensors.update({f"{path.name}:{k}": v for k, v in load_file(str(path)).items()})
    return tensors


def metrics_without_timing(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "report" / "metrics.jsonl").read_text().splitlines()]
    timing = ("time_s", "phases_s", "sequence_tokens_per_s", "resident_gb")
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


def test_killed_and_extended_runs_resume_to_the_uninterrupted_result(toy: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(tmp_path / "train.toml", toy["spec"], iterations=8)
    straight = tmp_path / "straight"
    run_ok(train_command(toy, straight, config))

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        train_command(toy, killed, config), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + HANG_GUARD_S
    while not (killed / "state" / "ckpt-000003").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "checkpoint").exists()

    fresh = subprocess.run(
        train_command(toy, killed, config), capture_output=True, text=True, cwd=REPO, timeout=HANG_GUARD_S
    )
    assert fresh.returncode == 2 and "--resume" in fresh.stderr  # never silently restarts or overwrites
    resumed = run_ok(train_command(toy, killed, config, "--resume"))
    assert "resumed from ckpt-" in resumed.stdout

    a, b = checkpoint_tensors(straight), checkpoint_tensors(killed)
    assert a.keys() == b.keys() and any(k.startswith("value_head") for k in a)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    assert metrics_without_timing(straight) == metrics_without_timing(killed)
    assert (straight / "report" / "turn_credit.jsonl").read_text() == (
        killed / "report" / "turn_credit.jsonl"
    ).read_text()

    # A finished 3-iteration run, extended to 8 by raising ppo.iterations, ends where the straight one did.
    short = tmp_path / "short"
    run_ok(train_command(toy, short, write_config(tmp_path / "short.toml", toy["spec"], iterations=3)))
    again = subprocess.run(
        train_command(toy, short, tmp_path / "short.toml", "--resume"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=HANG_GUARD_S,
    )
    assert again.returncode == 2 and "already finished" in again.stderr
    other = write_config(tmp_path / "other.toml", toy["spec"], iterations=8, mode="lora")
    changed = subprocess.run(
        train_command(toy, short, other, "--resume"), capture_output=True, text=True, cwd=REPO, timeout=HANG_GUARD_S
    )
    assert changed.returncode == 2 and "only ppo.iterations" in changed.stderr  # only the length may change
    extended = run_ok(train_command(toy, short, config, "--resume"))
    assert "extending the run from 3 to 8 iterations" in extended.stdout
    recorded = json.loads((short / "run.json").read_text())
    assert recorded["extended_from_iterations"] == [3] and recorded["finished_iterations"] == 8
    c = checkpoint_tensors(short)
    assert c.keys() == a.keys() and not set_aside_path(short / "checkpoint").exists()
    for name in a:
        assert torch.allclose(a[name], c[name], atol=1e-6, rtol=0), name
    assert metrics_without_timing(straight) == metrics_without_timing(short)


def test_which_resumes_the_output_directory_allows(tmp_path: Path) -> None:
    from npcrl.errors import TrainError
    from npcrl.train.run_record import RUN_FILE, check_out

    def record(iterations: int, **extra: Any) -> dict[str, Any]:
        config = TrainConfig(ppo=PPOConfig(iterations=iterations)).to_dict()
        return {"logs": "L", "bundle": "B", "base_weights": "W", "reward_model": None, "config": config, **extra}

    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_FILE).write_text(json.dumps(record(3)))
    with pytest.raises(TrainError, match="not empty.*--resume"):
        check_out(out, False, record(3))
    assert check_out(out, True, record(3))[0] is False  # killed mid-way: plain resume
    with pytest.raises(TrainError, match="only ppo.iterations"):
        check_out(out, True, record(2))  # fewer iterations is a different run, not an extension
    (out / "checkpoint").mkdir()
    assert check_out(out, True, record(3))[0] is False  # stopped in its finish (export, report): resumable
    (out / RUN_FILE).write_text(json.dumps(record(3, finished_iterations=3)))
    with pytest.raises(TrainError, match="already finished"):
        check_out(out, True, record(3))
    assert check_out(out, True, record(5))[0] is True  # extend a finished run
    with pytest.raises(TrainError, match="different logs"):
        check_out(out, True, {**record(5), "logs": "other"})
    # An extension to 5 killed before its checkpoint/ replaced the 3-iteration one: resumable as is.
    (out / RUN_FILE).write_text(json.dumps(record(5, finished_iterations=3, extended_from_iterations=[3])))
    assert check_out(out, True, record(5))[0] is False
    (out / RUN_FILE).write_text(json.dumps(record(5, finished_iterations=5, extended_from_iterations=[3])))
    with pytest.raises(TrainError, match="already finished"):
        check_out(out, True, record(5))


def test_a_moved_run_resumes_with_the_inputs_that_moved_with_it(tmp_path: Path) -> None:
    from npcrl.errors import TrainError
    from npcrl.train.run_record import RUN_FILE, check_out

    def record(root: Path, logs: Path | None = None) -> dict[str, Any]:
        return {
            "out": str(root / "train"),
            "logs": str(logs or root / "logs"),  # beside the run, as a loop round's
            "bundle": "/bundles/base",  # outside it
            "base_weights": "/models/base",
            "reward_model": None,
            "config": TrainConfig().to_dict(),
        }

    was, now = tmp_path / "a" / "round-1", tmp_path / "b" / "round-1"
    (now / "train").mkdir(parents=True)
    (now / "train" / RUN_FILE).write_text(json.dumps(record(was)))  # written before the move
    assert check_out(now / "train", True, record(now)) == (False, record(was))
    assert check_out(now / "train", True, record(now, logs=was / "logs"))[0] is False  # the same logs as before
    with pytest.raises(TrainError, match="different logs"):  # neither where they were nor moved with the run
        check_out(now / "train", True, record(now, logs=tmp_path / "other" / "logs"))
    with pytest.raises(TrainError, match="different bundle"):
        check_out(now / "train", True, {**record(now), "bundle": "/bundles/other"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_match_one_process(toy: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(tmp_path / "train.toml", toy["spec"], iterations=3)
    single = tmp_path / "single"
    run_ok(train_command(toy, single, config))
    double = tmp_path / "double"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
    ]
    command = train_command(toy, double, config)[2:]
    command[command.index("--logs")] = "--play-logs"  # torchrun's own parser would take --logs
    run_ok(torchrun + command)
    assert json.loads((double / "run.json").read_text())["world_size"] == 2
    a, b = checkpoint_tensors(single), checkpoint_tensors(double)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-5, rtol=1e-4), (name, float((a[name] - b[name]).abs().max()))
    for x, y in zip(metrics_without_timing(single), metrics_without_timing(double), strict=True):
        assert x["reward_mean"] == pytest.approx(y["reward_mean"])
        assert x["policy_loss"] == pytest.approx(y["policy_loss"], abs=1e-5)
        assert x["kl_per_turn"] == pytest.approx(y["kl_per_turn"], abs=1e-5)


def test_cli_writes_checkpoint_bundle_and_report(toy: dict[str, Any], tmp_path: Path) -> None:
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.runtime.sampler import SamplerConfig

    config = write_config(tmp_path / "train.toml", toy["spec"], iterations=2, export="fp32", mode="lora")
    out = tmp_path / "run"
    proc = run_ok(train_command(toy, out, config))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    parent = load_bundle(toy["bundle"])
    bundle = load_bundle(result["bundle"])
    manifest = bundle.manifest
    assert manifest.parent == parent.bundle_id and bundle.bundle_id != parent.bundle_id
    provenance = manifest.provenance
    assert provenance["trainer"] == "npcrl offline PPO"
    assert provenance["logs"]["files"][0]["sha256"]
    assert provenance["config"]["model"]["mode"] == "lora"
    assert provenance["iterations"] == 2 and "kl_per_turn" in provenance["final_metrics"]
    assert provenance["tokenizer_lineage"][0] == parent.bundle_id
    assert manifest.model["source"] == "../checkpoint"  # relative: the run may be moved
    assert resolve_base_weights(bundle, None).resolve() == (out / "checkpoint").resolve()
    # The new bundle speaks through the game runtime.
    model = OnnxCausalLM(bundle.root)
    text = model.generate(toy_prompts(bundle.root)[0], SamplerConfig(temperature=0.0, max_new_tokens=5)).run()
    assert len(text.token_ids) >= 1
    # HF checkpoint: merged safetensors weights plus the value head (no LoRA wrappers left)
    names = checkpoint_tensors(out)
    assert any(k.startswith("value_head") for k in names) and not any("lora" in k for k in names)
    report = out / "report"
    assert len((report / "metrics.jsonl").read_text().splitlines()) == 2
    # What the update made of each turn: 32 rollout turns an iteration, advantages as the loss saw
    # them (whitened over the rollout's tokens: their token-weighted mean is 0)
    credit = [json.loads(line) for line in (report / "turn_credit.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in credit] == [1] * 32 + [2] * 32
    for iteration in (1, 2):
        rows = [row for row in credit if row["iteration"] == iteration]
        assert len({row["turn"] for row in rows}) == 32
        tokens = sum(row["tokens"] for row in rows)
        assert sum(row["advantage_mean"] * row["tokens"] for row in rows) / tokens == pytest.approx(0.0, abs=1e-5)
        assert all(row["weight_mean"] > 0 and row["kl"] >= -1e-6 for row in rows)
    assert {row["reward"] for row in credit} <= {0.0, 1.0}  # the toy spec: a line earns 1 or nothing
    assert (report / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = json.loads((report / "samples.json").read_text())
    assert len(samples["before"]) == len(samples["after"]) == 2
    off_policy = json.loads((report / "off_policy.json").read_text())
    # Control: the reference scored against its own logs has weights ~1 and recovers the logged mean.
    ref = off_policy["reference"]
    assert ref["self_normalised"] == pytest.approx(ref["logged_mean_reward"], abs=1e-3)
    assert ref["effective_sample_size"] == pytest.approx(ref["turns"], rel=1e-3)
    assert "Off-policy estimate" in (report / "report.md").read_text()


def test_cli_errors_are_clear(toy: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(tmp_path / "train.toml", toy["spec"], iterations=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--logs", str(empty)], "no play-log files"),
        (["--config", str(tmp_path / "missing.toml")], "missing.toml"),
        (["--bundle", str(tmp_path)], "manifest"),
    ]
    for overrides, message in cases:
        cmd = train_command(toy, tmp_path / "out", config)
        for flag, value in zip(overrides[::2], overrides[1::2], strict=True):
            cmd[cmd.index(flag) + 1] = value
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=HANG_GUARD_S)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr, proc.stderr


def test_checkpoint_model_rebuilds_a_kept_iteration(toy: dict[str, Any], tmp_path: Path) -> None:
    from npcrl.errors import TrainError
    from npcrl.train.checkpoint_model import checkpoint_model

    config = write_config(tmp_path / "train.toml", toy["spec"], iterations=2, mode="lora")
    out = tmp_path / "run"
    run_ok(train_command(toy, out, config))
    final = checkpoint_tensors(out)
    # the newest checkpoint is the run's last iteration: its model is the run's final model
    assert checkpoint_model(out, tmp_path / "newest" / "checkpoint").name == "ckpt-000002"
    newest = checkpoint_tensors(tmp_path / "newest")
    assert set(newest) == set(final) and not any("lora" in k for k in newest)
    assert all(torch.equal(newest[k], final[k]) for k in final)
    # an earlier iteration is another model
    checkpoint_model(out, tmp_path / "first" / "checkpoint", iteration=1)
    first = checkpoint_tensors(tmp_path / "first")
    assert any(not torch.equal(first[k], final[k]) for k in final)
    with pytest.raises(TrainError, match=r"ckpt-000003: no such checkpoint; this run keeps iterations 1, 2"):
        checkpoint_model(out, tmp_path / "third", iteration=3)
    with pytest.raises(TrainError, match="first/checkpoint: already exists"):
        checkpoint_model(out, tmp_path / "first" / "checkpoint", iteration=1)
    with pytest.raises(TrainError, match="not a training run"):
        checkpoint_model(tmp_path, tmp_path / "nowhere")
    # a record whose [model] no longer describes the checkpoint is refused before any weight is copied
    record = json.loads((out / "run.json").read_text())
    for change, message in (({"mode": "full"}, "do not match this model"), ({"lora_r": 4}, "other shapes")):
        edited = dict(record, config={**record["config"], "model": {**record["config"]["model"], **change}})
        (out / "run.json").write_text(json.dumps(edited))
        with pytest.raises(TrainError, match=f"ckpt-000002: checkpoint parameters.*{message}"):
            checkpoint_model(out, tmp_path / f"edited-{next(iter(change))}")
