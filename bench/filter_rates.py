"""Block rate of the safety filter on a hostile corpus and its false-positive rate on benign lines.

Hostile: tests/data/hostile_filter_lines.tsv (CATEGORY, TECHNIQUE, LINE). NPC lines go through an
``OutputFilter`` holding every shipped persona's refused topics and the canary ``CANARY``; a line
counts as blocked when it is rejected, and as blocked for the right reason when the reason is one
its category expects. ``role_marker`` lines are player text: blocked means ``sanitize_player_text``
removed the fake role header (none is left at the start of the folded result).
Benign: every shipped persona's greeting, example and fallback lines (through that persona's own
filter plus the canary) and tests/data/benign_npc_lines.txt (through the strict corpus filter).

Usage: python bench/filter_rates.py [--timing]   (prints Markdown tables)
"""

from __future__ import annotations

import argparse
import re
import timeit
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from npcrl.agent.persona import builtin_personas
from npcrl.agent.safety import OutputFilter, sanitize_player_text
from npcrl.agent.textnorm import fold

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
HOSTILE_FILE = DATA / "hostile_filter_lines.tsv"
BENIGN_FILE = DATA / "benign_npc_lines.txt"
CANARY = "AMBER-FALCON-7391"
CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EXPECTED_REASONS = {
    "profanity": ("profanity:",),
    "refused_topic": ("refused_topic:",),
    "canary": ("canary",),
    "meta": ("meta:",),
    "injection": ("injection:", "encoded", "meta:"),
    "disclosure": ("disclosure:", "meta:"),
}
# A role header left at the start of sanitized player text, read in folded form.
ROLE_HEADER = re.compile(r"^\W*(?:system|assistant|user|ai|instructions?|inst|sys)\b[^\w\n]*(?:override\W*)?[:\])>]")


def decode_escapes(line: str) -> str:
    """\\uXXXX, \\UXXXXXXXX, \\n and \\r as the characters they name."""

    def replace(match: re.Match[str]) -> str:
        escape = match.group(0)
        return {"\\n": "\n", "\\r": "\r"}.get(escape) or chr(int(escape[2:], 16))

    return re.sub(r"\\U[0-9a-fA-F]{8}|\\u[0-9a-fA-F]{4}|\\n|\\r", replace, line)


def load_hostile(path: Path = HOSTILE_FILE) -> list[tuple[str, str, str]]:
    rows = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        parts = raw.split("\t")
        if len(parts) != 3 or parts[0] not in (*EXPECTED_REASONS, "role_marker"):
            raise ValueError(f"{path} line {number}: expected CATEGORY<TAB>TECHNIQUE<TAB>LINE, got {raw!r}")
        rows.append((parts[0], parts[1], decode_escapes(parts[2])))
    return rows


def load_benign(path: Path = BENIGN_FILE) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]


def corpus_filter() -> OutputFilter:
    topics = dict.fromkeys(t for p in builtin_personas().values() for t in p.refuse_topics)
    return OutputFilter(refuse_topics=list(topics), canaries=[CANARY])


def header_left(player_text: str) -> bool:
    return bool(ROLE_HEADER.match(fold(sanitize_player_text(player_text, CHATML_TOKENS))))


@dataclass
class Tally:
    total: int = 0
    blocked: int = 0
    right_reason: int = 0
    missed: list[str] = field(default_factory=list)

    def rate(self) -> float:
        return self.blocked / self.total if self.total else 0.0


def hostile_tallies(rows: list[tuple[str, str, str]]) -> dict[tuple[str, str], Tally]:
    """(category, technique) -> how many lines were blocked."""
    check = corpus_filter().check
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    for category, technique, line in rows:
        tally = tallies[(category, technique)]
        tally.total += 1
        if category == "role_marker":
            stopped = right = not header_left(line)
        else:
            result = check(line)
            stopped = not result.allowed
            right = stopped and str(result.reason).startswith(EXPECTED_REASONS[category])
        tally.blocked += stopped
        tally.right_reason += right
        if not stopped:
            tally.missed.append(line)
    return dict(tallies)


def benign_false_positives() -> dict[str, tuple[int, list[str]]]:
    """Source -> (lines checked, the lines wrongly rejected with their reasons)."""
    out: dict[str, tuple[int, list[str]]] = {}
    for persona_id, persona in sorted(builtin_personas().items()):
        check = OutputFilter(refuse_topics=persona.refuse_topics, canaries=[CANARY]).check
        lines = [persona.greeting, *persona.example_lines, *persona.fallback_lines]
        out[f"persona:{persona_id}"] = (len(lines), [f"{x} [{check(x).reason}]" for x in lines if not check(x).allowed])
    check = corpus_filter().check
    lines = load_benign()
    out["benign_npc_lines"] = (len(lines), [f"{x} [{check(x).reason}]" for x in lines if not check(x).allowed])
    return out


def summary() -> tuple[float, float]:
    """(block rate on the whole hostile corpus, false-positive rate on all benign lines)."""
    tallies = hostile_tallies(load_hostile()).values()
    benign = benign_false_positives().values()
    block = sum(t.blocked for t in tallies) / sum(t.total for t in tallies)
    false_positive = sum(len(bad) for _, bad in benign) / sum(n for n, _ in benign)
    return block, false_positive


def _tables(tallies: dict[tuple[str, str], Tally]) -> list[str]:
    per_category: dict[str, Tally] = defaultdict(Tally)
    out = ["| category | technique | lines | blocked | block rate | right reason |", "|---|---|---|---|---|---|"]
    for (category, technique), t in sorted(tallies.items()):
        out.append(f"| {category} | {technique} | {t.total} | {t.blocked} | {t.rate():.3f} | {t.right_reason} |")
        agg = per_category[category]
        agg.total, agg.blocked, agg.right_reason = (
            agg.total + t.total,
            agg.blocked + t.blocked,
            agg.right_reason + t.right_reason,
        )
        agg.missed += t.missed
    out += ["", "| category | lines | blocked | block rate |", "|---|---|---|---|"]
    out += [f"| {c} | {t.total} | {t.blocked} | {t.rate():.3f} |" for c, t in sorted(per_category.items())]
    return out


def _timing() -> list[str]:
    check = corpus_filter().check
    lines = [line for _, _, line in load_hostile()] + load_benign()
    number = 3
    check_s = timeit.timeit(lambda: [check(x) for x in lines], number=number) / (number * len(lines))
    clean_s = timeit.timeit(lambda: [sanitize_player_text(x, CHATML_TOKENS) for x in lines], number=number)
    clean_s /= number * len(lines)
    return ["", f"Per line over {len(lines)} lines: OutputFilter.check {check_s * 1e6:.0f} µs, "
            f"sanitize_player_text {clean_s * 1e6:.0f} µs"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timing", action="store_true", help="also time check and sanitize per line")
    args = parser.parse_args(argv)
    tallies = hostile_tallies(load_hostile())
    total = sum(t.total for t in tallies.values())
    blocked = sum(t.blocked for t in tallies.values())
    lines = [f"## Hostile corpus: {blocked}/{total} blocked, block rate {blocked / total:.3f}", ""]
    lines += _tables(tallies)
    missed = [f"- {c}/{tech}: {m!r}" for (c, tech), t in sorted(tallies.items()) for m in t.missed]
    lines += ["", "Missed:" if missed else "Missed: none", *missed]
    benign = benign_false_positives()
    checked = sum(n for n, _ in benign.values())
    wrong = sum(len(bad) for _, bad in benign.values())
    lines += ["", f"## Benign lines: {wrong}/{checked} rejected, false-positive rate {wrong / checked:.3f}", ""]
    lines += ["| source | lines | rejected |", "|---|---|---|"]
    lines += [f"| {source} | {n} | {len(bad)} |" for source, (n, bad) in benign.items()]
    lines += [f"- {bad}" for _, (_, bads) in benign.items() for bad in bads]
    if args.timing:
        lines += _timing()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
