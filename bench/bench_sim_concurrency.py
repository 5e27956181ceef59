"""Simulated play per hour: ``simulate`` at concurrency 1 and at concurrency N, side by side (real model).

The same seeded conversations (the four built-in NPCs, the shipped player profiles) are played on
one model in one process: one at a time, then ``--concurrency`` at once (the model's scheduler
merges the NPCs' decode steps into batched passes), for each history window margin asked for
(``AgentConfig.history_drop_margin``; 0 drops one exchange at a time, as before the margin
existed). The model is set up as ``npcrl simulate --concurrency N`` sets it up
(``npcrl.sim.ordered.session_options_for``: 2 x N KV slots, so a live conversation keeps its cache between turns,
and whole prefills). Prints conversations per hour, NPC lines per second, the prompt tokens
prefilled and the ratio to the first row, and checks that both concurrencies played the same
conversations: the same NPC lines in the same order (exits 1 if not). A short warm-up round
first computes the personas' prefixes and touches the KV pool, which every row would otherwise
pay differently.

For each concurrent run it also counts the rows of every batched decode pass: the rows stepping,
and the pool rows the pass computes (the span from the lowest stepping slot to the highest: the
rows between them that are not stepping run as idle rows). With ``--split-gaps 0,2`` the
concurrent run is repeated at each ``SessionOptions.batch_split_gap`` (2: separate passes where two
or more idle rows lie between stepping slots), side by side.

Then the ceiling the concurrency ratio cannot pass on this machine: the graph time of one batched
decode step of N rows against one row, at the run's mean prompt length (``profile_decode``).

Usage: python bench/bench_sim_concurrency.py [--bundle DIR] [--conversations 16] [--concurrency 8]
                                             [--max-new-tokens 60] [--seed 0] [--margins 0,160]
                                             [--split-gaps 0,2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table  # noqa: E402
from bench.profile_decode import batched_steps  # noqa: E402
from npcrl import AgentConfig, OnnxCausalLM, PlayLogWriter, builtin_personas  # noqa: E402
from npcrl.agent.config import with_sampler  # noqa: E402
from npcrl.paths import default_bundle_dir  # noqa: E402
from npcrl.playlog import NpcTurn, read_log_dir  # noqa: E402
from npcrl.runtime.session import SessionOptions  # noqa: E402
from npcrl.sim import SimulatedConversation, builtin_profiles, simulate  # noqa: E402
from npcrl.sim.ordered import session_options_for  # noqa: E402


@dataclass
class Played:
    seconds: float
    lines: int
    prefilled: int
    """prompt tokens run through the model outside one-token decode steps"""
    prompt_tokens: float
    """mean prompt length of the logged turns"""
    conversations: list[tuple[str, ...]]
    rows: PassRows


@dataclass
class PassRows:
    """Rows of the batched decode passes since the last ``reset``."""

    passes: int = 0
    stepped: int = 0
    computed: int = 0
    """pool rows run: the span of each pass's stepping slots, idle rows between them included"""

    def reset(self) -> None:
        self.passes = self.stepped = self.computed = 0

    def snapshot(self) -> PassRows:
        return PassRows(self.passes, self.stepped, self.computed)


def count_pass_rows() -> PassRows:
    """Counts every batched decode pass from now on (each pass over a range of pool rows)."""
    counts = PassRows()
    step_rows = OnnxCausalLM._step_rows

    def counting(model: OnnxCausalLM, lo: int, hi: int, tokens: dict[int, int]) -> dict[int, Any]:
        counts.passes += 1
        counts.stepped += sum(1 for slot in tokens if lo <= slot <= hi)
        counts.computed += hi - lo + 1
        return step_rows(model, lo, hi, tokens)

    OnnxCausalLM._step_rows = counting  # type: ignore[method-assign]
    return counts


def play(model: OnnxCausalLM, args, concurrency: int, margin: int, logs: Path, counts: PassRows) -> Played:
    """One seeded run."""
    played: list[tuple[str, ...]] = []
    counts.reset()
    config = with_sampler(replace(AgentConfig(), history_drop_margin=margin), max_new_tokens=args.max_new_tokens)
    prefilled = count_prefilled(model)
    with PlayLogWriter(logs) as writer:
        summary = simulate(
            model,
            builtin_personas(),
            builtin_profiles(),
            writer,
            args.conversations,
            args.seed,
            agent_config=config,
            on_conversation=lambda c: played.append(lines_of(c)),
            concurrency=concurrency,
        )
    prompts = [len(r.prompt_ids) for r in read_log_dir(logs) if isinstance(r, NpcTurn)]
    return Played(
        summary.seconds, summary.turns, prefilled[0], sum(prompts) / max(1, len(prompts)), played, counts.snapshot()
    )


def count_prefilled(model: OnnxCausalLM) -> list[int]:
    """A counter of the tokens every ``forward`` of more than one token feeds from now on."""
    counter = [0]
    forward = OnnxCausalLM.forward

    def counting(token_ids, cache, all_logits=False):  # type: ignore[no-untyped-def]
        if len(token_ids) > 1:
            counter[0] += len(token_ids)
        return forward(model, token_ids, cache, all_logits)

    model.forward = counting  # type: ignore[method-assign]
    return counter


def lines_of(conversation: SimulatedConversation) -> tuple[str, ...]:
    return tuple(turn.npc_text for turn in conversation.turns)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_dir("q8"))
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--margins",
        default=f"0,{AgentConfig().history_drop_margin}",
        help="history_drop_margin values to compare, comma-separated (default: 0 and the default)",
    )
    parser.add_argument(
        "--split-gaps",
        default=str(SessionOptions().batch_split_gap),
        help="SessionOptions.batch_split_gap values to compare at --concurrency, comma-separated",
    )
    args = parser.parse_args()
    margins = [int(m) for m in args.margins.split(",")]
    gaps = [int(g) for g in args.split_gaps.split(",")]
    counts = count_pass_rows()
    model = OnnxCausalLM(args.bundle, session_options_for(args.concurrency))
    runs: dict[tuple[int, int, int], Played] = {}  # (margin, concurrency, split gap)
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: the personas' prefixes are computed once per model and the KV pool's pages are
        # touched once; without it the first timed row would pay both.
        warm = argparse.Namespace(**{**vars(args), "conversations": 8, "max_new_tokens": 4})
        play(model, warm, args.concurrency, margins[0], Path(tmp) / "warm-up", counts)
        for margin in margins:
            runs[margin, 1, 0] = play(model, args, 1, margin, Path(tmp) / f"m{margin}c1", counts)
            for gap in gaps:
                model.options = replace(model.options, batch_split_gap=gap)  # read at every pass
                runs[margin, args.concurrency, gap] = play(
                    model, args, args.concurrency, margin, Path(tmp) / f"m{margin}g{gap}", counts
                )
    print(f"bundle {model.bundle_id} ({args.bundle}); seed {args.seed}, max_new_tokens {args.max_new_tokens}")
    print_runs(runs, args.conversations, margins[0])
    same = True
    for (margin, concurrency, gap), run in runs.items():
        if concurrency == 1:
            continue
        serial = runs[margin, 1, 0].conversations
        equal = sum(a == b for a, b in zip(serial, run.conversations, strict=True))
        print(f"margin {margin}, split gap {gap}: same conversations as one at a time: {equal} of {len(serial)}")
        same = same and equal == len(serial)
    prompt = round(runs[margins[-1], args.concurrency, gaps[0]].prompt_tokens)
    ceiling(args.bundle, prompt, args.concurrency)
    return 0 if same else 1


def print_runs(runs: dict[tuple[int, int, int], Played], conversations: int, first_margin: int) -> None:
    """The table (split gap "-" for one at a time), then each concurrent run's batched passes."""
    first = runs[first_margin, 1, 0].seconds
    rows = []
    for (margin, concurrency, gap), run in runs.items():
        per_hour = conversations * 3600 / run.seconds
        split = "-" if concurrency == 1 else str(gap)
        rows.append(
            f"{margin:>6d} {concurrency:>11d} {split:>9s} {conversations:>13d} {run.lines:>9d} {run.prefilled:>10d} "
            f"{run.seconds:>9.1f} {per_hour:>16.0f} {run.lines / run.seconds:>9.2f} {first / run.seconds:>8.2f} "
            f"{runs[margin, 1, 0].seconds / run.seconds:>8.2f}"
        )
    print_table(
        f"{'margin':>6s} {'concurrency':>11s} {'split gap':>9s} {'conversations':>13s} {'NPC lines':>9s} "
        f"{'prefilled':>10s} {'seconds':>9s} {'conversations/h':>16s} {'lines/s':>9s} {'vs first':>8s} {'vs c1':>8s}",
        rows,
    )
    for (margin, concurrency, gap), run in runs.items():
        passes = run.rows
        if concurrency > 1 and passes.passes:
            print(
                f"margin {margin}, concurrency {concurrency}, split gap {gap}: {passes.passes} batched decode"
                f" passes, {passes.stepped / passes.passes:.2f} rows stepping and"
                f" {passes.computed / passes.passes:.2f} pool rows computed per pass"
                f" ({1 - passes.stepped / passes.computed:.0%} idle)"
            )


def ceiling(bundle: Path, prompt_tokens: int, rows: int) -> None:
    """The decode graph's own limit: N rows in one step against one row, after a prompt this long."""
    from tokenizers import Tokenizer

    from bench.bench_generation import PERSONA

    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    text = tokenizer.encode(f"<|im_start|>system\n{PERSONA}<|im_end|>\n").ids
    prompt = (text * (prompt_tokens // len(text) + 1))[:prompt_tokens]
    steps = batched_steps(bundle, prompt, (1, rows))
    ratio = rows * steps[1] / steps[rows]
    print(
        f"decode graph after {prompt_tokens} prompt tokens: 1 row {steps[1]:.1f} ms, {rows} rows {steps[rows]:.1f} ms "
        f"per step: at most {ratio:.2f}x the tokens per second of one line, if nothing else ran"
    )


if __name__ == "__main__":
    sys.exit(main())
