"""What the benchmark scripts share."""

from __future__ import annotations

from collections.abc import Iterable


def print_table(header: str, rows: Iterable[str]) -> None:
    """A results table: the header, a rule as wide as it, then one formatted line per row."""
    print(header)
    print("-" * len(header))
    for row in rows:
        print(row)
