"""The reference's states of logged turns are computed in the first pass over them and read back in
later passes (``npcrl.train.reference_cache``): the same training up to float rounding, without the
reference's forward pass, and a resumed run reads them back from disk as the uninterrupted run did."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from toy_logs import toy_config, toy_inputs  # noqa: E402

from npcrl.reward.spec import load_reward_spec  # noqa: E402
from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train import policy as policy_module  # noqa: E402
from npcrl.train.data import load_training_data  # noqa: E402
from npcrl.train.distributed import Dist  # noqa: E402
from npcrl.train.policy import build_policy, resolve_base_weights  # noqa: E402
from npcrl.train.ppo import PPOTrainer  # noqa: E402
from npcrl.train.reference_cache import FOLDER, ReferenceHidden  # noqa: E402
from npcrl.train.run import train  # noqa: E402

# 24 one-turn conversations leave 19 training turns: 8-turn rollouts go round them in 2.4 iterations,
# so 6 iterations are two and a half passes.
ITERATIONS = 6
PASS_SETTINGS = {"rollout_turns": 8, "minibatch_turns": 8, "micro_batch_turns": 4}


@pytest.fixture(scope="module")
def toy(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return toy_inputs(tiny_bundles["llama-fp32"], tmp_path_factory.mktemp("reference-cache"), 24)


def config(toy: dict[str, Any], iterations: int = ITERATIONS) -> Any:
    base = toy_config("lora", iterations=iterations, **PASS_SETTINGS)
    return dataclasses.replace(base, data=dataclasses.replace(base.data, reward_spec=str(toy["spec"])))


def make_trainer(toy: dict[str, Any], keep: bool) -> PPOTrainer:
    torch.set_num_threads(1)
    cfg = config(toy)
    bundle = load_bundle(toy["bundle"])
    data = load_training_data(
        toy["logs"], load_reward_spec(toy["spec"]), {bundle.bundle_id}, bundle.manifest.vocab_size, cfg.data, 0
    )
    policy = build_policy(resolve_base_weights(bundle, None), cfg.model, cfg.seed)
    trainer = PPOTrainer(policy, data.train, cfg, Dist(), policy.tokenizer.pad_token_id)
    if not keep:
        trainer.reference = trainer.scorer.reference = None
    return trainer


def reference_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every pass through the reference's body (the only caller with the reference's prefixes)."""
    rows: list[int] = []
    real = policy_module.response_hidden

    def spy(lm: Any, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) >= 3 and args[2] is not None:
            rows.append(int(input_ids.shape[0]))
        return real(lm, input_ids, *args, **kwargs)

    monkeypatch.setattr(policy_module, "response_hidden", spy)
    return rows


def test_later_passes_read_the_reference_instead_of_running_it(
    toy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = reference_passes(monkeypatch)
    plain = make_trainer(toy, keep=False)
    turns = len(plain.turns)
    assert ITERATIONS * PASS_SETTINGS["rollout_turns"] > 2 * turns  # the run goes round the turns twice
    per_iteration_plain = []
    for _ in range(ITERATIONS):
        before = len(rows)
        plain.run_iteration()
        per_iteration_plain.append(sum(rows[before:]))

    kept = make_trainer(toy, keep=True)
    per_iteration_kept = []
    for _ in range(ITERATIONS):
        before = len(rows)
        kept.run_iteration()
        per_iteration_kept.append(sum(rows[before:]))

    # Iteration 1 needs no reference pass (the policy is the reference); the rest run it for every
    # turn without the cache, and with it only for turns not seen before.
    assert per_iteration_plain[0] == 0 and all(n == 8 for n in per_iteration_plain[1:])
    assert per_iteration_kept[0] == 0 and sum(per_iteration_kept) <= turns
    assert per_iteration_kept[3:] == [0, 0, 0]  # the second and third passes: nothing recomputed
    assert [m["reference_kept_turns"] for m in kept.metrics][3:] == [8, 8, 8]
    assert all(m["reference_kept_turns"] == 0 for m in plain.metrics)
    assert len(kept.reference or ()) == turns

    # The same training: the kept states are what the reference computed, so only rounding differs.
    for a, b in zip(plain.metrics, kept.metrics, strict=True):
        for key in ("kl_per_turn", "kl_logged_tokens_per_turn", "reward_mean", "policy_loss", "value_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["iteration"], key)
    for (name, a), (_, b) in zip(plain.policy.trainable_parameters(), kept.policy.trainable_parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


def metrics(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "report" / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in row.items() if k not in ("time_s", "phases_s", "sequence_tokens_per_s", "resident_gb")}
        for row in rows
    ]


def test_a_resumed_run_reads_the_states_back_and_ends_where_the_straight_run_did(
    toy: dict[str, Any], tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    train(toy["logs"], toy["bundle"], straight, config(toy), progress=False)
    files = sorted((straight / "state" / FOLDER).iterdir())
    assert [f.name for f in files] == ["iter-000001.safetensors", "iter-000002.safetensors", "iter-000003.safetensors"]

    # Stopped after 3 iterations (the first pass and the start of the second), then extended to 6;
    # a file of iteration 4 left by a kill between it and its checkpoint is written again.
    resumed = tmp_path / "resumed"
    train(toy["logs"], toy["bundle"], resumed, config(toy, iterations=3), progress=False)
    stale = resumed / "state" / FOLDER / "iter-000004.safetensors"
    stale.write_bytes(b"written by a run killed before its checkpoint")
    train(toy["logs"], toy["bundle"], resumed, config(toy), resume=True, progress=False)
    assert metrics(resumed) == metrics(straight)
    assert [m["reference_kept_turns"] for m in metrics(resumed)][3:] == [8, 8, 8]
    assert not stale.exists()  # removed on resume; iteration 4 had nothing new to keep


def test_damaged_files_are_dropped_and_their_turns_scored_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kept = ReferenceHidden()
    for iteration, key in ((1, 0), (2, 1), (3, 2), (4, 3)):
        kept.add(key, torch.full((2, 4), float(key)))
        kept.save(state, iteration)
    kept.save(state, 5)  # nothing new: no file
    folder = state / FOLDER
    assert sorted(p.name for p in folder.iterdir()) == [f"iter-00000{k}.safetensors" for k in (1, 2, 3, 4)]
    shapes = {k: (2, 4) for k in range(4)}

    again = ReferenceHidden()
    assert again.restore(state, 3, shapes) == []  # the checkpoint resumed from is iteration 3
    assert len(again) == 3 and not (folder / "iter-000004.safetensors").exists()
    assert torch.equal(again.get([2])[0], torch.full((2, 4), 2.0))  # type: ignore[index]

    (folder / "iter-000002.safetensors").write_bytes(b"\x00" * 16)
    dropped = again.restore(state, 3, shapes)
    assert len(dropped) == 1 and "iter-000002" in dropped[0] and "scored again" in dropped[0]
    assert len(again) == 1 and again.get([1]) is None and again.get([2]) is None
    assert sorted(p.name for p in folder.iterdir()) == ["iter-000001.safetensors"]

    wrong = ReferenceHidden()
    assert "not a training turn" in wrong.restore(state, 3, {0: (3, 4)})[0]  # a turn of another length
    assert len(wrong) == 0 and not any(folder.iterdir())
