"""Wall time per phase of a training run: where ``npcrl train`` spends its time.

Phases nest: time spent in an inner phase counts for the inner one only, so the phases of a run
never sum to more than its wall time (what no phase covers is reported as ``other``). Each
iteration's own split goes into its metrics line (``phases_s``); the run's totals go into
``run.json`` and the report. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# Phases of one PPO iteration, in the order they run.
ITERATION_PHASES = ("sampling", "scoring", "reference", "advantages", "update", "checkpoint")
# Phases of the whole run outside the iterations.
RUN_PHASES = ("setup", "off_policy", "samples", "final_checkpoint", "export", "report")


class PhaseTimer:
    """Accumulates wall seconds per named phase, over the run and over the current iteration."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._iteration: dict[str, float] = {}
        self._inner: list[float] = []
        """per open phase, the seconds its inner phases took (subtracted from its own)"""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            inner = self._inner.pop()
            self._add(name, elapsed - inner)
            if self._inner:
                self._inner[-1] += elapsed

    def _add(self, name: str, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.totals[name] = self.totals.get(name, 0.0) + seconds
        self._iteration[name] = self._iteration.get(name, 0.0) + seconds

    def take_iteration(self) -> dict[str, float]:
        """The seconds of each iteration phase since the last call (0 for one that did not run)."""
        taken = {name: self._iteration.get(name, 0.0) for name in ITERATION_PHASES}
        self._iteration = {}
        return taken

    def summary(self, wall_s: float) -> dict[str, float]:
        """Every phase's total seconds (0 for one that did not run), plus ``other``: the rest of ``wall_s``."""
        names = [*RUN_PHASES[:1], *ITERATION_PHASES, *RUN_PHASES[1:]]
        out = {name: self.totals.get(name, 0.0) for name in names}
        out.update({name: value for name, value in self.totals.items() if name not in out})
        out["other"] = max(wall_s - sum(out.values()), 0.0)
        return out


def format_summary(phases: dict[str, float], wall_s: float) -> str:
    """A table of the phases that took time, largest first, with their share of ``wall_s``."""
    rows = sorted(((v, k) for k, v in phases.items() if v > 0), reverse=True)
    share = wall_s if wall_s > 0 else 1.0
    lines = [f"time by phase ({wall_s:.1f} s in all):"]
    lines += [f"  {name:<17}{seconds:9.1f} s {100 * seconds / share:5.1f}%" for seconds, name in rows]
    return "\n".join(lines)


def resident_gb() -> float | None:
    """This process's resident memory now, in GB (Linux's ``/proc``; None where there is none)."""
    import os

    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9
