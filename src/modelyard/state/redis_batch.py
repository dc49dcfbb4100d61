"""Script calls made in one event-loop turn reach Redis as one pipeline: one write and one read for all of them.

Every request with shared state on makes two or three Lua calls (the key's admission, the deployment's bucket,
the settlement). Made one at a time through redis-py, each costs a pooled connection's checkout, a write, a
read and their asyncio stream machinery: ~100 µs of CPU, which made the Redis row of the benchmark 2.3x the
CPU of the same gateway without Redis (docs/benchmarks.md, issue 20). Under load many requests reach the same
step in the same loop turn; their calls are queued here and the turn's end sends them as one non-transactional
pipeline of EVALSHAs. Each caller still gets its own answer or its own error; when every caller of a turn has
given up (their timeouts), the command is cancelled, as a call made on its own would have been.

A script Redis does not know (a restarted or flushed Redis) answers NOSCRIPT inside the pipeline: those calls
are made again one by one through redis-py's `Script`, which loads it. An error that fails the pipeline (a
connection refused, a timeout) fails every call of the turn with it, as it would have failed each of them: the
owners' outage handling (`RedisLink`) is unchanged. A caller that stops waiting (its own timeout) leaves its
future cancelled; the answer, when it comes, is dropped.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

Call = tuple[Any, list[Any], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Queue `call(script, keys, args)` for this loop turn; the turn's calls go out as one pipeline."""

    def __init__(self, client: Callable[[], Any]) -> None:
        #: The redis-py client, read at flush time (an owner may make it after this batcher).
        self._client = client
        self._queued: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, script: Any, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        """The script's answer, as `await script(keys=keys, args=args)` would give it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append((script, keys, args, future))
        return future

    def _flush(self) -> None:
        calls, self._queued = self._queued, []
        calls = [call for call in calls if not call[3].done()]  # callers that gave up already
        if not calls:
            return
        work = self._one(calls[0]) if len(calls) == 1 else self._pipeline(calls)
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        futures = [call[3] for call in calls]
        watch = functools.partial(_abandoned, task, futures)
        for future in futures:
            future.add_done_callback(watch)

    async def _one(self, call: Call) -> None:
        script, keys, args, future = call
        try:
            answer = await script(keys=keys, args=args)
        except BaseException as exc:  # given to the caller, who handles it as before
            _fail(future, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        _answer(future, answer)

    async def _pipeline(self, calls: list[Call]) -> None:
        from redis.exceptions import NoScriptError

        pipe = self._client().pipeline(transaction=False)
        for script, keys, args, _ in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            answers = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for call in calls:
                _fail(call[3], exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        unknown: list[Call] = []
        for call, answer in zip(calls, answers, strict=True):
            if isinstance(answer, NoScriptError):
                unknown.append(call)
            elif isinstance(answer, Exception):
                _fail(call[3], answer)
            else:
                _answer(call[3], answer)
        for call in unknown:  # loaded by redis-py's Script on this first call
            await self._one(call)

    @property
    def busy(self) -> bool:
        """Calls queued for this turn or in flight."""
        return bool(self._queued or self._tasks)

    async def drain(self) -> None:
        """Wait until every call made so far has its answer (shutdown, tests)."""
        while self._queued or self._tasks:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)  # the turn's flush sends what is queued


def _abandoned(task: asyncio.Task[None], futures: list[asyncio.Future[Any]], _: asyncio.Future[Any]) -> None:
    """Once every caller of a turn has stopped waiting (their timeouts), the command is cancelled: redis-py
    then drops its connection, so a hung Redis that wakes up later does not run a call nobody waits for (a
    token taken for a request that was already refused)."""
    if not task.done() and all(future.cancelled() for future in futures):
        task.cancel()


def _answer(future: asyncio.Future[Any], answer: Any) -> None:
    if not future.done():
        future.set_result(answer)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
