"""The Runs, Deployments and What-if pages in the browser: a workflow run's graph and timeline, each
deployment's health with a failing one visible, a what-if replay with its results and chart."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Stack, screenshot

RULES_POLICY = """strategy: rules
candidates: [primary, backup]
rules:
  - when: {prompt_tokens: {gt: 12}}
    use: [backup]
  - use: [primary]
"""


def test_a_workflow_runs_timeline_and_graph(admin: Any, stack: Stack) -> None:
    admin.goto("/ui/runs")
    assert admin.locator("h1").inner_text() == "Runs"
    row = admin.locator(f'table#runs tr[data-run-id="{stack.run_id}"]')
    assert row.count() == 1 and "succeeded" in row.locator(".badge").inner_text()
    screenshot(admin, "runs")
    row.locator("a").first.click()
    admin.wait_for_url(f"**/ui/runs/{stack.run_id}")
    assert admin.locator("h1").inner_text() == f"Run {stack.run_id}"
    steps = admin.locator("table#steps tr[data-step]")
    keys = [steps.nth(i).get_attribute("data-step") for i in range(steps.count())]
    assert {"plan", "search", "analyze", "synthesize"} <= set(keys), keys
    # the graph: one node per step, coloured by state, edges for `needs`
    nodes = admin.locator("#dag svg g.node[data-node]")
    assert nodes.count() >= 4
    assert admin.locator('#dag svg g.node[data-node="plan"] rect.state-finished').count() == 1
    assert admin.locator("#dag svg path.edge").count() >= 3
    # the timeline: a bar per step that ran and one per fan-out item of `search` (the plan asks 1-8 queries)
    bars = admin.locator("#timeline svg rect.gbar")
    keys = [str(bars.nth(i).get_attribute("data-bar")) for i in range(bars.count())]
    assert {"plan", "search", "analyze"} <= set(keys), keys
    items = int(admin.locator('tr[data-step="search"] td').nth(4).inner_text())
    assert items >= 1 and len([k for k in keys if k.startswith("search") and k != "search"]) == items, keys
    box = bars.first.bounding_box()
    assert box is not None and box["width"] > 0
    resume = admin.locator("code#resume").inner_text()
    assert "resume" in resume and stack.run_id in resume
    screenshot(admin, "run")


def test_deployments_show_health_and_the_failing_one(admin: Any, stack: Stack) -> None:
    stack.chat("flaky", "one failure for the broken deployment")
    admin.goto("/ui/deployments")
    assert admin.locator("h1").inner_text() == "Deployments"
    for name in ("primary", "backup", "broken"):
        assert admin.locator(f'table#deployments tr[data-deployment="{name}"]').count() == 1
    broken = admin.locator('tr[data-deployment="broken"]')
    assert broken.locator(".badge").first.inner_text() in ("closed", "open", "half-open")
    error_rate = broken.locator('[data-field="error_rate"]').inner_text()
    assert not error_rate.startswith("0"), error_rate
    assert admin.locator('table#models tr[data-model="flaky"]').count() == 1
    assert "x-sim-fault" not in admin.content()  # a deployment's headers are not shown
    screenshot(admin, "deployments")


def test_a_whatif_replay_shows_each_policy(admin: Any, stack: Stack) -> None:
    admin.goto("/ui/whatif?from=chat")
    assert admin.locator("h1").inner_text() == "What-if"
    assert "candidates" in admin.locator("textarea#policy").input_value()
    form = admin.locator("form#whatif")
    form.locator("select[name=data]").select_option(stack.whatif_file)
    form.locator("input[name=name]").fill("chat-rules")
    form.locator("textarea#policy").fill(RULES_POLICY)
    form.locator('input[name="compare:chat"]').check()
    with admin.expect_navigation(timeout=90_000):
        form.locator("button[type=submit]").click()
    assert admin.locator(".problem").count() == 0, admin.locator(".problem").inner_text()
    results = admin.locator("table#whatif-results")
    for policy in ("chat-rules", "chat", "sim-small", "sim-medium"):
        assert results.locator(f'tr[data-policy="{policy}"]').count() == 1, policy
    chart = admin.locator("svg.scatter")
    assert chart.locator(".point").count() >= 1 and chart.locator(".point-base").count() >= 2
    screenshot(admin, "whatif")
