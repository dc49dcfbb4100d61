"""`--max-cost-usd`: one money budget for a whole batch, across every session that ran it.

The feed reserves a row's estimated cost when it hands the row to the engine and the driver settles the
reservation with what the row actually cost (`RowResult.session_cost_usd`) when its result comes. A row is
started only while `spent + reserved + its estimate <= limit`; when it does not fit, the feed waits for the
rows in flight to settle (they may come in cheaper) and stops once nothing is reserved and it still does not
fit. So the budget is overshot only by what estimates got wrong, and by at most one row when nothing could
be estimated: until a first row has finished (the probe), only one row runs at a time.

Estimates come from the workflow planner (`planner_estimator`) when the backend can price a call, else from
the largest row cost seen so far (x `OBSERVED_MARGIN`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelyard.schema.errors import ModelyardError
from modelyard.workflows.backend import ModelBackend
from modelyard.workflows.inputs import InputError, resolve_inputs
from modelyard.workflows.planner import plan_workflow
from modelyard.workflows.spec import WorkflowSpec

#: A row's estimated cost in USD from its workflow inputs; None: unknown.
Estimator = Callable[[dict[str, Any]], float | None]
#: Without a planner estimate, a row is assumed to cost this much more than the most expensive row seen.
OBSERVED_MARGIN = 1.25
MAX_CONCURRENCY = 10_000


class BudgetError(ModelyardError, ValueError):
    """A budget or concurrency option out of range (the CLI's exit 2)."""


def check_limit(value: float | None) -> float | None:
    """--max-cost-usd must be a finite number above zero."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"--max-cost-usd must be a finite number above 0, not {value}")
    return float(value)


def check_concurrency(value: int) -> int:
    if not 1 <= value <= MAX_CONCURRENCY:
        raise BudgetError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, not {value}")
    return value


def planner_estimator(spec: WorkflowSpec, backend: ModelBackend, sample: dict[str, Any]) -> Estimator | None:
    """The planner's cost of one row, or None when the backend cannot estimate (checked on `sample`, a row's
    inputs): the HTTP gateway backend, or a factory without `estimate`."""
    try:
        plan = plan_workflow(spec, backend, resolve_inputs(spec, sample))
    except InputError:
        plan = None
    except Exception:  # a backend whose estimate cannot route this call: fall back to observed costs
        return None
    if plan is not None and any(row.note == "no estimate" for row in plan.rows):
        return None

    def estimate(inputs: dict[str, Any]) -> float | None:
        try:
            return plan_workflow(spec, backend, resolve_inputs(spec, inputs)).cost_usd
        except InputError:
            return 0.0  # the row is invalid: it will call nothing
        except Exception:
            return None

    return estimate


@dataclass
class BudgetView:
    """What the progress bar and the summary show of the budget."""

    limit: float | None
    spent: float
    reserved: float
    stopped: bool
    probe: bool


class BatchBudget:
    """The batch's money: spent (all sessions), reserved (rows in flight), and whether a row may start."""

    def __init__(self, limit: float | None, spent_before: float = 0.0, estimator: Estimator | None = None) -> None:
        self.limit = check_limit(limit)
        self.spent = spent_before
        self.estimator = estimator
        self.reserved: dict[int, float] = {}
        self._reserved_total = 0.0
        self.max_seen: float | None = None
        #: True once a row did not fit: the summary says how many rows were left.
        self.stopped = False
        self._changed = asyncio.Event()

    @property
    def reserved_total(self) -> float:
        return max(0.0, self._reserved_total) if self.reserved else 0.0

    @property
    def probing(self) -> bool:
        """No planner estimate and no finished row yet: the next row's cost is unknown."""
        return self.limit is not None and self.estimator is None and self.max_seen is None

    def estimate(self, inputs: dict[str, Any]) -> float | None:
        """The row's estimate: the planner's (raised to the costliest row seen), else the costliest x margin."""
        planned = self.estimator(inputs) if self.estimator is not None else None
        if planned is not None:
            return max(planned, self.max_seen or 0.0)
        if self.max_seen is not None:
            return self.max_seen * OBSERVED_MARGIN
        return None

    def fits(self, estimate: float | None) -> bool:
        if self.limit is None:
            return True
        if estimate is None:  # the probe: only alone, and only while money is left
            return not self.reserved and self.spent < self.limit
        return self.spent + self.reserved_total + estimate <= self.limit

    async def admit(self, row: int, inputs: dict[str, Any]) -> bool:
        """Reserve the row's estimate, waiting for rows in flight to settle while it does not fit; False (and
        `stopped`) once nothing is in flight and it still does not fit."""
        if self.limit is None:
            return True
        while True:
            estimate = self.estimate(inputs)
            if self.fits(estimate):
                self.reserved[row] = estimate or 0.0
                self._reserved_total += estimate or 0.0
                return True
            if not self.reserved:
                self.stopped = True
                return False
            self._changed.clear()
            await self._changed.wait()

    def settle(self, row: int, cost: float, *, observed: bool = True) -> None:
        """A row's result came: its reservation becomes what it cost this session. `observed=False` for a row
        that says nothing about the others' cost (invalid inputs: no call made)."""
        self._reserved_total -= self.reserved.pop(row, 0.0)
        self.spent += cost
        if observed:
            self.max_seen = cost if self.max_seen is None else max(self.max_seen, cost)
        self._changed.set()

    def view(self) -> BudgetView:
        return BudgetView(self.limit, self.spent, self.reserved_total, self.stopped, self.probing)
