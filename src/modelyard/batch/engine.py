"""Where rows run: the engine contract, and the local one (this process, asyncio).

The driver (`driver.py`) owns everything a batch decides once: which rows are left, the money budget,
the output file, the progress bar. An engine only runs the rows it is handed and hands back their results,
each already saved in the batch store. It pulls the next task from `tasks` only when it has room for one
(so what the driver has reserved is what is in flight), and it may hand results back in any order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

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
    """Rows as asyncio tasks in this process, over one `RowRunner` (one backend, one store)."""

    name = "local"

    def __init__(self, runner: RowRunner) -> None:
        self.runner = runner

    async def run(self, tasks: AsyncIterator[RowTask], concurrency: int) -> AsyncIterator[RowResult]:
        raise NotImplementedError  # see the batch brief: owned by the local-engine helper
        yield  # pragma: no cover

    async def aclose(self) -> None:
        pass


__all__ = ["LocalEngine", "RowEngine", "asyncio"]
