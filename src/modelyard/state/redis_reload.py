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


def channel(prefix: str) -> str:
    return f"{prefix}:reload"


def answers_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:reload:{request_id}"


class ReloadChannel:
    """A replica's subscription: each message → `on_reload(reason)` → its result pushed to the answers list.
    Reconnects with backoff while Redis is away (reloads by signal, file watch and admin API still work)."""

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
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="modelyard-reload-channel")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_until_done([self._task])
            self._task = None

    async def _run(self) -> None:
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
                        await self._answer(client, message.get("data"))
            except errors as exc:
                self.subscribed.clear()
                if not down:
                    log.warning("reload channel: Redis unreachable (%s); retrying", exc or type(exc).__name__)
                down = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                await asyncio.gather(pubsub.aclose(), client.aclose(), return_exceptions=True)

    async def _answer(self, client: Any, data: Any) -> None:
        try:
            request_id = str(json.loads(data)["id"])[:_MAX_ID]
        except (ValueError, KeyError, TypeError):
            log.warning("reload channel: a message that is not a reload request was ignored")
            return
        self.received += 1
        result = await self.on_reload(f"reload --all {request_id}")
        result["replica"] = self.replica
        key = answers_key(self.prefix, request_id)
        await client.rpush(key, json.dumps(result))
        await client.expire(key, ANSWER_TTL_S)


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
