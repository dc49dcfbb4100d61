"""Backends for the state tests: every test runs on each store (SQLite, PostgreSQL) and counter (memory,
Redis). The servers are the real ones on loopback; a test is skipped, saying why, only when its server
is absent. Each test gets its own PostgreSQL schema and Redis prefix, so parallel runs do not collide."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelyard.accounting.spend import SpendRecord
from modelyard.state.counters import Counters, MemoryCounters
from modelyard.state.store import Store

PG_DSN = os.environ.get("MODELYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MODELYARD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def spend_record(i: int, **fields: object) -> SpendRecord:
    """A spend row numbered `i` (its id and second), `fields` laid over a typical request's."""
    base: dict[str, object] = {
        "id": f"req_{i}",
        "at": 1_700_000_000.0 + i,
        "model": "smart",
        "deployment": "gpt-4o@openai",
        "provider": "openai",
        "status": "ok",
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cost_usd": 0.001,
        "attempts": 1,
    }
    base.update(fields)
    return SpendRecord(**base)  # type: ignore[arg-type]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def make_store(kind: str, tmp_path: Path) -> Store:
    if kind == "sqlite":
        from modelyard.state.sqlite_store import SQLiteStore

        store: Store = SQLiteStore(str(tmp_path / "modelyard.db"))
    else:
        if not _reachable("127.0.0.1", 5432):
            pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
        from modelyard.state.postgres_store import PostgresStore

        store = PostgresStore(PG_DSN, schema=unique("t"))
    await store.open()
    return store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made = await make_store(request.param, tmp_path)
    try:
        yield made
    finally:
        drop = getattr(made, "drop", None)
        if drop is not None:
            await drop()
        await made.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield MemoryCounters()
        return
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    from modelyard.state.redis_counters import RedisCounters

    prefix = unique("modelyard_test")
    made = RedisCounters(REDIS_URL, prefix=prefix)
    await made.start()
    try:
        yield made
    finally:
        await made.drain()
        client = made._client
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await made.close()
