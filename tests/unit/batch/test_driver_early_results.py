"""An engine may hand back a row before the feed reaches it (a provider job collected on resume): the driver
takes each row's result once and never feeds, reserves or pays for that row again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from modelyard.batch.driver import BatchDriver
from modelyard.batch.model import BatchOptions, RowResult, RowTask
from tests.unit.batch.test_driver import WORKFLOW, Batch


class EarlyEngine:
    """Yields rows 0 and 1 (twice) before pulling anything, then runs what it pulls."""

    name = "early"

    def __init__(self) -> None:
        self.pulled: list[int] = []

    async def run(self, tasks: AsyncIterator[RowTask], concurrency: int) -> AsyncIterator[RowResult]:
        for row in (0, 1, 1):
            yield RowResult(row, "succeeded", cost_usd=0.5, session_cost_usd=0.5)
        async for task in tasks:
            self.pulled.append(task.row)
            yield RowResult(task.row, "succeeded", cost_usd=0.25, session_cost_usd=0.25)

    async def aclose(self) -> None:
        pass


async def test_rows_handed_back_early_are_taken_once_and_never_fed(tmp_path: Path) -> None:
    batch = Batch(tmp_path, 6)
    engine = EarlyEngine()
    options = BatchOptions(concurrency=2, max_cost_usd=100.0)
    driver = BatchDriver(
        WORKFLOW, batch.header, batch.store, engine, options, rows=batch.rows, writer=batch.writing,
        estimator=lambda inputs: 0.25,
    )  # fmt: skip
    await driver.run()
    assert engine.pulled == [2, 3, 4, 5]
    assert sorted(batch.writer.rows) == list(range(6))
    assert driver.budget.reserved_total == 0 and not driver.budget.reserved
    assert driver.budget.spent == 0.5 * 2 + 0.25 * 4
