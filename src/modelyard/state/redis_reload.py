"""`modelyard reload --all`: one message on a Redis channel reaches every replica (and every worker of each),
each reloads its own file and answers on a list the caller reads.

The message carries only an id: what a replica loads is always its own config file, so a message can ask
for a reload but cannot change what gets loaded. Answers live 5 minutes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.state.redis_link import cancel_until_done, make_client, redis_errors

log = logging.getLogger("modelyard.reload")

ANSWER_TTL_S = 300
_MAX_ID = 64
#: A reload request is `{"id": "<hex>"}`: anything longer is not one (and is not parsed).
MAX_MESSAGE_BYTES = 1024
#: Requests waiting for the next reload; beyond it they are ignored (their caller times out).
MAX_WAITING = 1000


def channel(prefix: str) -> str:
    return f"{prefix}:reload"


def answers_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:reload:{request_id}"


class ReloadChannel:
    """A replica's subscription: each message asks for a reload; the result is pushed to the answers list of
    every request id it serves. Requests that arrive while a reload runs share the next one (a flood of
    messages is two reloads, not one each). Reconnects with backoff while Redis is away (reloads by signal,
    file watch and admin API still work)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        replica: str,
        on_reload: Callable[[str], Awaitable[dict[str, Any]]],
        timeout_s: float = 0.5,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.replica = replica
        self.on_reload = on_reload
        self.timeout_s = timeout_s
        self.received = 0
        self.ignored = 0
        self._waiting: list[str] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Any = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._client = make_client(self.url, self.timeout_s)
        self._tasks = [
            asyncio.create_task(self._listen(), name="modelyard-reload-channel"),
            asyncio.create_task(self._serve(), name="modelyard-reload-requests"),
        ]

    async def close(self) -> None:
        await cancel_until_done(self._tasks)
        self._tasks = []
        if self._client is not None:
            await asyncio.gather(self._client.aclose(), return_exceptions=True)
            self._client = None

    async def _listen(self) -> None:
        errors = redis_errors()
        delay = 0.5
        down = False
        while True:
            client = make_client(self.url, self.timeout_s)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(channel(self.prefix))
                self.subscribed.set()
                if down:
                    log.warning(
                        "reload channel: Redis is reachable again; `modelyard reload --all` reaches this replica"
                    )
                down, delay = False, 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._request(message.get("data"))
            except errors as exc:
                self.subscribed.clear()
                if not down:
                    log.warning("reload channel: Redis unreachable (%s); retrying", exc or type(exc).__name__)
                down = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                await asyncio.gather(pubsub.aclose(), client.aclose(), return_exceptions=True)

    def _request(self, data: Any) -> None:
        """Queue one request id; anything that is not `{"id": ...}` of a sane size is ignored (counted)."""
        request_id = request_id_of(data)
        if request_id is None or len(self._waiting) >= MAX_WAITING:
            self.ignored += 1
            return
        self.received += 1
        self._waiting.append(request_id)
        self._wake.set()

    async def _serve(self) -> None:
        """One reload for every request that arrived before it started; its result answers them all."""
        errors = redis_errors()
        while True:
            await self._wake.wait()
            self._wake.clear()
            ids, self._waiting = self._waiting, []
            result = await self.on_reload(f"reload --all {ids[0]}" + (f" (+{len(ids) - 1})" if len(ids) > 1 else ""))
            result["replica"] = self.replica
            answer = json.dumps(result)
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for request_id in ids:
                        key = answers_key(self.prefix, request_id)
                        pipe.rpush(key, answer)
                        pipe.expire(key, ANSWER_TTL_S)
                    await pipe.execute()
            except errors as exc:
                log.warning("reload channel: the reload's answer was not written (%s)", exc or type(exc).__name__)


def request_id_of(data: Any) -> str | None:
    """The id of a reload request, or None for anything else (garbage, a huge or deeply nested message)."""
    if not isinstance(data, bytes | str) or len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    request_id = parsed.get("id") if isinstance(parsed, dict) else None
    if not isinstance(request_id, str) or not request_id:
        return None
    return request_id[:_MAX_ID]


async def reload_all(url: str, *, prefix: str, timeout_s: float = 30.0) -> tuple[int, list[dict[str, Any]]]:
    """Ask every subscribed replica to reload; (how many were reached, their answers as they came within
    `timeout_s`)."""
    client = make_client(url, timeout_s + 5.0)
    try:
        request_id = uuid.uuid4().hex
        reached = int(await client.publish(channel(prefix), json.dumps({"id": request_id})))
        key = answers_key(prefix, request_id)
        deadline = time.monotonic() + timeout_s
        answers: list[dict[str, Any]] = []
        while len(answers) < reached and (left := deadline - time.monotonic()) > 0:
            item = await client.blpop([key], timeout=max(0.01, left))
            if item is None:
                break
            answers.append(json.loads(item[1]))
        return reached, answers
    finally:
        await client.aclose()
