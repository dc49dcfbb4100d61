"""Refused requests leave no exception behind on the server's thread (issue #20's compiled build).

A coroutine compiled with mypyc keeps its handled exception in the thread's state, not its own: one that
awaits inside an `except` or `finally` block while other requests do the same can leave a handled exception
there, and a later clean `try`/`finally` in another request raises it again (found as a stream that ended
without its last chunk, and a chain of `__context__` that grew with every refusal). The hot-path modules await
only outside those blocks (tests/unit/house/test_hot_path.py enforces it); this drives the real server, and
runs on both builds (`scripts/test` repeats it on the compiled one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

from .conftest import gateway_yaml
from .keys import create_key

MASTER = "sk-master-exception-state-0123"
PROMPT: Any = [{"role": "user", "content": "Say something short."}]


@pytest.fixture(scope="module")
def server(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    spend = tmp_path_factory.mktemp("gw") / "modelyard.db"
    text = gateway_yaml(sim.url, f"access:\n  master_key: {MASTER}\nspend:\n  store: {spend}\n")
    with BackgroundServer(create_app(parse_config(text, env={}))) as gateway:
        yield gateway


def handled_on_server_thread(server: BackgroundServer) -> BaseException | None:
    """The exception the server's thread holds as handled between requests (None when nothing leaked)."""
    assert server.loop is not None
    found: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()
    server.loop.call_soon_threadsafe(lambda: found.set_result(sys.exc_info()[1]))
    return found.result(timeout=10)


def refuse_concurrently(url: str, key: str, count: int) -> list[int]:
    """`count` requests at once for a model the key may not use: each is a 403 from the handler."""

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            calls = [
                client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "via-openai", "messages": PROMPT, "stream": i % 2 == 0},
                )
                for i in range(count)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    return asyncio.run(run())


def test_refusals_leave_no_exception_and_streams_still_end_cleanly(server: BackgroundServer) -> None:
    url = server.url
    elsewhere = create_key(url, MASTER, models=["other"])
    for _ in range(3):
        assert set(refuse_concurrently(url, elsewhere["key"], 60)) == {403}
    assert handled_on_server_thread(server) is None

    allowed = create_key(url, MASTER)
    client = openai.OpenAI(base_url=url + "/v1", api_key=allowed["key"], max_retries=0)
    for _ in range(5):
        chunks = list(
            client.chat.completions.create(
                model="via-openai", messages=PROMPT, stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0  # the final chunk came
    assert handled_on_server_thread(server) is None
