"""A workflow's step graph as drawable data: nodes, edges and nested groups (loops, sub-workflows).

One shape for every picture format (`render_graph.py` writes Mermaid and DOT, `graph_svg.py` lays out an
SVG), so a step or edge the spec has cannot be in one picture and missing from another. Node ids are the
steps' qualnames (`build.code` in a loop); a sub-workflow's steps are `step/child` under the including
step, whatever file they came from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from modelyard.workflows.spec import StepSpec, WorkflowSpec

EdgeKind = Literal["needs", "next", "body", "until"]
#: Templates shown on a node or edge are cut to this many characters (the picture is not the spec).
MAX_TEXT = 48
#: Characters XML 1.0 does not allow (and no picture needs): C0 controls but tab and newlines, DEL, surrogates.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True)
class Node:
    id: str
    step: str
    kind: str
    #: One line saying what the step does: its model, tool, loop bound or included file.
    detail: str
    foreach: str | None = None
    when: str | None = None
    next: str | None = None
    #: The innermost group (loop or sub-workflow) the node is drawn in; None at the top level.
    group: str | None = None

    @property
    def lines(self) -> list[str]:
        extra = [f"foreach: {self.foreach}" if self.foreach else "", f"when: {self.when}" if self.when else ""]
        return [self.step, self.detail, *(line for line in extra if line)]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind
    label: str = ""


@dataclass(frozen=True)
class Group:
    """A loop's body or a sub-workflow's steps, drawn in a box with its own step (the header) inside."""

    id: str
    kind: Literal["loop", "workflow"]
    label: str
    parent: str | None


@dataclass
class GraphView:
    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    groups: dict[str, Group] = field(default_factory=dict)

    def members(self, group: str | None) -> list[Node]:
        return [node for node in self.nodes.values() if node.group == group]

    def children(self, group: str | None) -> list[Group]:
        return [g for g in self.groups.values() if g.parent == group]


def short(text: object, limit: int = MAX_TEXT) -> str:
    """One line of at most `limit` characters, without control characters (XML forbids them in the SVG)."""
    flat = " ".join(_CONTROL.sub(" ", str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def graph_view(spec: WorkflowSpec) -> GraphView:
    """Every step, `needs` edge (dashed `next` where the needed step chooses), loop and sub-workflow."""
    view = GraphView(spec.name)
    _scope(view, spec.steps, prefix="", group=None, outer={})
    return view


def _scope(
    view: GraphView, steps: Mapping[str, StepSpec], prefix: str, group: str | None, outer: Mapping[str, str]
) -> None:
    local = {sid: prefix + step.qualname for sid, step in steps.items()}
    for sid, step in steps.items():
        node_id = local[sid]
        view.nodes[node_id] = Node(
            id=node_id,
            step=sid,
            kind=step.kind,
            detail=short(_detail(step), 2 * MAX_TEXT),
            foreach=short(step.foreach) if step.foreach is not None else None,
            when=short(step.when) if step.when is not None else None,
            next=short(step.next) if step.next is not None else None,
            group=group,
        )
        for need in step.needs:
            source = local.get(need) or outer.get(need)
            if source is None:
                continue
            chooser = steps.get(need)
            chosen = chooser is not None and chooser.next is not None and sid in chooser.successors
            view.edges.append(Edge(source, node_id, "next" if chosen else "needs", "next" if chosen else ""))
    for sid, step in steps.items():
        node_id = local[sid]
        if step.loop is not None:
            view.groups[node_id] = Group(node_id, "loop", f"loop {sid}", group)
            view.nodes[node_id] = _regroup(view.nodes[node_id], node_id)
            reach = {name: local.get(name) or outer.get(name, "") for name in step.needs}
            _scope(view, step.loop.steps, prefix, node_id, {k: v for k, v in reach.items() if v})
            _enter(view, step.loop.steps, node_id, prefix)
            until = f"until: {short(step.loop.until)}" if step.loop.until is not None else "repeat"
            label = f"{until} (≤ {step.loop.max_iterations})"
            for sink in _sinks(step.loop.steps):
                view.edges.append(Edge(prefix + step.loop.steps[sink].qualname, node_id, "until", label))
        sub = step.workflow.spec if step.workflow is not None else None
        if sub is not None:
            view.groups[node_id] = Group(node_id, "workflow", f"workflow {sid}: {sub.name}", group)
            view.nodes[node_id] = _regroup(view.nodes[node_id], node_id)
            _scope(view, sub.steps, f"{node_id}/", node_id, {})
            _enter(view, sub.steps, node_id, f"{node_id}/")


def _regroup(node: Node, group: str) -> Node:
    return Node(node.id, node.step, node.kind, node.detail, node.foreach, node.when, node.next, group)


def _enter(view: GraphView, steps: Mapping[str, StepSpec], header: str, prefix: str) -> None:
    """The group's own step leads to the body's first steps (those needing nothing inside it)."""
    for step in steps.values():
        if not any(need in steps for need in step.needs):
            view.edges.append(Edge(header, prefix + step.qualname, "body"))


def _sinks(steps: Mapping[str, StepSpec]) -> list[str]:
    needed = {need for step in steps.values() for need in step.needs}
    return [sid for sid in steps if sid not in needed]


def _detail(step: StepSpec) -> str:
    if step.kind == "loop" and step.loop is not None:
        return f"loop ≤ {step.loop.max_iterations} rounds"
    if step.kind == "tool":
        return f"tool {(step.call or '').rsplit(':', 1)[-1]}"
    if step.kind == "workflow":
        return f"workflow {step.workflow.path}" if step.workflow is not None else "workflow"
    if step.kind == "approval":
        return "approval"
    return f"model {step.model}"
