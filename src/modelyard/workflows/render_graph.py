"""`modelyard graph`: a workflow's step graph as Mermaid, Graphviz DOT or a self-contained SVG.

All three draw the same `GraphView` (graph_view.py). Mermaid and DOT are text for other tools to render
(GitHub renders Mermaid blocks); the SVG is laid out here (graph_svg.py), so it needs neither Graphviz nor
the network. Conventions in every format: solid arrows are `needs` (and a group's step entering its body),
dashed arrows labelled `next` are a `next:` choice, a dashed arrow back to a loop's step is its `until`.
"""

from __future__ import annotations

import re
from typing import Literal

from modelyard.workflows.graph_view import Edge, GraphView, Node, graph_view
from modelyard.workflows.spec import WorkflowSpec

GraphFormat = Literal["mermaid", "dot", "svg"]
FORMATS: tuple[GraphFormat, ...] = ("mermaid", "dot", "svg")

_MERMAID_SHAPES = {
    "model": ('["', '"]'),
    "tool": ('[["', '"]]'),
    "loop": ('(["', '"])'),
    "approval": ('{"', '"}'),
    "workflow": ('[/"', '"/]'),
}
#: Words Mermaid's flowchart grammar reads as statements where a node id starts a line.
_MERMAID_KEYWORDS = frozenset(
    ("end", "subgraph", "graph", "flowchart", "style", "class", "classdef", "click", "linkstyle", "direction")
)
_DOT_SHAPES = {"model": "box", "tool": "component", "loop": "ellipse", "approval": "diamond", "workflow": "folder"}


def render(spec: WorkflowSpec, fmt: GraphFormat) -> str:
    """The picture of `spec` in `fmt`, as text (SVG included)."""
    view = graph_view(spec)
    if fmt == "mermaid":
        return mermaid(view)
    if fmt == "dot":
        return dot(view)
    from modelyard.workflows.graph_svg import svg

    return svg(view)


# --------------------------------------------------------------------------- Mermaid


def mermaid_ids(view: GraphView) -> dict[str, str]:
    """Node id -> a Mermaid-safe id (letters, digits, _), unique; groups get `<id>_box`."""
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for node_id in view.nodes:
        base = re.sub(r"[^A-Za-z0-9_]", "_", node_id.replace(".", "__").replace("/", "___"))
        if base.lower() in _MERMAID_KEYWORDS:  # `end`, `style`... as a node id would end or restyle the chart
            base += "_"
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        ids[node_id] = candidate
        taken.add(candidate)
    return ids


def _mermaid_text(text: str) -> str:
    """Text inside a quoted Mermaid label: entity codes for what would end or mark it up."""
    replaced = text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    return replaced.replace("|", "#124;")


def mermaid(view: GraphView) -> str:
    ids = mermaid_ids(view)
    lines = ["flowchart TD"]

    def declare(node: Node, indent: str) -> None:
        opening, closing = _MERMAID_SHAPES.get(node.kind, _MERMAID_SHAPES["model"])
        label = "<br/>".join(_mermaid_text(line) for line in node.lines)
        lines.append(f"{indent}{ids[node.id]}{opening}{label}{closing}")

    def group(group_id: str | None, indent: str) -> None:
        for node in view.members(group_id):
            declare(node, indent)
        for child in view.children(group_id):
            lines.append(f'{indent}subgraph {ids[child.id]}_box["{_mermaid_text(child.label)}"]')
            group(child.id, indent + "  ")
            lines.append(f"{indent}end")

    group(None, "  ")
    for edge in view.edges:
        lines.append("  " + _mermaid_edge(edge, ids))
    return "\n".join(lines) + "\n"


def _mermaid_edge(edge: Edge, ids: dict[str, str]) -> str:
    source, target = ids[edge.source], ids[edge.target]
    arrow = "-.->" if edge.kind in ("next", "until") else "-->"
    label = f'|"{_mermaid_text(edge.label)}"|' if edge.label else ""
    return f"{source} {arrow}{label} {target}"


# --------------------------------------------------------------------------- DOT


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def dot(view: GraphView) -> str:
    lines = [
        f'digraph "{_dot_text(view.name)}" {{',
        "  rankdir=TB;",
        '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]

    def group(group_id: str | None, indent: str) -> None:
        for node in view.members(group_id):
            label = _dot_text("\n".join(node.lines))
            shape = _DOT_SHAPES.get(node.kind, "box")
            lines.append(f'{indent}"{_dot_text(node.id)}" [label="{label}", shape={shape}];')
        for child in view.children(group_id):
            lines.append(f'{indent}subgraph "cluster_{_dot_text(child.id)}" {{')
            lines.append(f'{indent}  label="{_dot_text(child.label)}"; style=dashed;')
            group(child.id, indent + "  ")
            lines.append(f"{indent}}}")

    group(None, "  ")
    for edge in view.edges:
        attrs = []
        if edge.kind in ("next", "until"):
            attrs.append("style=dashed")
        if edge.kind == "until":
            attrs.append("constraint=false")
        if edge.label:
            attrs.append(f'label="{_dot_text(edge.label)}"')
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f'  "{_dot_text(edge.source)}" -> "{_dot_text(edge.target)}"{suffix};')
    lines.append("}")
    return "\n".join(lines) + "\n"
