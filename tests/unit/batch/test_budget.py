"""The batch budget: reserve on feed, settle on result, the probe row, resume from what was spent."""

from __future__ import annotations

import asyncio
import math
import textwrap

import pytest

from modelyard.batch.budget import (
    OBSERVED_MARGIN,
    BatchBudget,
    BudgetError,
    check_concurrency,
    check_limit,
    planner_estimator,
)
from modelyard.workflows.backend import ModelCall, ModelEstimate
from modelyard.workflows.scripted import ScriptedBackend
from modelyard.workflows.spec import parse_workflow


async def test_rows_start_while_spent_plus_reserved_plus_estimate_fits() -> None:
    budget = BatchBudget(1.0, spent_before=0.2, estimator=lambda inputs: 0.25)
    assert await budget.admit(0, {}) and await budget.admit(1, {}) and await budget.admit(2, {})
    assert budget.reserved_total == pytest.approx(0.75)  # 0.2 + 0.75 = 0.95; a 4th would be 1.2
    waiting = asyncio.ensure_future(budget.admit(3, {}))
    await asyncio.sleep(0)
    assert not waiting.done()  # waits for rows in flight: they may come in cheaper
    budget.settle(0, 0.05)
    assert await waiting  # 0.25 spent + 0.5 reserved + 0.25 = 1.0: fits exactly
    assert budget.spent + budget.reserved_total <= 1.0 + 1e-9


async def test_it_stops_once_nothing_is_in_flight_and_the_next_row_does_not_fit() -> None:
    budget = BatchBudget(0.5, estimator=lambda inputs: 0.2)
    assert await budget.admit(0, {}) and await budget.admit(1, {})
    waiting = asyncio.ensure_future(budget.admit(2, {}))
    await asyncio.sleep(0)
    budget.settle(0, 0.2)
    await asyncio.sleep(0)
    assert not waiting.done()  # 0.2 spent + 0.2 reserved + 0.2 > 0.5: still waits on row 1
    budget.settle(1, 0.2)
    assert await waiting is False and budget.stopped
    assert budget.spent == pytest.approx(0.4)


async def test_without_an_estimate_one_probe_row_runs_alone_then_the_costliest_row_times_the_margin() -> None:
    budget = BatchBudget(1.0)
    assert budget.probing
    assert await budget.admit(0, {})
    second = asyncio.ensure_future(budget.admit(1, {}))
    await asyncio.sleep(0)
    assert not second.done()  # the probe runs alone
    budget.settle(0, 0.1)
    assert await second and not budget.probing
    assert budget.reserved[1] == pytest.approx(0.1 * OBSERVED_MARGIN)
    budget.settle(1, 0.3)
    assert budget.estimate({}) == pytest.approx(0.3 * OBSERVED_MARGIN)


async def test_an_invalid_row_is_not_an_observation_of_the_cost() -> None:
    budget = BatchBudget(1.0)
    assert await budget.admit(0, {})
    budget.settle(0, 0.0, observed=False)
    assert budget.probing


async def test_a_resumed_batch_starts_from_what_all_sessions_spent() -> None:
    budget = BatchBudget(1.0, spent_before=0.9, estimator=lambda inputs: 0.2)
    assert await budget.admit(0, {}) is False and budget.stopped
    probe = BatchBudget(1.0, spent_before=1.0)
    assert await probe.admit(0, {}) is False  # no money left even for the probe


async def test_no_limit_admits_everything_and_still_counts() -> None:
    budget = BatchBudget(None)
    assert all([await budget.admit(i, {}) for i in range(100)])
    budget.settle(0, 0.5)
    assert budget.spent == 0.5 and not budget.stopped and not budget.probing


def test_observed_costs_raise_a_low_planner_estimate() -> None:
    budget = BatchBudget(10.0, estimator=lambda inputs: 0.1)
    budget.settle(99, 0.4)
    assert budget.estimate({}) == pytest.approx(0.4)


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_bad_limits_are_refused(value: float) -> None:
    with pytest.raises(BudgetError):
        check_limit(value)


@pytest.mark.parametrize("value", [0, -3, 10_001])
def test_bad_concurrency_is_refused(value: int) -> None:
    with pytest.raises(BudgetError):
        check_concurrency(value)
    assert check_concurrency(10_000) == 10_000


SPEC = parse_workflow(
    textwrap.dedent(
        """
        schema: modelyard.workflow/v1
        name: est
        inputs: {ticket: string}
        steps:
          classify: {model: fast, prompt: "Classify {{ inputs.ticket }}", max_tokens: 50}
        """
    ),
    "est.yaml",
)


def test_the_planner_estimates_each_row_from_its_inputs() -> None:
    estimate = planner_estimator(SPEC, ScriptedBackend(), {"ticket": "short"})
    assert estimate is not None
    short, long = estimate({"ticket": "short"}), estimate({"ticket": "long " * 2000})
    assert short is not None and long is not None and 0 < short < long
    assert estimate({}) == 0.0  # a row missing its input is invalid: it calls nothing


class NoEstimates(ScriptedBackend):
    def estimate(self, call: ModelCall) -> ModelEstimate:
        raise NotImplementedError


def test_a_backend_that_cannot_estimate_gives_no_estimator() -> None:
    assert planner_estimator(SPEC, NoEstimates(), {"ticket": "x"}) is None
