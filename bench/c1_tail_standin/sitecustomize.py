"""Stand-ins for the spend log's store write, loaded into `modelyard serve` by bench/c1_tail.py (through
PYTHONPATH) to find what makes the c=1 p99 tail (issue #20). C1_TAIL_STANDIN picks one:

- `real`: nothing replaced;
- `none`: the store's write_spend does nothing;
- `sleep`: the store's thread sleeps as long as a write would take (16 µs a row), the GIL released;
- `burn`: the store's thread burns the CPU as long, the GIL released between 40 µs pieces (hashlib);
- `burn-idle`: `burn` at SCHED_IDLE;
- `prepare`: every batch prepared on the event loop (rows, parameters, rollups), as the store's thread path
  does, and nothing inserted (the cost of that preparation alone; before 2026-12-06 the helper's batches were
  prepared there too).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

_STANDIN = os.environ.get("C1_TAIL_STANDIN", "real")
_ROW_S = 16e-6
_PIECE = b"x" * 65536  # ~40 µs of sha256, which releases the GIL for inputs this large


def _install() -> None:
    from modelyard.state import sqlite_store

    async def nothing(self: Any, records: Any) -> None:
        return None

    async def sleep(self: Any, records: Any) -> None:
        await self._run(lambda conn: time.sleep(len(records) * _ROW_S))

    async def burn(self: Any, records: Any) -> None:
        def work(conn: Any) -> None:
            if _STANDIN == "burn-idle":
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
            end = time.perf_counter() + len(records) * _ROW_S
            while time.perf_counter() < end:
                hashlib.sha256(_PIECE)

        await self._run(work)

    if _STANDIN == "prepare":  # the thread's path for every batch (prepared on the loop), its insert a no-op
        sqlite_store.SQLiteStore._insert_process = lambda self, rows: None  # type: ignore[method-assign]
        sqlite_store.insert_spend = lambda *args: None
        return
    standins = {"none": nothing, "sleep": sleep, "burn": burn, "burn-idle": burn}
    sqlite_store.SQLiteStore.write_spend = standins[_STANDIN]  # type: ignore[method-assign]


if _STANDIN != "real":
    _install()
