"""When the run and batch stores commit: once per event-loop turn, for every write of that turn.

A write made while a loop runs is committed at the end of the current turn (`call_soon`): before any task it
wakes up (a dependent step, the driver reading a row's result) can run, and with one transaction for the
hundred writes a fan-out makes at once. Outside a loop a write is committed at once. A commit that fails in
the loop's callback would only be logged by the loop, so it is kept and raised by the store's next call:
nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


class TurnCommit:
    """Schedules a store's `commit` for the end of the loop turn; the store calls `begin()` inside it."""

    def __init__(self, commit: Callable[[], None], lock: threading.RLock | None = None) -> None:
        self._commit = commit
        self._lock = lock or threading.RLock()
        self._scheduled = False
        self._error: Exception | None = None

    def schedule(self) -> None:
        """A write is pending: commit it at the end of this loop turn, or now outside a loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._commit()
            return
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        loop.call_soon(self._in_loop)

    def begin(self) -> Exception | None:
        """Called by the store at the start of every commit (under its lock): the turn's commit is now under way,
        and the failure of an earlier one in the loop, if any (returned once, for the store to raise)."""
        self._scheduled = False
        error, self._error = self._error, None
        return error

    def _in_loop(self) -> None:
        try:
            self._commit()
        except Exception as exc:  # kept, and raised by the store's next call
            self._error = exc
