"""The pure parts: graph algorithms and scoped, sandboxed templates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelyard.workflows.graph import critical_path, find_cycle, topo_order
from modelyard.workflows.templates import TemplateEngine, TemplateError


def test_topo_order_is_stable_and_respects_needs() -> None:
    deps = {"plan": [], "search": ["plan"], "other": [], "analyze": ["search"], "final": ["plan", "analyze"]}
    assert topo_order(deps) == ["plan", "other", "search", "analyze", "final"]


@given(st.lists(st.lists(st.integers(min_value=0, max_value=9), max_size=4), min_size=1, max_size=10))
def test_topo_order_of_any_dag(edges: list[list[int]]) -> None:
    # only edges to lower indexes: always acyclic
    deps = {f"n{i}": sorted({f"n{j}" for j in targets if j < i}) for i, targets in enumerate(edges)}
    order = topo_order(deps)
    assert sorted(order) == sorted(deps)
    position = {node: i for i, node in enumerate(order)}
    assert all(position[d] < position[n] for n, ds in deps.items() for d in ds)
    assert find_cycle(deps) is None


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    with pytest.raises(ValueError, match="cycle"):
        topo_order({"a": ["b"], "b": ["a"]})


def test_critical_path() -> None:
    deps = {"plan": [], "search": ["plan"], "side": ["plan"], "analyze": ["search"]}
    deps["final"] = ["analyze", "side"]
    durations = {"plan": 1.0, "search": 3.0, "side": 5.0, "analyze": 1.0, "final": 2.0}
    length, path = critical_path(deps, durations)
    assert (length, path) == (8.0, ["plan", "side", "final"])
    assert critical_path({}, {}) == (0.0, [])


# --------------------------------------------------------------------------- templates


def test_a_template_cannot_reach_data_outside_its_context() -> None:
    engine = TemplateEngine()
    with pytest.raises(TemplateError, match="secret"):
        engine.render("leak {{ secret }}", {"inputs": {}})
    with pytest.raises(TemplateError):
        engine.render("{{ inputs.missing }}", {"inputs": {"goal": "g"}})


def test_the_sandbox_blocks_python_internals() -> None:
    engine = TemplateEngine()
    with pytest.raises(TemplateError):
        engine.render("{{ inputs.__class__.__mro__[1].__subclasses__() }}", {"inputs": {}})
    with pytest.raises(TemplateError):
        engine.render("{{ items.append(3) }}", {"items": [1]})


def test_native_values_for_lone_expressions() -> None:
    engine = TemplateEngine()
    context = {"plan": {"queries": ["a", "b"], "ok": False}}
    assert engine.evaluate("{{ plan.queries }}", context) == ["a", "b"]
    assert engine.evaluate("  {{ plan.ok }} ", context) is False
    assert engine.evaluate("n={{ plan.queries | length }}", context) == "n=2"
    assert engine.evaluate("{{ a }} and {{ b }}", {"a": 1, "b": 2}) == "1 and 2"
    assert engine.evaluate(["literal"], {}) == ["literal"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ flag }}", True),
        ("{{ not flag }}", False),
        ("no", False),
        ("False", False),
        ("", False),
        ("ok", True),
    ],
)
def test_truthiness(source: str, expected: bool) -> None:
    assert TemplateEngine().truthy(source, {"flag": True}) is expected


def test_rendering_structures_and_none() -> None:
    engine = TemplateEngine()
    text = engine.render("{{ d }}|{{ l }}|{{ n }}|{{ d | tojson }}", {"d": {"k": "é"}, "l": [1], "n": None})
    assert text == '{"k": "é"}|[1]||{"k": "é"}'


def test_references_found_for_validation() -> None:
    refs = TemplateEngine().references(
        "{% for q in plan.queries %}{{ q }}{% endfor %}\n{{ inputs.goal }} {{ search['x'] }} {{ range(3) | list }}"
    )
    assert set(refs.names) == {"plan", "inputs", "search"}  # globals such as range are not data
    assert refs.input_fields == {"goal": 2}
    assert ("plan", "queries", 1) in refs.attributes and ("search", "x", 2) in refs.attributes


def test_hollow_render_leaves_data_out() -> None:
    engine = TemplateEngine()
    source = "Goal {{ inputs.g }}: {{ plan.queries | join(', ') }}{% if x %}X{% endif %}."
    text = engine.render_hollow(source, {"inputs": {"g": "G"}}, ["plan", "x"])
    assert text == "Goal G: ."
    looped = "{% for q in plan.queries %}[{{ q.text | upper }}]{% endfor %}"
    looped += "{{ plan | tojson }}|{{ plan | length }}"
    assert engine.render_hollow(looped, {}, ["plan"]) == '""|0'
    with pytest.raises(TemplateError):
        engine.render_hollow("{{ other }}", {}, ["plan"])  # only the named data is left out
