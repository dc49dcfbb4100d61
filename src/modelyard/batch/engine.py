"""Where rows run: the engine contract, and the local one (this process, asyncio).

The driver (`driver.py`) owns everything a batch decides once: which rows are left, the money budget,
the output file, the progress bar. An engine only runs the rows it is handed and hands back their results,
each already saved in the batch store. It pulls the next task from `tasks` only when it has room for one
(so what the driver has reserved is what is in flight), and it may hand results back in any order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from modelyard.batch.model import RowResult, RowTask
from modelyard.batch.runner import RowRunner


class RowEngine(Protocol):
    name: str

    def run(self, tasks: AsyncIterator[RowTask], concurrency: int) -> AsyncIterator[RowResult]:
        """Run every task `tasks` yields, at most `concurrency` at a time; yield each row's saved result.

        Stops pulling when `tasks` ends; ends when every pulled task has a result. A row whose worker died
        is run again elsewhere (its finished steps reused); its result is yielded once."""
        ...

    async def aclose(self) -> None: ...


class LocalEngine:
    """Rows as asyncio tasks in this process, over one `RowRunner` (one backend, one store).

    Memory is bounded by `concurrency`: one pending pull of the feed at a time, and only while fewer than
    `concurrency` rows run. The pull runs alongside the running rows (the driver's feed may wait on a result,
    e.g. the budget's probe row), so a feed that waits never blocks the results it waits for.
    """

    name = "local"

    def __init__(self, runner: RowRunner) -> None:
        self.runner = runner

    async def run(self, tasks: AsyncIterator[RowTask], concurrency: int) -> AsyncIterator[RowResult]:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        wake = asyncio.Event()
        finished: deque[asyncio.Task[RowResult]] = deque()
        running: set[asyncio.Task[RowResult]] = set()
        pull: asyncio.Task[RowTask | None] | None = None
        exhausted = False

        def on_done(task: asyncio.Task[RowResult]) -> None:
            finished.append(task)
            wake.set()

        try:
            while True:
                if pull is None and not exhausted and len(running) < concurrency:
                    pull = asyncio.ensure_future(_pull(tasks))
                    pull.add_done_callback(lambda _: wake.set())
                if pull is not None and pull.done():
                    task = pull.result()  # a feed that raised ends the batch (the finally cancels the rows)
                    pull = None
                    if task is None:
                        exhausted = True
                    else:
                        row = asyncio.ensure_future(self.runner.run(task))
                        running.add(row)
                        row.add_done_callback(on_done)
                    continue
                while finished:
                    done = finished.popleft()
                    running.discard(done)
                    yield done.result()
                if exhausted and not running:
                    return
                wake.clear()
                if finished or (pull is not None and pull.done()):
                    continue
                if pull is None and len(running) < concurrency and not exhausted:
                    continue
                await wake.wait()
        finally:
            await _cancel(running, pull)

    async def aclose(self) -> None:
        pass


async def _pull(tasks: AsyncIterator[RowTask]) -> RowTask | None:
    try:
        return await anext(tasks)
    except StopAsyncIteration:
        return None


async def _cancel(running: set[asyncio.Task[RowResult]], pull: asyncio.Task[RowTask | None] | None) -> None:
    """Cancel what still runs (Ctrl-C, or a consumer that stopped): those rows stay unfinished, no result."""
    await cancel_all([*running, pull])


async def cancel_all(futures: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel every future given (None skipped) and wait until each has ended, its errors swallowed."""
    pending = [f for f in futures if f is not None]
    for future in pending:
        future.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


__all__ = ["LocalEngine", "RowEngine"]
