"""SVG charts drawn on the server: pure functions of their data, returning markup safe to embed.

Every text that reaches the SVG is escaped here (a model or key name is client- or operator-chosen);
colours come from CSS classes (static/ui.css), never from inline style, so the CSP needs no
'unsafe-inline'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

Point = tuple[float, float | None]


def _nice_max(value: float) -> float:
    """A round axis maximum at or above `value`."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        top = step * 10.0**exponent
        if top >= value:
            return top
    return 10.0 ** (exponent + 1)


def _time_label(t: float, span: float) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    return moment.strftime("%m-%d %H:%M" if span > 2 * 86400 else "%H:%M")


def _lines(points: Sequence[tuple[float, float] | None], index: int) -> list[str]:
    """One series as polylines broken at its gaps (None); a lone point as a dot."""
    runs: list[list[str]] = [[]]
    for point in points:
        if point is not None:
            runs[-1].append(f"{point[0]:.1f},{point[1]:.1f}")
        elif runs[-1]:
            runs.append([])
    out = []
    for run in runs:
        if len(run) == 1:
            cx, cy = run[0].split(",")
            out.append(f'<circle class="legend-{index % 3}" cx="{cx}" cy="{cy}" r="2.5"/>')
        elif run:
            out.append(f'<polyline class="series-{index % 3}" points="{" ".join(run)}"/>')
    return out


def line_chart(
    series: Sequence[tuple[str, Sequence[Point]]],
    *,
    width: int = 640,
    height: int = 200,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    title: str = "",
    whole: bool = False,
) -> Markup:
    """Lines over time (x: unix seconds), one per named series; gaps (None) break a line. `whole`: the values
    are counts (the axis keeps whole-number ticks)."""
    left, right, top, bottom = 64, 12, 22, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for _, points in series for x, _ in points]
    ys = [y for _, points in series for _, y in points if y is not None and math.isfinite(y)]
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">']
    if title:
        out.append(f'<text x="{left}" y="14">{escape(title)}</text>')
    if not xs:
        out.append(f'<text x="{left}" y="{top + plot_h / 2:.0f}">no traffic in this range</text></svg>')
        return Markup("".join(out))
    x0, x1 = min(xs), max(xs)
    span = max(x1 - x0, 1.0)
    y_max = _nice_max(max(ys) if ys else 0.0)
    if whole and y_max < 4:
        y_max = 4.0  # counts: every tick a whole number (not 0, 0, 0, 1, 1 for a maximum of 1)

    def px(x: float) -> float:
        return left + (x - x0) / span * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y / y_max) * plot_h

    for i in range(5):
        value = y_max * i / 4
        y = py(value)
        out.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(value))}</text>')
    for i in range(5):
        x = x0 + span * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        label = escape(_time_label(x, span))
        out.append(f'<text x="{px(x):.1f}" y="{height - 8}" text-anchor="{anchor}">{label}</text>')
    legend_x = width - right
    for index, (name, points) in enumerate(series):
        drawn = [(px(at), py(level)) if level is not None and math.isfinite(level) else None for at, level in points]
        out.extend(_lines(drawn, index))
        if len(series) > 1:
            label = escape(name)
            out.append(f'<text x="{legend_x}" y="14" text-anchor="end" class="legend-{index % 3}">{label}</text>')
            legend_x -= 8 + 7 * len(name)
    out.append("</svg>")
    return Markup("".join(out))


def share_bar(used: float | None, limit: float | None) -> Markup:
    """A horizontal bar: `used` of `limit` (amber from 80%, red at or over the limit)."""
    if used is None or limit is None or not math.isfinite(used) or not math.isfinite(limit) or limit <= 0:
        return Markup("")
    share = max(0.0, used / limit)
    level = " over" if share >= 1 else " high" if share >= 0.8 else ""
    percent = min(100, round(share * 100))
    # The width is an SVG attribute (a style attribute would need CSP 'unsafe-inline').
    return Markup(
        f'<svg class="chart bar{level}" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
        f'aria-label="{percent}% of the budget"><rect x="0" y="0" width="100" height="8" fill="#eef0f3"/>'
        f'<rect class="{"attempt-error" if level == " over" else "state-running" if level else "legend-0"}" '
        f'x="0" y="0" width="{percent}" height="8"/></svg>'
    )


def time_axis(left: float, plot_w: float, top: float, height: float, label: Callable[[int], str]) -> list[str]:
    """Five vertical grid lines across a time chart and their labels (`label(i)` for i in 0..4)."""
    out = []
    for i in range(5):
        x = left + plot_w * i / 4
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 20}"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">{escape(label(i))}</text>')
    return out


def waterfall(attempts: Sequence[dict[str, Any]], total_ms: float, *, width: int = 760) -> Markup:
    """One bar per attempt on the request's time axis: where it started, how long it took, how it ended."""
    row, left, right, top = 26, 210, 90, 20
    height = top + row * max(1, len(attempts)) + 24
    span = max([total_ms, *[float(a.get("start_ms", 0)) + float(a.get("ms", 0)) for a in attempts], 1.0])
    plot_w = width - left - right
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="attempts">']
    out += time_axis(left, plot_w, top - 6, height, lambda i: f"{span * i / 4:,.0f} ms")
    for index, attempt in enumerate(attempts):
        y = top + index * row
        start = max(0.0, float(attempt.get("start_ms", 0.0)))
        length = max(0.0, float(attempt.get("ms", 0.0)))
        outcome = str(attempt.get("outcome", ""))
        kind = "ok" if outcome == "ok" else "cancelled" if outcome in ("cancelled", "pending") else "error"
        label = f"{attempt.get('deployment', '?')}{' (hedge)' if attempt.get('hedge') else ''}"
        x = left + start / span * plot_w
        w = max(2.0, length / span * plot_w)
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect class="attempt-{kind}" x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="16" rx="3"/>')
        out.append(f'<text x="{x + w + 6:.1f}" y="{y + 15}">{escape(outcome)} · {length:,.0f} ms</text>')
    out.append("</svg>")
    return Markup("".join(out))
