"""What the request and admin paths do when shared state (Redis, the store) is unreachable.

A store or Redis outage must cost clients a quick, retryable 503, never a hang (every call is bounded by a
timeout) and never a 500 with a traceback per request (one log line per outage, not per request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec

from modelyard.schema.errors import GatewayError, ModelyardError

log = logging.getLogger("modelyard.state")

T = TypeVar("T")

#: Seconds a client is told to wait (`Retry-After`) while shared state is unreachable.
RETRY_AFTER_S = 1


class StateUnavailable(ModelyardError):
    """Redis (the shared counters) cannot be reached and the gateway is configured to fail closed."""

    def __init__(self, retry_after: float = RETRY_AFTER_S) -> None:
        super().__init__("the gateway's shared state (Redis) is unreachable")
        self.retry_after = retry_after


def state_unavailable(retry_after: float = RETRY_AFTER_S) -> GatewayError:
    """The client's answer while Redis is down: 503, retryable."""
    wait = str(max(1, round(retry_after)))
    return GatewayError(
        503,
        "The gateway cannot check this key's limits right now (its shared state is "
        f"unreachable). Please retry in {wait}s.",
        type="server_error",
        code="state_unavailable",
        headers={"Retry-After": wait},
    )


def store_unavailable() -> GatewayError:
    """The client's answer while the store (keys, spend log) is down or too slow: 503, retryable."""
    return GatewayError(
        503,
        f"The gateway's store is unavailable. Please retry in {RETRY_AFTER_S}s.",
        type="server_error",
        code="store_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _within(call: Awaitable[T], timeout_s: float) -> T:
    """`call`'s result, or TimeoutError after `timeout_s` without waiting for the call to wind down.

    Not `asyncio.wait_for`: it waits for the cancelled call to finish, and a database driver cancelling a
    query on a dead network (asyncpg sends a cancel request over a new connection) can take for ever.
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise TimeoutError(f"no answer within {timeout_s:g}s")
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning for an abandoned call


class StoreGuard:
    """Bounds every store call by a timeout and turns a failure into a 503; remembers a failure for a moment
    so a flood of requests during an outage fails fast instead of queueing on a dead connection."""

    def __init__(self, timeout_s: float = 5.0, fail_fast_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self.fail_fast_s = fail_fast_s
        self._down_until = 0.0
        self._logged = False

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    async def call(self, call: Awaitable[T]) -> T:
        """`await call` within the timeout, or raise the 503 `store_unavailable` (one warning per outage)."""
        if self.down:
            if asyncio.iscoroutine(call):
                call.close()  # never awaited: do not let Python warn about it
            raise store_unavailable()
        try:
            result = await _within(call, self.timeout_s)
        except GatewayError:
            raise
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            # What the store answered could not be read: a data problem, not an outage (a 503 and "the store
            # is unavailable" for every later call would be wrong).
            raise GatewayError(
                500, f"the store holds data this version cannot read: {exc}", code="store_data"
            ) from None
        except Exception as exc:
            self._down_until = time.monotonic() + self.fail_fast_s
            if not self._logged:
                self._logged = True
                log.warning(
                    "the store is unavailable (%s: %s); answering 503 until it returns",
                    type(exc).__name__,
                    exc or "timed out",
                )
            raise store_unavailable() from None
        if self._logged:
            self._logged = False
            log.warning("the store is reachable again")
        return result
