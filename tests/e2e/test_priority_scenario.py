"""The priority scenario of bench/priority.py in seconds: a rate-limited provider offered twice its capacity.

The simulator (`rate_limit: {rpm: 1200, burst_s: 0.25}`: 20 requests a second, 429 beyond) behind a
`modelyard serve` process whose deployment has the same limit; for a few seconds open-loop Poisson arrivals
offer 40 requests a second: interactive 10%, default 30%, batch 60% from two keys, one offering 10x the
other (`modelyard.testing.load`). The run happens once; each test checks one promise of the admission queue:
the interactive class waits far less than batch, batch absorbs the overload by shedding early (interactive is
never shed), nobody times out while holding a queue slot, the provider almost never says 429, every request
gets exactly one answer and the provider bills exactly the 200s, and the two batch tenants share fairly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelyard.testing.load import Scenario, run_scenario, summarize

SCENARIO = Scenario(
    rpm=1200,
    burst_s=0.25,
    overload=2.0,
    duration_s=5.5,
    # Short deadlines: batch's backlog passes its deadline (and is shed) within the run, a request admitted at
    # the onset reaches its deadline while the load is still on (not rescued by the drain after it), and the
    # drain is short.
    deadlines_s={"interactive": 1.0, "default": 2.5, "batch": 3.5},
    grace_s=5.0,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run_scenario(SCENARIO, Path(tmp_path_factory.mktemp("priority")))
    assert not result.notes, result.notes
    return summarize(result)


def test_the_load_is_what_was_asked(run: dict[str, Any]) -> None:
    sent = run["loss"]["sent"]
    expected = SCENARIO.rpm / 60 * SCENARIO.overload * SCENARIO.duration_s  # 220
    assert 0.75 * expected <= sent <= 1.25 * expected, run["loss"]
    assert set(run["classes"]) == {"interactive", "default", "batch"}


def test_interactive_waits_far_less_than_batch(run: dict[str, Any]) -> None:
    classes = run["classes"]
    interactive, batch = classes["interactive"], classes["batch"]
    assert interactive["wait_p99_ms"] is not None and batch["wait_p50_ms"] is not None, classes
    assert interactive["wait_p99_ms"] < 1000.0, interactive
    # Ordering: the interactive class's worst waits are shorter than batch's typical one, by a wide margin.
    assert interactive["wait_p99_ms"] * 2 < batch["wait_p50_ms"], (interactive, batch)
    assert interactive["ok"] == interactive["sent"], interactive


def test_batch_is_shed_early_and_interactive_never(run: dict[str, Any]) -> None:
    classes = run["classes"]
    assert classes["batch"]["shed"] > 0, classes["batch"]
    assert classes["interactive"]["shed"] == 0, classes["interactive"]
    assert classes["interactive"]["refused"] == 0, classes["interactive"]
    # Batch absorbs the overload: it is offered 60% of twice the capacity and gets what the others leave.
    assert classes["batch"]["ok"] < classes["batch"]["sent"] / 2, classes["batch"]


def test_nobody_times_out_holding_a_queue_slot(run: dict[str, Any]) -> None:
    timeouts = {name: row["queue_timeouts"] for name, row in run["classes"].items()}
    assert sum(timeouts.values()) == 0, (timeouts, {name: row["codes"] for name, row in run["classes"].items()})


def test_the_provider_rarely_says_429(run: dict[str, Any]) -> None:
    provider = run["provider"]
    assert provider["calls"] > 0
    assert provider["rate_limited"] <= max(1, 0.01 * provider["calls"]), provider


def test_every_request_is_answered_once(run: dict[str, Any]) -> None:
    loss = run["loss"]
    assert loss["lost"] == 0 and loss["answered"] == loss["sent"], loss
    # One spend row per request, the successful ones exactly the 200s.
    assert loss["spend_rows"] is not None and sum(loss["spend_rows"].values()) == loss["sent"], loss
    assert loss["spend_rows"].get("ok") == loss["ok"], loss


def test_the_provider_bills_exactly_the_200s(run: dict[str, Any]) -> None:
    loss = run["loss"]
    assert loss["provider_accepted"] == loss["ok"], (loss, {n: r["codes"] for n, r in run["classes"].items()})


def test_the_batch_tenants_share_fairly(run: dict[str, Any]) -> None:
    assert run["fairness_jain"] is not None and run["fairness_jain"] >= 0.9, run["batch_tenants"]
