"""The provider calls' timeouts on one loop timer.

Why not `asyncio.timeout`: each use starts and stops a timer of its own, and under uvloop (what `modelyard
serve` runs) that costs ~3 µs, the whole `async with asyncio.timeout(...)` ~6.6 µs (measured on this
machine: `python bench/deadlines.py`). A request used one, a stream three. Here every deadline of an event
loop sits in one heap, and one loop timer is armed at the earliest; a new deadline later than that one (the
usual case: every call waits about as long as the one before it) costs a heap push, and a deadline that
is no longer needed is only marked, and dropped when the timer reaches it (or when most of the heap is
such marks, which bounds the heap). `Deadline` has `asyncio.Timeout`'s semantics: when it expires it
cancels the task, and the scope's exit turns that cancellation into `TimeoutError`; a cancellation from
elsewhere stays a cancellation.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from types import TracebackType
from typing import Any

#: A deadline is due when it is at most this far ahead of the loop's clock: a loop timer may fire up to its
#: clock's resolution early (uvloop's is a millisecond), and a due deadline must not wait for another round.
RESOLUTION_S = 0.001
#: Marked deadlines past which the heap is rebuilt without them, when they are also half of it.
COMPACT_AFTER = 512

#: An entry of the heap: [when, sequence number (unique: the heap never compares callbacks), callback or None
#: once cancelled or fired].
Entry = list[Any]


class Deadlines:
    """The deadlines of one event loop: the loop it was first used in, for as long as that loop runs (then the
    running one's: `asyncio.run` after `asyncio.run`, or a test's loop after another that was left open). The
    loop is remembered rather than asked for on every use: `asyncio.get_running_loop()` makes a system call
    (getpid) each time, ~0.3 µs, and `is_running()` on the remembered one does not."""

    __slots__ = ("_armed_at", "_heap", "_loop", "_marked", "_sequence", "_timer")

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._sequence = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._marked = 0

    def __len__(self) -> int:
        """Entries held, cancelled ones not yet dropped included (what the bound is about)."""
        return len(self._heap)

    @property
    def live(self) -> int:
        """Deadlines still to fire (neither fired nor cancelled)."""
        return len(self._heap) - self._marked

    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop these deadlines are on (bound to the running one when there is none yet, or the last
        one no longer runs)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = asyncio.get_running_loop()
            self._start(loop)
        return loop

    def add(self, when: float, callback: Callable[[], None]) -> Entry:
        """Call `callback` once the loop's clock reaches `when` (loop.time()), unless `cancel`led first."""
        self.loop()
        entry: Entry = [when, next(self._sequence), callback]
        heapq.heappush(self._heap, entry)
        if when < self._armed_at:
            self._arm(when)
        return entry

    def cancel(self, entry: Entry) -> None:
        """The entry will not be called (a no-op once it was, or was cancelled)."""
        if entry[2] is None:
            return
        entry[2] = None
        self._marked += 1
        heap = self._heap
        if self._marked > COMPACT_AFTER and self._marked * 2 > len(heap):
            self._heap = [live for live in heap if live[2] is not None]
            heapq.heapify(self._heap)
            self._marked = 0

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop = loop
        self._heap = []
        self._timer = None
        self._armed_at = math.inf
        self._marked = 0

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)
        self._armed_at = when

    def _fire(self) -> None:
        """The loop timer: call what is due, drop the marked entries ahead of the next live one, arm for it."""
        self._timer = None
        self._armed_at = math.inf
        assert self._loop is not None
        due = self._loop.time() + RESOLUTION_S
        heap = self._heap
        while heap and (heap[0][0] <= due or heap[0][2] is None):
            entry = heapq.heappop(heap)
            callback = entry[2]
            if callback is None:
                self._marked -= 1
                continue
            entry[2] = None
            callback()
        if heap:
            self._arm(heap[0][0])

    def timeout_at(self, when: float | None) -> Deadline:
        """`with deadlines.timeout_at(when):` (or `async with`) as `asyncio.timeout_at(when)` (None: none yet)."""
        return Deadline(self, when)

    def timeout(self, delay: float) -> Deadline:
        """`with deadlines.timeout(delay):` (or `async with`) as `asyncio.timeout(delay)`, on the loop's clock."""
        return Deadline(self, self.loop().time() + delay)


_CREATED, _ENTERED, _EXPIRING, _EXPIRED, _EXITED = range(5)


class Deadline:
    """One scope's deadline, with `asyncio.Timeout`'s behaviour (`reschedule`, `expired`)."""

    __slots__ = ("_cancelling", "_deadlines", "_entry", "_state", "_task", "_when")

    def __init__(self, deadlines: Deadlines, when: float | None) -> None:
        self._deadlines = deadlines
        self._when = when
        self._state = _CREATED
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._entry: Entry | None = None

    def expired(self) -> bool:
        """Whether the deadline passed and cancelled the task (as `asyncio.Timeout.expired`)."""
        return self._state in (_EXPIRING, _EXPIRED)

    def reschedule(self, when: float | None) -> None:
        """Move the deadline (None: none); only inside the scope, before it expired."""
        if self._state != _ENTERED:
            raise RuntimeError("a deadline can only be moved inside its scope, before it expired")
        entry = self._entry
        if entry is not None:
            self._deadlines.cancel(entry)
        self._entry = None if when is None else self._deadlines.add(when, self._expire)

    def __enter__(self) -> Deadline:
        if self._state != _CREATED:
            raise RuntimeError("a deadline is entered once")
        task = asyncio.current_task(self._deadlines.loop())
        if task is None:
            raise RuntimeError("a deadline is used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._state = _ENTERED
        self.reschedule(self._when)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        entry = self._entry
        if entry is not None:
            self._deadlines.cancel(entry)
            self._entry = None
        if self._state == _EXPIRING:
            self._state = _EXPIRED
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc  # the cancellation was ours alone: it is a timeout
        elif self._state == _ENTERED:
            self._state = _EXITED

    async def __aenter__(self) -> Deadline:
        """`async with` as `asyncio.timeout`'s (plain `with` costs two coroutines less: the hot path's form)."""
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _expire(self) -> None:
        self._entry = None
        assert self._task is not None
        self._task.cancel()
        self._state = _EXPIRING
