"""The What-if page's cost-quality scatter: a pure function that places each point, escapes every label and
colours by class only (the CSP forbids inline style)."""

from __future__ import annotations

import re

from modelyard.server.ui.scatter import scatter


def test_points_are_placed_by_cost_and_quality_with_their_classes() -> None:
    svg = str(scatter([("edited", 1.0, 0.9, "point"), ("other", 4.0, 0.5, "point-alt"), ("m", 2.0, 0.7, "point-base")]))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    circles = {c[0]: c for c in re.findall(r'<circle class="([^"]+)" cx="([\d.]+)" cy="([\d.]+)"', svg)}
    assert list(circles) == ["point-base", "point-alt", "point"]  # the edited policy drawn last, on top
    order = ("point", "point-base", "point-alt")
    xs = [float(circles[kind][1]) for kind in order]
    ys = [float(circles[kind][2]) for kind in order]
    assert xs[0] < xs[1] < xs[2]  # cheaper is further left
    assert ys[0] < ys[1] < ys[2]  # better quality is higher up (smaller y)
    assert "style=" not in svg


def test_labels_are_escaped_and_unknown_classes_fall_back() -> None:
    svg = str(scatter([("<script>alert(1)</script>", 1.0, 0.5, 'x" onload="y')]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "onload" not in svg and 'class="point"' in svg


def test_a_policy_that_routed_nothing_is_named_not_plotted() -> None:
    svg = str(scatter([("ok", 1.0, 0.5, "point"), ("empty & none", None, float("nan"), "point-alt")]))
    assert svg.count("<circle") == 1
    assert "not plotted" in svg and "empty &amp; none" in svg
    assert "<circle" not in str(scatter([]))


def test_points_on_the_same_spot_share_one_label() -> None:
    svg = str(
        scatter(
            [("edited", 25.0, 0.75, "point"), ("premium", 25.0, 0.75, "point-alt"), ("big", 25.0, 0.75, "point-base")]
        )
    )
    assert svg.count("<circle") == 3
    assert re.findall(r"<text [^>]*>([^<]*)</text></g>", svg) == ["edited, premium, big"]


def test_the_cost_axis_ends_on_a_round_number_close_above_the_dearest() -> None:
    svg = str(scatter([("a", 25.0, 0.75, "point"), ("b", 0.25, 0.5, "point-base")]))
    labels = re.findall(r'text-anchor="(?:start|middle|end)">(\$[^<]+)</text>', svg)
    assert labels == ["$0.00", "$7.50", "$15.00", "$22.50", "$30.00"]
