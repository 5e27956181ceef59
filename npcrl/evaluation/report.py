"""Side-by-side evaluation of bundles: a terminal table, and a PNG plus a self-contained HTML page.

``rows`` maps a metric label to its value per bundle: ``{"reward / turn": {"base": 0.21,
"candidate": 0.26}, ...}``. A value is a number, or ``(estimate, low, high)`` for a metric with a
confidence interval. ``LogMetrics.as_dict`` gives one bundle's column; ``rows_from_columns``
turns columns into rows.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping
from pathlib import Path

Value = float | tuple[float, float, float]
Rows = Mapping[str, Mapping[str, Value]]

PNG_NAME = "evaluation.png"
HTML_NAME = "evaluation.html"
_MISSING = "-"


def rows_from_columns(columns: Mapping[str, Mapping[str, Value]]) -> dict[str, dict[str, Value]]:
    """``{bundle: {metric: value}}`` -> ``{metric: {bundle: value}}``, metrics in first-seen order."""
    rows: dict[str, dict[str, Value]] = {}
    for bundle, metrics in columns.items():
        for metric, value in metrics.items():
            rows.setdefault(metric, {})[bundle] = value
    return rows


def _columns(rows: Rows) -> list[str]:
    columns: list[str] = []
    for values in rows.values():
        columns += [name for name in values if name not in columns]
    return columns


def _estimate(metric: str, value: Value) -> float:
    if isinstance(value, tuple):
        if len(value) != 3:
            raise ValueError(f"metric {metric!r}: an interval value is (estimate, low, high), got {value!r}")
        return float(value[0])
    return float(value)


def _number(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.0f}"


def format_value(metric: str, value: Value | None) -> str:
    """A cell: ``0.3125``, ``12``, ``0.41 [0.30, 0.52]`` for an interval, ``n/a`` for NaN, ``-`` if absent."""
    if value is None:
        return _MISSING
    if isinstance(value, tuple):
        estimate = _estimate(metric, value)
        return f"{_number(estimate)} [{_number(float(value[1]))}, {_number(float(value[2]))}]"
    return _number(float(value))


def _delta(metric: str, first: Value | None, second: Value | None) -> str:
    if first is None or second is None:
        return _MISSING
    diff = _estimate(metric, second) - _estimate(metric, first)
    return "n/a" if math.isnan(diff) else ("+" if diff >= 0 else "") + _number(diff)


def table_cells(rows: Rows) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the comparison table as strings: the metric, one column per bundle, and
    ``delta (second - first)`` of the estimates when exactly two bundles are compared."""
    columns = _columns(rows)
    header = ["metric", *columns]
    two = len(columns) == 2
    if two:
        header.append(f"delta ({columns[1]} - {columns[0]})")
    body = []
    for metric, values in rows.items():
        line = [metric, *(format_value(metric, values.get(c)) for c in columns)]
        if two:
            line.append(_delta(metric, values.get(columns[0]), values.get(columns[1])))
        body.append(line)
    return header, body


def compare_table(rows: Rows) -> str:
    """A plain-text table for the terminal: one row per metric, one column per bundle, and a delta
    column (second minus first, on the estimates) when exactly two bundles are compared."""
    header, body = table_cells(rows)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        cells = [line[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


def _plot(rows: Rows, title: str, path: Path) -> None:
    """One small bar chart per metric, bars per bundle, interval metrics with error bars."""
    import matplotlib

    matplotlib.use("Agg")  # headless: reports are written on servers and in tests
    import matplotlib.pyplot as plt

    columns = _columns(rows)
    metrics = list(rows)
    ncols = min(4, max(1, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows + 0.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values = rows[metric]
        names = [c for c in columns if c in values]
        heights = [_estimate(metric, values[c]) for c in names]
        # Error bars as distances below and above the estimate, as matplotlib wants them.
        low, high = [], []
        for name, height in zip(names, heights, strict=True):
            value = values[name]
            low.append(height - float(value[1]) if isinstance(value, tuple) else 0.0)
            high.append(float(value[2]) - height if isinstance(value, tuple) else 0.0)
        has_interval = any(isinstance(values[c], tuple) for c in names)
        ax.bar(
            names,
            [0.0 if math.isnan(h) else h for h in heights],
            color=[colors[columns.index(c) % len(colors)] for c in names],
            yerr=[low, high] if has_interval else None,
            capsize=4 if has_interval else 0,
        )
        for position, height in enumerate(heights):
            if math.isnan(height):  # drawn as an empty bar; say why rather than show a zero
                ax.text(position, 0.0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _html_page(rows: Rows, title: str, png: bytes | None, missing_reason: str | None) -> str:
    header, body = table_cells(rows)
    head_cells = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body_rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>\n" for line in body)
    if png is not None:
        figure = f'<img alt="metric charts" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    else:
        figure = f'<p class="note">No charts: {html.escape(missing_reason or "unavailable")}.</p>'
    has_interval = any(isinstance(v, tuple) for values in rows.values() for v in values.values())
    note = (
        "<p>Values in brackets are confidence intervals (engagement: 95% percentile bootstrap over conversations)."
        "</p>\n"
        if has_interval
        else ""
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #bbb;padding:4px 10px}td:not(:first-child){text-align:right;"
        "font-variant-numeric:tabular-nums}th{background:#eee}img{max-width:100%}.note{color:#a40}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<table><thead><tr>{head_cells}</tr></thead><tbody>\n{body_rows}</tbody></table>\n"
        f"{note}{figure}\n</body></html>\n"
    )


def write_report(out_dir: str | os.PathLike[str], rows: Rows, title: str) -> tuple[Path | None, Path]:
    """Write ``evaluation.png`` (bar charts, error bars for interval metrics) and ``evaluation.html``
    (the table with the PNG embedded as base64, so the page is one file to share) into ``out_dir``.

    Returns (PNG path, HTML path). matplotlib is optional at runtime: without it the PNG is
    skipped, the first item is None and the page says why."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png_path: Path | None = out / PNG_NAME
    png: bytes | None = None
    missing_reason: str | None = None
    try:
        import matplotlib  # noqa: F401  (only probing whether charts can be drawn)
    except ImportError:
        png_path = None
        missing_reason = "matplotlib is not installed (pip install matplotlib to get them)"
    if png_path is not None:
        _plot(rows, title, png_path)
        png = png_path.read_bytes()
    html_path = out / HTML_NAME
    html_path.write_text(_html_page(rows, title, png, missing_reason), encoding="utf-8")
    return png_path, html_path
