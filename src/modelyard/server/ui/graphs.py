"""A workflow run drawn on the server: its step graph and its timeline, as SVG markup safe to embed.

Pure functions of the admin API's run data. Every label is escaped here (step ids, model names and notes
come from a run store file another process wrote), and colours are CSS classes (static/ui.css:
`state-finished|failed|running|pending|skipped`), never inline style, so the CSP needs no 'unsafe-inline'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup, escape

from modelyard.server.ui.charts import time_axis

#: A step's state (workflows/records.py StepState) → the colour class it is drawn with.
_STATE_CLASS = {
    "succeeded": "finished",
    "failed": "failed",
    "cancelled": "failed",
    "running": "running",
    "pending": "pending",
    "interrupted": "pending",
    "skipped": "skipped",
    "blocked": "skipped",
    "stopped": "skipped",
}


def state_class(state: str) -> str:
    """`state-finished|failed|running|pending|skipped` for a step state (unknown states: pending)."""
    return "state-" + _STATE_CLASS.get(state, "pending")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def layers(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Each node's depth: the longest chain of edges from a node nothing points to. Bounded by the node count,
    so a cycle in a tampered store cannot loop forever (its nodes stop growing at that bound)."""
    known = set(nodes)
    depth = dict.fromkeys(nodes, 0)
    usable = [(a, b) for a, b in edges if a in known and b in known and a != b]
    for _ in range(len(nodes)):
        changed = False
        for a, b in usable:
            if depth[b] < depth[a] + 1 and depth[a] + 1 < len(nodes):
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    return depth


def dag(
    nodes: Sequence[Mapping[str, Any]],
    edges: Sequence[Mapping[str, Any]],
    *,
    node_w: int = 150,
    node_h: int = 40,
    gap_x: int = 60,
    gap_y: int = 18,
    min_width: int = 600,
) -> Markup:
    """The step graph, left to right by depth: one box per node (`id`, `state`, optional `kind`, `items`,
    `iterations`, `model`), coloured by state; one arrow per edge (`from` → `to`: a step and a step it needs)."""
    ids = [str(n.get("id", "")) for n in nodes]
    pairs = [(str(e.get("from", "")), str(e.get("to", ""))) for e in edges]
    depth = layers(ids, pairs)
    columns: dict[int, list[int]] = {}
    for index, node_id in enumerate(ids):
        columns.setdefault(depth[node_id], []).append(index)
    rows = max((len(c) for c in columns.values()), default=1)
    pad = 10
    # At least `min_width` wide, so a graph of two boxes is not blown up to the panel's width.
    width = max(min_width, pad * 2 + max(1, len(columns)) * (node_w + gap_x) - gap_x)
    height = pad * 2 + rows * (node_h + gap_y) - gap_y
    where: dict[str, tuple[float, float]] = {}
    for column, members in columns.items():
        offset = (rows - len(members)) * (node_h + gap_y) / 2
        for row, index in enumerate(members):
            where[ids[index]] = (pad + column * (node_w + gap_x), pad + offset + row * (node_h + gap_y))
    out = [
        f'<svg class="chart dag" viewBox="0 0 {width} {height:.0f}" role="img" aria-label="step graph">',
        '<defs><marker id="dag-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#98a2b3"/></marker></defs>',
    ]
    if not ids:
        out.append(f'<text x="{pad}" y="{pad + 14}">no steps</text></svg>')
        return Markup("".join(out))
    for a, b in pairs:
        if a not in where or b not in where or a == b:
            continue
        (ax, ay), (bx, by) = where[a], where[b]
        x1, y1, x2, y2 = ax + node_w, ay + node_h / 2, bx, by + node_h / 2
        if x2 <= x1:  # an edge against the layering (a cycle): route it below the boxes
            x1, x2 = ax + node_w / 2, bx + node_w / 2
            y1, y2 = ay + node_h, by + node_h
        bend = max(20.0, (x2 - x1) / 2)
        out.append(
            f'<path class="edge" data-edge="{escape(a)}→{escape(b)}" marker-end="url(#dag-arrow)" '
            f'd="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"/>'
        )
    for node, node_id in zip(nodes, ids, strict=True):
        x, y = where[node_id]
        state = str(node.get("state", "pending"))
        detail = _detail(node)
        tip = f"{node_id}: {state}" + (f" ({detail})" if detail else "")
        out.append(f'<g class="node" data-node="{escape(node_id)}" data-state="{escape(state)}">')
        out.append(f"<title>{escape(tip)}</title>")
        out.append(
            f'<rect class="{state_class(state)}" x="{x:.1f}" y="{y:.1f}" width="{node_w}" height="{node_h}" rx="6"/>'
        )
        label_y = y + (node_h / 2 - 2 if detail else node_h / 2 + 4)
        out.append(
            f'<text class="node-label" x="{x + node_w / 2:.1f}" y="{label_y:.1f}" text-anchor="middle">'
            f"{escape(_short(node_id, 20))}</text>"
        )
        if detail:
            out.append(
                f'<text class="node-label" x="{x + node_w / 2:.1f}" y="{y + node_h - 7:.1f}" '
                f'text-anchor="middle">{escape(_short(detail, 24))}</text>'
            )
        out.append("</g>")
    out.append("</svg>")
    return Markup("".join(out))


def _detail(node: Mapping[str, Any]) -> str:
    """The second line of a box: a fan-out's item count, a loop's rounds, a skip."""
    kind, state = node.get("kind"), node.get("state")
    if kind == "foreach":
        return f"fan-out: {_int(node.get('items'))} items"
    if kind == "loop":
        return f"loop: {_int(node.get('iterations'))} rounds"
    if state == "skipped":
        return "skipped (when)"
    if state == "blocked":
        return "blocked"
    return ""


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def gantt(bars: Sequence[Mapping[str, Any]], *, width: int = 900, row: int = 20) -> Markup:
    """One bar per entry (`key`, `label`, `state`, `start_s`, `end_s` on the run's time axis in seconds,
    `depth` to indent fan-out items and loop rounds); entries without both times get a label and no bar."""
    left, right, top = 220, 80, 8
    ends = [_seconds(b.get("end_s")) for b in bars]
    span = max([e for e in ends if e is not None] + [1e-3])
    plot_w = width - left - right
    height = top + row * max(1, len(bars)) + 24
    out = [f'<svg class="chart gantt" viewBox="0 0 {width} {height}" role="img" aria-label="timeline">']
    out += time_axis(left, plot_w, top, height, lambda i: f"{span * i / 4:.2f} s")
    for index, bar in enumerate(bars):
        y = top + index * row
        depth = max(0, min(_int(bar.get("depth")), 6))
        label = _short(str(bar.get("label", bar.get("key", ""))), 30 - 2 * depth)
        out.append(f'<text x="{8 + 12 * depth}" y="{y + 14}">{escape(label)}</text>')
        start, end = _seconds(bar.get("start_s")), _seconds(bar.get("end_s"))
        if start is None or end is None:
            continue
        start = max(0.0, start)
        length = max(0.0, end - start)
        x = left + start / span * plot_w
        w = max(2.0, length / span * plot_w)
        state = str(bar.get("state", ""))
        out.append(
            f'<rect class="gbar {state_class(state)}" data-bar="{escape(bar.get("key", ""))}" '
            f'x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" rx="2">'
            f"<title>{escape(str(bar.get('key', '')))}: {escape(state)}, {length:.2f} s</title></rect>"
        )
        out.append(f'<text x="{min(x + w + 4, width - right + 4):.1f}" y="{y + 14}">{length:.2f} s</text>')
    out.append("</svg>")
    return Markup("".join(out))
