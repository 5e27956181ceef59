"""``npcrl loop``: base bundle -> simulate -> train -> export -> evaluate, for K rounds.

Each round, the current bundle plays simulated players (its logs are real play logs), the
trainer learns from them, and the candidate is evaluated against the current bundle with the same
evaluation players and seeds (``npcrl.loop.round``). The candidate is promoted only when it engages
more *and* passes every guard against reward hacking and language damage (``npcrl.loop.decision``);
the round's ``decision.json`` says why either way, and ``loop.md`` sums the rounds up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from npcrl.loop.decision import Guards
from npcrl.loop.round import LoadedBundle, LoopState, RoundResult, finished_results, play_round
from npcrl.loop.settings import LoopSettings
from npcrl.loop.stages import LoopInputs
from npcrl.loop.state import RoundStages, check_loop_out, exclusive, write_decision, write_loop_record
from npcrl.loop.summary import write_summary


def run_loop(  # one keyword per command-line option; the rounds read them as one LoopSettings
    base: str | Path,
    out: str | Path,
    rounds: int,
    conversations: int,
    eval_conversations: int,
    train_config: Any,
    seed: int = 0,
    players: Sequence[Any] | None = None,
    personas: Sequence[Any] | None = None,
    guards: Guards | None = None,
    store: str | Path | None = None,
    max_new_tokens: int | None = None,
    system_prompts: dict[str, str] | None = None,
    concurrency: int = 1,
    promote_when: str = "better",
    confirm_conversations: int = 0,
    confirm_rule: str = "both",
    resume: bool = False,
    same_play_as: str | Path | None = None,
) -> list[RoundResult]:
    """Run ``rounds`` rounds into ``out``; ``concurrency`` conversations are simulated at once, for
    training and evaluation alike (faster; the results do not depend on it). ``confirm_conversations``
    > 0: that many conversations with fresh players (seed ``seed + 20_000 + round - 1``) join the
    decision as ``confirm_rule`` says (``npcrl.loop.settings.CONFIRM_RULES``).
    ``guards``: default ``Guards()``. ``store``: a bundle store each promoted candidate is promoted into
    (``npcrl.loop.promotion``).

    ``resume``: go on with the run in ``out`` (same settings; ``rounds`` may be raised to add rounds
    to a finished run). Finished rounds are read back, and an unfinished round goes on from its last
    finished stage (``npcrl.loop.state``).

    ``same_play_as``: a loop run with the same play settings (but any training config) whose round-1
    simulated play and base evaluation round 1 takes instead of playing them again
    (``npcrl.loop.adopt``), so two training setups are compared on the same logs and players."""
    from npcrl.agent.persona import builtin_personas
    from npcrl.sim.profiles import builtin_profiles

    settings = LoopSettings(
        base=Path(base),
        rounds=rounds,
        conversations=conversations,
        eval_conversations=eval_conversations,
        train_config=train_config,
        seed=seed,
        players=list(players or builtin_profiles().values()),
        personas=list(personas or builtin_personas().values()),
        guards=guards or Guards(),
        max_new_tokens=max_new_tokens,
        system_prompts=system_prompts,
        concurrency=concurrency,
        promote_when=promote_when,
        confirm_conversations=confirm_conversations,
        confirm_rule=confirm_rule,
    )
    settings.check()  # before hours of simulation and training, not after
    out = Path(out)
    with exclusive(out):  # a second loop on the same directory stops here instead of interleaving
        check_loop_out(out, resume, settings.record())
        return play_rounds(start(settings, out, same_play_as), store)


def start(settings: LoopSettings, out: Path, same_play_as: str | Path | None = None) -> LoopInputs:
    """Load what every round reads, then claim ``out`` by writing ``loop.json`` (and take round 1's
    play from ``same_play_as``, if given)."""
    from npcrl.loop.adopt import adopt_round_one_play, check_play_source

    inputs = load_inputs(settings, out)
    source = None
    if same_play_as is not None and not (out / "round-1").exists():  # else adopted (or played) before a stop
        source = check_play_source(Path(same_play_as), settings.record())
    write_loop_record(out, settings.record())  # once the inputs are known good: a typo must not claim the directory
    if source is not None:
        adopt_round_one_play(source, out, settings.confirm_conversations, settings.guards.persona_probe_lines)
    return inputs


def load_inputs(settings: LoopSettings, out: Path) -> LoopInputs:
    """What every round reads: the settings, the reward spec, and the base bundle loaded once."""
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.sim.ordered import session_options_for

    base_model = OnnxCausalLM(settings.base, session_options_for(settings.concurrency))
    return LoopInputs(settings, out, reward_spec_of(settings.train_config), base_model)


def reward_spec_of(train_config: Any) -> Any:
    """The reward spec that scores a loop's evaluations: the training config's, else the default."""
    from npcrl.reward.spec import default_reward_spec, load_reward_spec

    spec_path = train_config.data.reward_spec
    return load_reward_spec(spec_path) if spec_path else default_reward_spec()


def play_rounds(inputs: LoopInputs, store: str | Path | None) -> list[RoundResult]:
    """The rounds still to play, after those a stopped run finished; every round's result."""
    results, state = finished_results(inputs.out)
    current = current_bundle(inputs, state)
    for number in range(len(results) + 1, inputs.settings.rounds + 1):
        played, candidate = play_round(inputs, state, current, number)
        if played.promoted and store is not None:
            promote_once(store, candidate.path)  # before the decision: a resumed round promotes what a stop skipped
        results.append(RoundResult(**write_decision(inputs.round_dir(number), asdict(played))))
        write_summary(inputs.out, results)
        verdict = "promoted" if played.promoted else "kept the current bundle"
        print(f"round {number}: {verdict}; " + "; ".join(played.reasons))
        if played.promoted:
            current = candidate
            state.promoted(candidate.path, played.metrics["candidate"], RoundStages(inputs.round_dir(number)))
    write_summary(inputs.out, results)
    return results


def current_bundle(inputs: LoopInputs, state: LoopState) -> LoadedBundle:
    """The bundle the next round starts from: the last one promoted, or the base."""
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.sim.ordered import session_options_for

    if state.current is None:
        return LoadedBundle(inputs.settings.base, inputs.base_model)
    options = session_options_for(inputs.settings.concurrency)
    return LoadedBundle(state.current, OnnxCausalLM(state.current, options))


def promote_once(store: str | Path, bundle: Path) -> None:
    """Promote ``bundle`` into ``store`` unless a stopped run already did."""
    from npcrl.loop.promotion import current_bundle as promoted_bundle
    from npcrl.loop.promotion import promote

    now = promoted_bundle(store)
    if now is None or now.bundle_dir != bundle.resolve():
        promote(store, bundle)
