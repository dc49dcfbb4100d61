"""One Redis connection's health, for every state kept there (key counters, shared deployment buckets).

The client is made with short timeouts and one immediate retry (a pooled connection Redis closed), so an outage
is noticed in `timeout_s`, not after redis-py's default backoff of several seconds. An outage is noted once (one
warning, not one per request) and a probe pings with backoff until Redis answers again; the owner may have work
to do on its return (`on_return`: the key counters replay settlements) before it counts as back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger("modelyard.state")


def replica_id() -> str:
    """This process among the replicas (host:pid:random), readable in Redis: what a replica writes there is
    tagged with it, so it can skip its own publications."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def redis_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable, hung or restarting Redis raises."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, asyncio.TimeoutError)


def make_client(url: str, timeout_s: float) -> Any:
    """A redis-py asyncio client that notices an outage within `timeout_s`."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
    )


async def cancel_until_done(tasks: Iterable[asyncio.Task[Any]], retry_s: float = 0.1) -> None:
    """Cancel `tasks` and wait until every one has ended, cancelling again as long as one runs on.

    One `cancel()` is not enough for a task inside a redis-py command: a cancellation that lands as a read
    times out, or mid-pipeline, is swallowed (measured: a stream writer went back to waiting; close() hung in
    3 of 12 runs under load), so a close that cancels once can hang. Loops that must stop also check a flag.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)


class RedisLink:
    """Up or down; `went_down` starts the probe, which brings it back up once Redis answers (and `on_return`
    has succeeded)."""

    def __init__(
        self,
        client: Callable[[], Any],
        *,
        what: str,
        timeout_s: float,
        probe_min_s: float = 0.05,
        probe_max_s: float = 0.5,
        on_return: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self._client = client
        self.what = what
        self.timeout_s = timeout_s
        self.probe_min_s = probe_min_s
        self.probe_max_s = probe_max_s
        self._on_return = on_return
        self.errors = redis_errors()
        self.available = True
        self.down_since = 0.0
        self.outages = 0
        self._probe: asyncio.Task[None] | None = None

    @property
    def unavailable_s(self) -> float:
        """Seconds the current outage has lasted (0 when Redis is reachable)."""
        return 0.0 if self.available else time.monotonic() - self.down_since

    def went_down(self, exc: BaseException, consequence: str) -> bool:
        """Note an outage and start probing; True when this call started it (the caller's own reaction then),
        False when Redis was already known to be down."""
        if not self.available:
            return False
        self.available = False
        self.down_since = time.monotonic()
        self.outages += 1
        log.warning(
            "Redis is unreachable (%s: %s): %s until it returns", type(exc).__name__, exc or "timed out", consequence
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(
                self._probe_loop(), name=f"modelyard-probe-{self.what}"
            )
        return True

    async def _probe_loop(self) -> None:
        delay = self.probe_min_s
        while True:
            await asyncio.sleep(delay)
            client = self._client()
            try:
                await client.connection_pool.disconnect()  # drop connections to the old server
                await asyncio.wait_for(client.ping(), self.timeout_s)
                done = await self._on_return() if self._on_return is not None else ""
            except Exception as exc:  # anything: the probe must outlive the outage (Redis errors expected)
                if not isinstance(exc, self.errors):
                    log.warning("probing Redis failed unexpectedly: %r", exc)
                delay = min(delay * 2, self.probe_max_s)
                continue
            log.warning(
                "Redis is reachable again after %.1fs (%s%s)",
                time.monotonic() - self.down_since,
                self.what,
                f"; {done}" if done else "",
            )
            self.available = True
            return

    async def close(self) -> None:
        if self._probe is not None:
            await cancel_until_done([self._probe])
            self._probe = None
