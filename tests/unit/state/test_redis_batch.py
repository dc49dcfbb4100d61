"""The script batcher on a real Redis: one pipeline per loop turn, each caller its own answer or error."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from modelyard.state.redis_batch import ScriptBatcher
from tests.redis_server import RedisServer
from tests.unit.state.conftest import REDIS_URL, _reachable

ECHO = "if ARGV[1] == 'boom' then return redis.error_reply('boom') end return ARGV[1]"

pytestmark = pytest.mark.skipif(not _reachable("127.0.0.1", 6379), reason="Redis is not running on 127.0.0.1:6379")


class CountingClient:
    """The real client, counting the pipelines made from it (each is one write and one read)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pipelines = 0

    def pipeline(self, transaction: bool = True) -> Any:
        self.pipelines += 1
        return self.client.pipeline(transaction=transaction)


@pytest.fixture
async def client() -> Any:
    import redis.asyncio as aioredis

    made = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.5)
    yield made
    await made.aclose()


async def test_the_calls_of_one_turn_are_one_pipeline_and_each_gets_its_answer(client: Any) -> None:
    counting = CountingClient(client)
    batcher = ScriptBatcher(lambda: counting)
    script = client.register_script(ECHO)
    await script(keys=[], args=["warm"])  # loaded
    answers = await asyncio.gather(*(batcher.call(script, [], [f"a{i}"]) for i in range(20)))
    assert answers == [f"a{i}".encode() for i in range(20)]
    assert counting.pipelines == 1
    assert await batcher.call(script, [], ["alone"]) == b"alone"  # one call alone: no pipeline
    assert counting.pipelines == 1


async def test_an_error_fails_only_its_own_call(client: Any) -> None:
    from redis.exceptions import ResponseError

    batcher = ScriptBatcher(lambda: client)
    script = client.register_script(ECHO)
    results = await asyncio.gather(
        batcher.call(script, [], ["x"]), batcher.call(script, [], ["boom"]), return_exceptions=True
    )
    assert results[0] == b"x"
    assert isinstance(results[1], ResponseError) and "boom" in str(results[1])


async def test_a_script_redis_forgot_is_loaded_and_every_call_answered() -> None:
    """A restarted Redis knows no script: every call of the turn is answered all the same (a private server:
    flushing the shared one's scripts would make other tests see a reload)."""
    import redis.asyncio as aioredis

    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
        try:
            batcher = ScriptBatcher(lambda: client)
            script = client.register_script(ECHO)
            await script(keys=[], args=["loaded"])
            server.kill()
            server.start()  # empty: the script is gone; redis-py reconnects once
            answers = await asyncio.gather(*(batcher.call(script, [], [str(i)]) for i in range(5)))
            assert answers == [str(i).encode() for i in range(5)]
        finally:
            await client.aclose()


async def test_a_connection_error_fails_every_call_of_the_turn() -> None:
    import redis.asyncio as aioredis

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    try:
        batcher = ScriptBatcher(lambda: dead)
        script = dead.register_script(ECHO)
        results = await asyncio.gather(*(batcher.call(script, [], ["x"]) for _ in range(3)), return_exceptions=True)
        from redis.exceptions import ConnectionError as RedisConnectionError

        assert all(isinstance(r, RedisConnectionError) for r in results), results
        await batcher.drain()
        assert not batcher.busy
    finally:
        await dead.aclose()


async def test_when_every_caller_gives_up_the_command_is_cancelled(client: Any) -> None:
    """A call nobody waits for any more is not left running: its task is cancelled with its callers."""
    batcher = ScriptBatcher(lambda: client)
    slow = client.register_script(
        "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
        "if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 200000 then break end end "
        "return ARGV[1]"
    )
    calls = [batcher.call(slow, [], [str(i)]) for i in range(2)]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await asyncio.gather(*calls)
    await asyncio.sleep(0)
    assert all(call.cancelled() for call in calls)
    tasks = list(batcher._tasks)
    await asyncio.sleep(0.01)
    assert all(task.done() for task in tasks)  # cancelled, not waiting 200 ms for the script
