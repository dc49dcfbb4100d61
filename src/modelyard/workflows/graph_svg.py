"""A small layered layout of a `GraphView`, drawn as a self-contained SVG (no Graphviz, no network).

Layers are longest paths from the first steps (a `needs` chain reads top to bottom); within a layer nodes
keep the order of the layer above them (two barycentre sweeps). Each top-level group (a loop, a sub-workflow)
and the steps outside every group get a column band of their own, so a group's box, drawn around its nodes,
holds no other step. Enough for the tens of steps a workflow has; `--format dot` is there
for anyone who wants Graphviz's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from modelyard.workflows.graph_view import Edge, GraphView, Node

CHAR_W = 7.0
LINE_H = 15.0
PAD = 8.0
GAP_X = 28.0
GAP_Y = 46.0
MARGIN = 24.0
_FILL = {"model": "#e8f0fe", "tool": "#fef7e0", "loop": "#e6f4ea", "approval": "#fce8e6", "workflow": "#f3e8fd"}


@dataclass
class _Box:
    x: float
    y: float
    w: float
    h: float


def layers(view: GraphView) -> list[list[str]]:
    """Node ids by layer: each node one below the lowest of the nodes with edges into it (`until` aside)."""
    preds: dict[str, list[str]] = {node: [] for node in view.nodes}
    for edge in view.edges:
        if edge.kind != "until":
            preds[edge.target].append(edge.source)
    depth: dict[str, int] = {}

    def level(node: str, seen: frozenset[str]) -> int:
        if node not in depth:
            above = [level(p, seen | {node}) for p in preds[node] if p not in seen]
            depth[node] = 1 + max(above, default=-1)
        return depth[node]

    for node in view.nodes:
        level(node, frozenset())
    rows: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in view.nodes:
        rows[depth[node]].append(node)
    return _order(view, rows, preds)


def _order(view: GraphView, rows: list[list[str]], preds: dict[str, list[str]]) -> list[list[str]]:
    for _ in range(2):
        for index in range(1, len(rows)):
            place = {node: i for i, node in enumerate(rows[index - 1])}
            bary = {}
            for position, node in enumerate(rows[index]):
                above = [place[p] for p in preds[node] if p in place]
                bary[node] = sum(above) / len(above) if above else float(position)
            groups: dict[str | None, list[float]] = {}
            for node in rows[index]:
                groups.setdefault(_top_group(view, node), []).append(bary[node])
            group_key = {g: sum(v) / len(v) for g, v in groups.items()}
            rows[index].sort(key=lambda n: (group_key[_top_group(view, n)], bary[n]))
    return rows


def _top_group(view: GraphView, node_id: str) -> str | None:
    group = view.nodes[node_id].group
    while group is not None and view.groups[group].parent is not None:
        group = view.groups[group].parent
    return group


def _place(view: GraphView, rows: list[list[str]]) -> tuple[dict[str, _Box], float, float]:
    """Boxes for the nodes: each top-level group, and the steps outside every group, in a column band of its
    own (a group's box then holds its own steps only), bands ordered as their nodes first appear in the
    layers; within a band and a layer, the layer's order. Returns the boxes, the width and the height used."""
    bands: list[str | None] = []
    for row in rows:
        for node in row:
            band = _top_group(view, node)
            if band not in bands:
                bands.append(band)
    band_width: dict[str | None, float] = {}
    for band in bands:
        widths = [_row_width(view, [n for n in row if _top_group(view, n) == band]) for row in rows]
        band_width[band] = max(widths, default=0.0)
    left: dict[str | None, float] = {}
    x = MARGIN
    for band in bands:
        left[band] = x
        x += band_width[band] + 2 * GAP_X  # room for the group's own padding and label
    total_w = x - 2 * GAP_X + MARGIN if bands else 2 * MARGIN
    boxes: dict[str, _Box] = {}
    y = MARGIN + LINE_H
    for row in rows:
        height = 0.0
        for band in bands:
            members = [n for n in row if _top_group(view, n) == band]
            bx = left[band] + (band_width[band] - _row_width(view, members)) / 2
            for node_id in members:
                w, h = _size(view.nodes[node_id])
                boxes[node_id] = _Box(bx, y, w, h)
                bx += w + GAP_X
                height = max(height, h)
        y += height + GAP_Y
    return boxes, total_w, y


def _row_width(view: GraphView, nodes: list[str]) -> float:
    return sum(_size(view.nodes[n])[0] for n in nodes) + GAP_X * max(len(nodes) - 1, 0)


def _size(node: Node) -> tuple[float, float]:
    width = max(len(line) for line in node.lines) * CHAR_W + 2 * PAD
    return max(width, 80.0), len(node.lines) * LINE_H + 2 * PAD


def svg(view: GraphView) -> str:
    rows = layers(view)
    boxes, total_w, y = _place(view, rows)
    if any(edge.kind == "until" for edge in view.edges):
        total_w += 4 * GAP_X  # the loop's back edge bends right of its box, with its label
    total_h = y - GAP_Y + MARGIN + LINE_H
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" height="{total_h:.0f}" '
        f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f"<title>{escape(view.name)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    parts += _groups(view, boxes)
    parts += [_edge(edge, boxes) for edge in view.edges]
    parts += [_node(view.nodes[n], boxes[n]) for n in view.nodes]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _groups(view: GraphView, boxes: dict[str, _Box]) -> list[str]:
    out = []
    depth_of = {g: _group_depth(view, g) for g in view.groups}
    for group in sorted(view.groups.values(), key=lambda g: depth_of[g.id]):
        inside = [boxes[n] for n in view.nodes if _within(view, n, group.id)]
        if not inside:
            continue
        pad = PAD * (3 - min(depth_of[group.id], 2))
        x0, y0 = min(b.x for b in inside) - pad, min(b.y for b in inside) - pad - LINE_H
        x1, y1 = max(b.x + b.w for b in inside) + pad, max(b.y + b.h for b in inside) + pad
        out.append(
            f'<g class="group {group.kind}"><rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
            f'height="{y1 - y0:.1f}" rx="6" fill="none" stroke="#999" stroke-dasharray="5 3"/>'
            f'<text x="{x0 + PAD:.1f}" y="{y0 + LINE_H - 2:.1f}" fill="#666">{escape(group.label)}</text></g>'
        )
    return out


def _group_depth(view: GraphView, group: str) -> int:
    depth, parent = 0, view.groups[group].parent
    while parent is not None:
        depth, parent = depth + 1, view.groups[parent].parent
    return depth


def _within(view: GraphView, node_id: str, group: str) -> bool:
    cursor = view.nodes[node_id].group
    while cursor is not None:
        if cursor == group:
            return True
        cursor = view.groups[cursor].parent
    return False


def _node(node: Node, box: _Box) -> str:
    fill = _FILL.get(node.kind, "#eee")
    radius = box.h / 2 if node.kind == "loop" else 4
    texts = []
    for index, line in enumerate(node.lines):
        weight = ' font-weight="bold"' if index == 0 else ""
        ty = box.y + PAD + LINE_H * (index + 1) - 3
        texts.append(
            f'<text x="{box.x + box.w / 2:.1f}" y="{ty:.1f}" text-anchor="middle"{weight}>{escape(line)}</text>'
        )
    tooltip = escape(f"{node.id} ({node.kind})" + (f"\nnext: {node.next}" if node.next else ""))
    return (
        f'<g class="step {node.kind}" id="step-{escape(node.id)}"><title>{tooltip}</title>'
        f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" rx="{radius:.1f}" '
        f'fill="{fill}" stroke="#444"/>' + "".join(texts) + "</g>"
    )


def _edge(edge: Edge, boxes: dict[str, _Box]) -> str:
    a, b = boxes[edge.source], boxes[edge.target]
    dash = ' stroke-dasharray="6 4"' if edge.kind in ("next", "until") else ""
    if edge.kind == "until":  # back up to the loop's step, around the right side
        x0, y0, x1, y1 = a.x + a.w, a.y + a.h / 2, b.x + b.w, b.y + b.h / 2
        bend = max(x0, x1) + 40
        path = f"M{x0:.1f},{y0:.1f} C{bend:.1f},{y0:.1f} {bend:.1f},{y1:.1f} {x1:.1f},{y1:.1f}"
        lx, ly = bend + 4, (y0 + y1) / 2
        anchor = "start"
    else:
        x0, y0, x1, y1 = a.x + a.w / 2, a.y + a.h, b.x + b.w / 2, b.y
        mid = (y0 + y1) / 2
        path = f"M{x0:.1f},{y0:.1f} C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},{y1:.1f}"
        lx, ly = (x0 + x1) / 2 + 4, mid
        anchor = "start"
    label = (
        f'<text x="{lx:.1f}" y="{ly:.1f}" fill="#555" font-size="10" text-anchor="{anchor}">{escape(edge.label)}</text>'
    )
    return (
        f'<g class="edge {edge.kind}" data-from="{escape(edge.source)}" data-to="{escape(edge.target)}">'
        f'<path d="{path}" fill="none" stroke="#555"{dash} marker-end="url(#arrow)"/>'
        + (label if edge.label else "")
        + "</g>"
    )
