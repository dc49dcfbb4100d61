"""Deadlines on one loop timer behave as `asyncio.timeout_at`, and their heap stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from modelyard.providers.deadlines import COMPACT_AFTER, Deadlines

Scope = Callable[[float | None], Any]


def asyncio_scope(_: Deadlines) -> Scope:
    return asyncio.timeout_at


def our_scope(deadlines: Deadlines) -> Scope:
    return deadlines.timeout_at


async def outcome(scope: Scope, when_in: float | None, work: float, *, move_to: float | None = -1.0) -> str:
    """What a scope around `work` seconds of sleep does: 'done', 'timeout' or 'cancelled'; `move_to`
    reschedules it (seconds from now; None: no deadline) once entered."""
    loop = asyncio.get_running_loop()
    try:
        async with scope(None if when_in is None else loop.time() + when_in) as timer:
            if move_to is None or move_to >= 0:
                timer.reschedule(None if move_to is None else loop.time() + move_to)
            await asyncio.sleep(work)
    except TimeoutError:
        return "timeout"
    except asyncio.CancelledError:
        return "cancelled"
    return "done"


CASES = [
    # (deadline in, work, reschedule to, expected)
    (0.02, 0.2, -1.0, "timeout"),
    (0.2, 0.01, -1.0, "done"),
    (None, 0.02, -1.0, "done"),
    (0.02, 0.1, 0.3, "done"),  # moved later: the first deadline does not fire
    (0.3, 0.2, 0.02, "timeout"),  # moved earlier
    (0.02, 0.1, None, "done"),  # removed
    (-1.0, 0.05, -1.0, "timeout"),  # already past when entered
]


@pytest.mark.parametrize("make", [asyncio_scope, our_scope], ids=["asyncio", "deadlines"])
@pytest.mark.parametrize(("when_in", "work", "move_to", "expected"), CASES)
def test_the_same_outcome_as_asyncio_timeout_at(
    make: Callable[[Deadlines], Scope], when_in: float | None, work: float, move_to: float | None, expected: str
) -> None:
    async def main() -> str:
        return await outcome(make(Deadlines()), when_in, work, move_to=move_to)

    assert uvloop.run(main()) == expected


def test_fires_on_time_and_leaves_the_task_uncancelled() -> None:
    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        began = loop.time()
        with pytest.raises(TimeoutError):
            async with deadlines.timeout(0.05):
                await asyncio.sleep(5)
        waited = loop.time() - began
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0.01)  # a stray cancellation would land here
        return waited, task.cancelling()

    waited, cancelling = uvloop.run(main())
    assert 0.045 <= waited < 0.5
    assert cancelling == 0


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def main() -> None:
        deadlines = Deadlines()
        loop = asyncio.get_running_loop()

        async def victim() -> None:
            async with deadlines.timeout_at(loop.time() + 5):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(victim())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    uvloop.run(main())


@pytest.mark.parametrize("make", [asyncio_scope, our_scope], ids=["asyncio", "deadlines"])
def test_a_deadline_that_expires_with_another_cancellation_pending_exits_cancelled(
    make: Callable[[Deadlines], Scope],
) -> None:
    """As asyncio.Timeout: when the task was cancelled by someone else too, the scope's exit raises
    CancelledError, not TimeoutError."""

    async def main() -> str:
        scope = make(Deadlines())
        loop = asyncio.get_running_loop()

        raised: list[str] = []

        async def victim() -> None:
            task = asyncio.current_task()
            assert task is not None
            try:
                async with scope(loop.time() + 0.02):
                    try:
                        await asyncio.sleep(5)
                    finally:
                        task.cancel()  # a second cancellation request, not the deadline's
            except BaseException as exc:
                raised.append(type(exc).__name__)
                raise

        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.ensure_future(victim())
        return raised[0]

    assert uvloop.run(main()) == "CancelledError"


def test_an_inner_deadline_does_not_expire_the_outer_one() -> None:
    async def main() -> tuple[bool, bool]:
        deadlines = Deadlines()
        loop = asyncio.get_running_loop()
        async with deadlines.timeout_at(loop.time() + 5) as outer:
            with pytest.raises(TimeoutError):
                async with deadlines.timeout_at(loop.time() + 0.02) as inner:
                    await asyncio.sleep(5)
            await asyncio.sleep(0.03)
        return inner.expired(), outer.expired()

    assert uvloop.run(main()) == (True, False)


def test_an_earlier_deadline_added_after_a_later_one_fires_first() -> None:
    async def main() -> list[str]:
        deadlines = Deadlines()
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        deadlines.add(loop.time() + 0.3, lambda: fired.append("late"))
        deadlines.add(loop.time() + 0.02, lambda: fired.append("early"))
        await asyncio.sleep(0.1)
        snapshot = list(fired)
        await asyncio.sleep(0.3)
        return [*snapshot, "|", *fired]

    assert uvloop.run(main()) == ["early", "|", "early", "late"]


def test_a_cancelled_entry_is_never_called() -> None:
    async def main() -> list[str]:
        deadlines = Deadlines()
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        entry = deadlines.add(loop.time() + 0.02, lambda: fired.append("cancelled one"))
        deadlines.add(loop.time() + 0.04, lambda: fired.append("kept"))
        deadlines.add(loop.time() + 5, lambda: fired.append("far"))
        deadlines.cancel(entry)
        deadlines.cancel(entry)  # twice: still one mark
        live = [deadlines.live]
        await asyncio.sleep(0.1)
        return [*fired, str([*live, deadlines.live, len(deadlines)])]

    # two live of three; after the timer: the far one, alone in the heap (the mark dropped on the way)
    assert uvloop.run(main()) == ["kept", "[2, 1, 1]"]


def test_the_heap_stays_bounded_when_every_call_finishes_first() -> None:
    """A busy gateway: each call's deadline is far ahead and the call ends long before it."""

    async def main() -> int:
        deadlines = Deadlines()
        most = 0
        for _ in range(20_000):
            async with deadlines.timeout(600):
                pass
            most = max(most, len(deadlines))
        return most

    assert uvloop.run(main()) <= 2 * COMPACT_AFTER + 2


def test_rescheduling_outside_the_scope_is_refused() -> None:
    async def main() -> None:
        deadlines = Deadlines()
        scope = deadlines.timeout(5)
        with pytest.raises(RuntimeError):
            scope.reschedule(None)
        async with scope:
            pass
        with pytest.raises(RuntimeError):
            scope.reschedule(None)

    uvloop.run(main())


def test_one_instance_serves_one_loop_after_another() -> None:
    deadlines = Deadlines()
    for _ in range(2):
        assert asyncio.run(outcome(deadlines.timeout_at, 0.02, 0.5)) == "timeout"
        assert uvloop.run(outcome(deadlines.timeout_at, 0.5, 0.01)) == "done"


def test_a_loop_left_open_does_not_keep_the_deadlines() -> None:
    """A loop that stopped but was not closed (a test's, say) hands the deadlines on to the running one."""
    deadlines = Deadlines()
    first = uvloop.new_event_loop()
    try:
        assert first.run_until_complete(outcome(deadlines.timeout_at, 0.5, 0.01)) == "done"
        assert asyncio.run(outcome(deadlines.timeout_at, 0.02, 0.5)) == "timeout"
        assert asyncio.run(outcome(lambda when: deadlines.timeout(0.02), 0.0, 0.5)) == "timeout"
    finally:
        first.close()
