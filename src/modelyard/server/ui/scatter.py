"""A cost-quality scatter chart drawn on the server: a pure function of its points, returning markup safe to
embed (every label is escaped here: a policy or model name is operator-chosen; colours are CSS classes)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

#: A point: (label, x: cost per 1000 tasks in USD, y: mean quality, kind: the CSS class `point`, `point-alt`
#: or `point-base`).
ScatterPoint = tuple[str, float | None, float | None, str]
_KINDS = frozenset({"point", "point-alt", "point-base"})
_ORDER = {"point-base": 0, "point-alt": 1, "point": 2}


def _axis_top(value: float) -> float:
    """A round axis maximum at or above `value` whose quarters are round too (27 → 30, not 50)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 1.2, 1.6, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0):
        top = step * 10.0**exponent
        if top >= value:
            return top
    return 10.0 ** (exponent + 1)


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.3g}"


def scatter(
    points: Sequence[ScatterPoint],
    *,
    width: int = 960,
    height: int = 360,
    title: str = "Cost per 1000 tasks vs mean quality",
) -> Markup:
    """One dot per policy at (cost per 1000 tasks, mean quality), labelled; points without both figures (a
    policy that routed nothing) are left out and named below the plot."""
    left, right, top, bottom = 56, 16, 24, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    shown = [
        (label, float(x), float(y), kind if kind in _KINDS else "point")
        for label, x, y, kind in points
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    missing = [label for label, x, y, _ in points if not any(label == s[0] for s in shown)]
    out = [f'<svg class="chart scatter" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">']
    out.append(f'<text x="{left}" y="14">{escape(title)}</text>')
    x_max = _axis_top(1.08 * max((x for _, x, _, _ in shown), default=0.0))  # room for the dearest label
    y_max = 1.0 if all(y <= 1.0 for _, _, y, _ in shown) else _axis_top(max(y for _, _, y, _ in shown))

    def px(x: float) -> float:
        return left + max(0.0, x) / x_max * plot_w

    def py(y: float) -> float:
        return top + plot_h - max(0.0, y) / y_max * plot_h

    for i in range(5):
        y_value = y_max * i / 4
        y = py(y_value)
        out.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{y_value:.2f}</text>')
        x_value = x_max * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(
            f'<text x="{px(x_value):.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}">{escape(_usd(x_value))}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">cost per 1000 tasks (USD) · '
        "up: better quality, left: cheaper</text>"
    )
    # Points on the same spot (a policy that routes everything to one model IS that model's baseline) share one
    # label; the edited policy is drawn last, so it stays visible on top.
    spots: dict[tuple[int, int], list[tuple[str, float, float, str]]] = {}
    for point in sorted(shown, key=lambda p: _ORDER[p[3]]):
        spots.setdefault((round(px(point[1]) / 4), round(py(point[2]) / 4)), []).append(point)
    for group in spots.values():
        label = ", ".join(p[0] for p in reversed(group))
        first = group[-1]
        cx, cy = px(first[1]), py(first[2])
        anchor = "end" if cx > left + plot_w * 0.7 else "start"
        dx = -9 if anchor == "end" else 9
        text = escape(label)
        circles = "".join(
            f'<circle class="{kind}" cx="{cx:.1f}" cy="{cy:.1f}" r="{6 if kind == "point" else 5}">'
            f"<title>{escape(name)}: {escape(_usd(x))} per 1000 tasks, quality {y:.3f}</title></circle>"
            for name, x, y, kind in group
        )
        out.append(
            f'<g class="dot" data-label="{text}">{circles}'
            f'<text x="{cx + dx:.1f}" y="{cy - 8:.1f}" text-anchor="{anchor}">{text}</text></g>'
        )
    if missing:
        names = escape(", ".join(missing))
        out.append(f'<text x="{width - right}" y="14" text-anchor="end">not plotted (nothing routed): {names}</text>')
    out.append("</svg>")
    return Markup("".join(out))
