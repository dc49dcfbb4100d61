"""`modelyard graph`: every step and edge of the spec is in the Mermaid, DOT and SVG pictures (parsed back)."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.workflows.render_graph import render
from modelyard.workflows.spec import StepSpec, SubWorkflowSpec, WorkflowSpec, load_workflow
from tests.unit.workflows.helpers import workflow

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "workflows").glob("*.yaml"))
SVG_NS = "{http://www.w3.org/2000/svg}"


def spec_graph(
    steps: Mapping[str, StepSpec], prefix: str = "", outer: Mapping[str, str] | None = None
) -> tuple[dict[str, StepSpec], set[tuple[str, str]]]:
    """The spec's own steps (by picture id: qualname, `step/child` in a sub-workflow) and `needs` edges."""
    nodes: dict[str, StepSpec] = {}
    edges: set[tuple[str, str]] = set()
    local = {sid: prefix + step.qualname for sid, step in steps.items()}
    for sid, step in steps.items():
        nodes[local[sid]] = step
        for need in step.needs:
            edges.add(((local.get(need) or (outer or {})[need]), local[sid]))
        if step.loop is not None:
            reach = {n: local.get(n) or (outer or {})[n] for n in step.needs}
            inner_nodes, inner_edges = spec_graph(step.loop.steps, prefix, reach)
            nodes.update(inner_nodes)
            edges |= inner_edges
        if step.workflow is not None:
            inner_nodes, inner_edges = spec_graph(step.workflow.spec.steps, f"{local[sid]}/")
            nodes.update(inner_nodes)
            edges |= inner_edges
    return nodes, edges


def mermaid_id(node_id: str) -> str:
    return node_id.replace(".", "__").replace("/", "___")


def parse_mermaid(text: str) -> tuple[dict[str, str], dict[tuple[str, str], tuple[str, str]]]:
    """Node id -> label; (from, to) -> (arrow, label)."""
    nodes = {
        m.group(1): m.group(2)
        for m in re.finditer(r'^\s*([A-Za-z0-9_]+)(?:\[\[|\[/|\(\[|\[|\{)"(.*?)"', text, re.MULTILINE)
    }
    edges = {
        (m.group(1), m.group(4)): (m.group(2), m.group(3) or "")
        for m in re.finditer(r'^\s*(\w+) (-->|-\.->)(?:\|"(.*?)"\|)? (\w+)$', text, re.MULTILINE)
    }
    return nodes, edges


def parse_dot(text: str) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    nodes = {m.group(1): m.group(2) for m in re.finditer(r'^\s*"([^"]+)" \[label="(.*?)", shape=', text, re.M)}
    edges = {
        (m.group(1), m.group(2)): m.group(3) or ""
        for m in re.finditer(r'^\s*"([^"]+)" -> "([^"]+)"(?: \[(.*)\])?;$', text, re.MULTILINE)
    }
    return nodes, edges


def assert_complete(spec: WorkflowSpec) -> None:
    steps, needs = spec_graph(spec.steps)
    assert needs or len(steps) == 1
    nodes, edges = parse_mermaid(render(spec, "mermaid"))
    assert set(nodes) == {mermaid_id(n) for n in steps}
    for node_id, step in steps.items():
        label = nodes[mermaid_id(node_id)].split("<br/>")
        assert label[0] == step.id and label[1].startswith(step.kind)
        assert (step.foreach is not None) == any(line.startswith("foreach: ") for line in label)
        assert (step.when is not None) == any(line.startswith("when: ") for line in label)
    assert {(mermaid_id(a), mermaid_id(b)) for a, b in needs} <= set(edges)
    dot_nodes, dot_edges = parse_dot(render(spec, "dot"))
    assert set(dot_nodes) == set(steps)
    assert needs <= set(dot_edges)
    root = ET.fromstring(render(spec, "svg"))
    drawn = {g.get("id") for g in root.iter(f"{SVG_NS}g") if "step" in (g.get("class") or "").split()}
    assert drawn == {f"step-{n}" for n in steps}
    svg_edges = {(g.get("data-from"), g.get("data-to")) for g in root.iter(f"{SVG_NS}g") if g.get("data-from")}
    assert needs <= svg_edges


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_step_and_edge_of_the_examples_is_drawn(path: Path) -> None:
    assert_complete(load_workflow(path))


def test_loops_are_groups_with_their_until_edge_back() -> None:
    spec = load_workflow(ROOT / "examples" / "workflows" / "code_review.yaml")
    text = render(spec, "mermaid")
    assert 'subgraph build_box["loop build"]' in text
    _, edges = parse_mermaid(text)
    # The back edge leaves the body's last step (the approval gate) with the loop's condition, cut to fit.
    until = spec.steps["build"].loop.until  # type: ignore[union-attr]
    kind, label = edges[("build__review_gate", "build")]
    assert kind == "-.->" and label.startswith(f"until: {str(until)[:40]}") and label.endswith("(≤ 3)")
    _, dot_edges = parse_dot(render(spec, "dot"))
    assert "style=dashed" in dot_edges[("build.review_gate", "build")]
    assert 'subgraph "cluster_build"' in render(spec, "dot")


NEXT = """
steps:
  triage:
    model: m
    prompt: classify
    next: "{{ 'fix' if triage == 'bug' else 'log' }}"
  fix: {model: m, needs: [triage], prompt: fix}
  log: {call: "modelyard.workflows.tools:read_lines", needs: [triage], args: {path: x}, when: "{{ 1 < 2 }}"}
"""


def test_next_edges_are_dashed_and_labelled() -> None:
    spec = workflow(NEXT)
    assert_complete(spec)
    _, edges = parse_mermaid(render(spec, "mermaid"))
    assert edges[("triage", "fix")] == ("-.->", "next") and edges[("triage", "log")] == ("-.->", "next")
    _, dot_edges = parse_dot(render(spec, "dot"))
    assert dot_edges[("triage", "fix")] == 'style=dashed, label="next"'


def test_labels_are_escaped_for_each_format() -> None:
    spec = workflow(NEXT)
    mermaid = render(spec, "mermaid")
    assert "when: {{ 1 #lt; 2 }}" in mermaid and "1 < 2" not in mermaid
    assert "when: {{ 1 < 2 }}" in render(spec, "dot")
    assert "when: {{ 1 &lt; 2 }}" in render(spec, "svg")


def test_a_sub_workflow_is_a_group_of_its_own_steps() -> None:
    child = workflow("steps:\n  a: {model: m, prompt: hi}\n  b: {model: m, needs: [a], prompt: '{{ a }}'}\n")
    parent = workflow(NEXT)
    sub = dataclasses.replace(
        parent.steps["fix"], kind="workflow", model=None, prompt=None, workflow=SubWorkflowSpec("child.yaml", child)
    )
    spec = dataclasses.replace(parent, steps={**parent.steps, "fix": sub})
    assert_complete(spec)
    text = render(spec, "mermaid")
    assert 'subgraph fix_box["workflow fix: test"]' in text
    assert 'fix[/"fix<br/>workflow child.yaml"/]' in text
    nodes, edges = parse_mermaid(text)
    assert {"fix___a", "fix___b"} <= set(nodes) and ("fix", "fix___a") in edges
    assert '"fix/b" [label="b\\nmodel m", shape=box]' in render(spec, "dot")


def test_the_docs_show_the_examples_graphs_as_generated() -> None:
    docs = (ROOT / "docs" / "workflows.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- graph: (\S+) -->\n```mermaid\n(.*?)```", docs, re.DOTALL))
    assert sorted(blocks) == sorted(str(p.relative_to(ROOT)) for p in EXAMPLES)
    for name, block in blocks.items():
        assert block == render(load_workflow(ROOT / name), "mermaid"), f"regenerate the graph of {name}"


def test_the_graph_command_writes_each_format(tmp_path: Path) -> None:
    from modelyard.cli.workflows import app

    runner = CliRunner()
    example = str(ROOT / "examples" / "workflows" / "research.yaml")
    shown = runner.invoke(app, ["graph", example])
    assert shown.exit_code == 0 and shown.output.startswith("flowchart TD\n"), shown.output
    out = tmp_path / "g.svg"
    written = runner.invoke(app, ["graph", example, "--format", "svg", "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert ET.parse(out).getroot().tag == f"{SVG_NS}svg"
    bad = runner.invoke(app, ["graph", example, "--format", "png"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_a_groups_box_in_the_svg_holds_its_own_steps_only(path: Path) -> None:
    """A step outside a loop or sub-workflow is never drawn inside that group's box (it was: `revise` of
    write_and_review.yaml sat inside the `review` sub-workflow's box)."""
    from modelyard.workflows import graph_svg
    from modelyard.workflows.graph_view import graph_view

    view = graph_view(load_workflow(path))
    boxes, _, _ = graph_svg._place(view, graph_svg.layers(view))
    for group in view.groups:
        members = [n for n in view.nodes if graph_svg._within(view, n, group)]
        x0 = min(boxes[n].x for n in members) - graph_svg.PAD
        x1 = max(boxes[n].x + boxes[n].w for n in members) + graph_svg.PAD
        y0 = min(boxes[n].y for n in members) - graph_svg.PAD
        y1 = max(boxes[n].y + boxes[n].h for n in members) + graph_svg.PAD
        for node in view.nodes:
            if node in members:
                continue
            box = boxes[node]
            overlaps = box.x < x1 and box.x + box.w > x0 and box.y < y1 and box.y + box.h > y0
            assert not overlaps, f"{node} is drawn inside the box of {group}"
