"""``npcrl eval``: bundles played by the same simulated players and seeds, side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from npcrl.agent.persona import builtin_personas
from npcrl.cli.main import main
from npcrl.evaluation.metric_names import paired_gain_of_profile
from npcrl.evaluation.metrics import conversation_rewards
from npcrl.evaluation.run import EvalSettings, evaluate_bundle
from npcrl.reward.spec import default_reward_spec
from npcrl.runtime.model import OnnxCausalLM
from npcrl.sim.draws import drawn_profile
from npcrl.sim.populations import load_population
from npcrl.sim.profiles import builtin_profiles

# The tiny test models have 256 positions: the built-in cards' system prompts do not fit.
SHORT_PROMPTS = {
    "blacksmith": "You are Brom.",
    "innkeeper": "You are Mara.",
    "guard": "You are Hedda.",
    "miller": "You are Osric.",
}


def test_same_players_against_two_bundles(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    personas = list(builtin_personas().values())
    profiles = list(builtin_profiles().values())
    settings = EvalSettings(conversations=4, seed=1, kl_turns=6, max_new_tokens=8)
    reference = OnnxCausalLM(tiny_bundles["llama-fp32"])
    rows = {
        name: evaluate_bundle(
            reference if name == "llama-fp32" else OnnxCausalLM(tiny_bundles[name]),
            tmp_path / name,
            personas,
            profiles,
            default_reward_spec(),
            settings,
            reference=reference,
            system_prompts=SHORT_PROMPTS,
        )
        for name in ("llama-fp32", "llama-q8")
    }
    fp32, q8 = rows["llama-fp32"], rows["llama-q8"]
    assert fp32["conversations"] == q8["conversations"] == 4.0
    assert fp32["KL to reference (nats / line)"] == 0.0  # the reference against itself
    assert q8["KL to reference (nats / line)"] > 0.0  # quantisation moves the distribution
    assert q8["held-out persona perplexity"] > 1.0
    assert fp32["filtered rate"] < 1.0  # real model lines, not fallbacks


def test_metrics_do_not_depend_on_concurrency(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    # kl_turns below the turns played: the KL reads the first turns of the log, so the log order counts
    model = OnnxCausalLM(tiny_bundles["llama-fp32"])
    rows = [
        evaluate_bundle(
            model,
            tmp_path / f"concurrency-{concurrency}",
            list(builtin_personas().values()),
            list(builtin_profiles().values()),
            default_reward_spec(),
            EvalSettings(conversations=5, seed=2, kl_turns=3, max_new_tokens=8, concurrency=concurrency),
            reference=OnnxCausalLM(tiny_bundles["llama-q8"]),
            system_prompts=SHORT_PROMPTS,
        )
        for concurrency in (1, 3)
    ]
    assert rows[0]["KL to reference (nats / line)"] > 0.0
    assert rows[1] == rows[0]


def test_eval_cli_writes_table_metrics_and_report(tiny_bundles: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    argv = ["eval", "--bundle", str(tiny_bundles["llama-q8"]), "--against", str(tiny_bundles["llama-fp32"])]
    argv += ["--conversations", "2", "--max-new-tokens", "4", "--concurrent", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "reward / conversation (95% CI)" in printed and "held-out persona perplexity" in printed
    columns = json.loads((out / "metrics.json").read_text())
    assert len(columns) == 2 and all(c["conversations"] == 2.0 for c in columns.values())
    # built-in personas overflow the tiny model: every line is a fallback, so no KL can be measured
    assert all(math.isnan(c["KL to reference (nats / line)"]) for c in columns.values())
    assert (out / "evaluation.html").is_file()
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["against", "bundle"]
    # the paired gain: per-conversation differences of the two bundles' logged rewards
    bundle_label = next(label for label in columns if label.startswith("bundle"))
    gain, low, high = columns[bundle_label]["engagement gain, paired (95% CI)"]
    spec = default_reward_spec()
    differences = [
        a - b
        for a, b in zip(
            conversation_rewards(out / "logs" / "bundle", spec),
            conversation_rewards(out / "logs" / "against", spec),
            strict=True,
        )
    ]
    assert gain == pytest.approx(sum(differences) / 2) and low <= gain <= high
    assert "engagement gain, paired" in printed
    # and split by the profile that played each conversation: the parts add up to the whole
    names = list(builtin_profiles())
    drawn = [names[drawn_profile(0, k, len(names))] for k in range(2)]
    split = {name: columns[bundle_label][paired_gain_of_profile(name)] for name in set(drawn)}
    assert not any(paired_gain_of_profile(name) in columns[bundle_label] for name in set(names) - set(drawn))
    assert sum(split[name][0] for name in drawn) / 2 == pytest.approx(gain)
    assert all(f"{name} players" in printed for name in drawn)


def test_eval_refuses_a_used_report_directory(tiny_bundles: dict[str, Path], tmp_path: Path, capsys) -> None:
    (tmp_path / "old.txt").write_text("x")
    assert main(["eval", "--bundle", str(tiny_bundles["llama-fp32"]), "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.fixture
def short_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's simulations with system prompts that fit the tiny models, so their lines are real."""
    import importlib

    simulate_module = importlib.import_module("npcrl.sim.simulate")  # the package re-exports the function
    simulate = simulate_module.simulate

    def with_short_prompts(*args: Any, system_prompts: Any = None, **kwargs: Any) -> Any:
        return simulate(*args, system_prompts=system_prompts or SHORT_PROMPTS, **kwargs)

    monkeypatch.setattr(simulate_module, "simulate", with_short_prompts)


def test_against_logs_pairs_with_an_earlier_evaluation_as_if_played_again(
    tiny_bundles: dict[str, Path], tmp_path: Path, capsys, short_prompts: None
) -> None:
    common = ["--conversations", "3", "--seed", "2", "--max-new-tokens", "6", "--concurrent", "1"]
    candidate = ["eval", "--bundle", str(tiny_bundles["llama-q8"])]
    assert main([*candidate, "--against", str(tiny_bundles["llama-fp32"]), *common, "--out", str(tmp_path / "a")]) == 0
    earlier = tmp_path / "a" / "logs" / "against"
    assert main([*candidate, "--against-logs", str(earlier), *common, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    played, reused = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    gain = "engagement gain, paired (95% CI)"
    played_gain = next(c[gain] for label, c in played.items() if label.startswith("bundle"))
    reused_gain = next(c[gain] for label, c in reused.items() if label.startswith("bundle"))
    assert reused_gain == played_gain
    split = [
        label for label in next(c for label, c in reused.items() if label.startswith("bundle")) if " players " in label
    ]
    assert split  # the gain per profile, read back from the earlier logs under the same key
    against = next(c for label, c in reused.items() if label.startswith("against (logs of"))
    assert against["filtered rate"] < 1.0  # real lines were compared, not fallbacks
    assert against["reward / conversation (95% CI)"] == next(
        c["reward / conversation (95% CI)"] for label, c in played.items() if label.startswith("against")
    )

    def refused(*changed: str) -> str:
        argv = [*candidate, "--against-logs", str(earlier), *common, *changed, "--out", str(tmp_path / "c")]
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "played with seed 2, this evaluation uses --seed 3" in refused("--seed", "3")
    assert "holds 3 conversation(s), not conversations 0..1" in refused("--conversations", "2")
    assert "capped at 6 tokens, this evaluation caps them at 5" in refused("--max-new-tokens", "5")
    assert "not both" in refused("--against", str(tiny_bundles["llama-fp32"]))
    # the players are read back from their pseudonyms under this machine's key, before anything plays
    shipped, humour = list(builtin_profiles()), list(load_population("humour"))
    played, drawn = shipped[drawn_profile(2, 0, len(shipped))], humour[drawn_profile(2, 0, len(humour))]
    assert f"conversation 0 was played by a {played!r} player, where this evaluation draws {drawn!r}" in refused(
        "--population", "humour"
    )
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_against_logs_under_another_key_leave_out_only_the_split_by_profile(
    tiny_bundles: dict[str, Path], tmp_path: Path, capsys, short_prompts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["--conversations", "3", "--seed", "2", "--max-new-tokens", "4", "--concurrent", "1"]
    candidate = ["eval", "--bundle", str(tiny_bundles["llama-q8"])]
    assert main([*candidate, "--against", str(tiny_bundles["llama-fp32"]), *common, "--out", str(tmp_path / "a")]) == 0
    monkeypatch.setenv("NPCRL_KEY_FILE", str(tmp_path / "another-machine.key"))
    capsys.readouterr()
    earlier = tmp_path / "a" / "logs" / "against"
    assert main([*candidate, "--against-logs", str(earlier), *common, "--out", str(tmp_path / "b")]) == 0
    said = capsys.readouterr().out
    assert "its players are not checked: none is a profile given or shipped" in said
    assert "the gain per player profile is left out: " in said
    columns = json.loads((tmp_path / "b" / "metrics.json").read_text())
    bundle = next(c for label, c in columns.items() if label.startswith("bundle"))
    assert "engagement gain, paired (95% CI)" in bundle and not any(" players " in label for label in bundle)
