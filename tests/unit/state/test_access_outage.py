"""The access layer when its state goes away: budgets re-seeded from the store plus the unwritten spend, store
calls bounded (503, never a hang), bad key rows skipped instead of stopping the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelyard.accounting.budgets import NANO
from modelyard.accounting.spend import SpendRecord
from modelyard.routing.features import RequestFeatures
from modelyard.schema.errors import GatewayError
from modelyard.server.access import Access
from modelyard.state.counters import MemoryCounters
from modelyard.state.keys import KeyRecord, new_key
from modelyard.state.outage import StoreGuard
from modelyard.state.redis_counters import RedisCounters
from modelyard.state.sqlite_store import SQLiteStore
from tests.redis_server import REDIS_SERVER, RedisServer

PRICES = {"smart": (1000.0, 2000.0)}  # nano-dollars per token


class HangingStore(SQLiteStore):
    """A store whose key lookups and reports hang once `hang` is set (a dead network to PostgreSQL)."""

    hang = False

    async def _maybe_hang(self) -> None:
        if self.hang:
            await asyncio.Event().wait()

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        await self._maybe_hang()
        return await super().find_key(key_hash)

    async def spent_since(self, key_id: str, since: float) -> float:
        await self._maybe_hang()
        return await super().spent_since(key_id, since)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HangingStore]:
    made = HangingStore(str(tmp_path / "keys.db"))
    await made.open()
    try:
        yield made
    finally:
        await made.close()


def features() -> RequestFeatures:
    return RequestFeatures(prompt_tokens=100, max_output_tokens=50)  # 200_000 nano at PRICES


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_budget_redis_lost_is_reseeded_from_the_store_plus_the_unwritten_spend(store: HangingStore) -> None:
    raw, record = new_key("team", budget_usd=0.01, period_s=86400.0)
    await store.create_key(record)
    await store.write_spend([SpendRecord(id="r1", at=time.time(), key_id=record.id, cost_usd=0.002)])
    unwritten = {"usd": 0.001}
    with RedisServer() as redis:
        counters = RedisCounters(redis.url, prefix="a", timeout_s=0.3)
        access = Access(
            store=store,
            counters=counters,
            refresh_s=0,
            prices=PRICES,
            unsettled=lambda key_id, since: unwritten["usd"] if key_id == record.id else 0.0,
        )
        await access.start()
        try:
            key = await access.authenticate(raw)
            first = await access._reserve(key, "smart", features())
            assert await counters.budget_state(record.id, 0) == (3_000_000, 200_000)
            assert first is not None
            counters.settle(first, 150_000, 0)
            await counters.drain()
            await counters._client.flushall()  # Redis restarted empty, or evicted the budget
            unwritten["usd"] = 0.001 + 150_000 / NANO  # that request's record is still in the spool
            await access._reserve(key, "smart", features())
            assert await counters.budget_state(record.id, 0) == (3_150_000, 200_000)  # not a fresh budget
            spend = await access.key_spend(record)
            assert spend is not None and spend["spent_usd"] == pytest.approx(0.00315)
        finally:
            await access.close()


async def test_store_calls_are_bounded_and_an_unknown_key_gets_a_503(store: HangingStore) -> None:
    raw, record = new_key("known", budget_usd=1.0)
    await store.create_key(record)
    access = Access(store=store, counters=MemoryCounters(), refresh_s=0, prices=PRICES, store_timeout_s=0.2)
    await access.start()
    try:
        store.hang = True
        start = time.monotonic()
        with pytest.raises(GatewayError) as unknown:
            await access.authenticate("sk-my-not-a-key-0123456789")
        assert unknown.value.status == 503 and unknown.value.code == "store_unavailable"
        assert unknown.value.headers["Retry-After"] == "1"
        assert time.monotonic() - start < 0.5
        key = await access.authenticate(raw)  # a cached key needs no store ...
        with pytest.raises(GatewayError) as seeding:  # ... but its budget's first seed does
            await access._reserve(key, "smart", features())
        assert seeding.value.status == 503
        store.hang = False
        await asyncio.sleep(1.05)  # the guard trusts the store again after its fail-fast second
        assert await access._reserve(key, "smart", features()) is not None
    finally:
        await access.close()


async def test_the_guard_does_not_wait_for_a_call_that_ignores_its_cancellation() -> None:
    guard = StoreGuard(timeout_s=0.1)

    release = asyncio.Event()

    async def stubborn() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await release.wait()  # a driver stuck cancelling on a dead network
        return 1

    start = time.monotonic()
    with pytest.raises(GatewayError):
        await guard.call(stubborn())
    assert time.monotonic() - start < 0.5
    assert guard.down
    with pytest.raises(GatewayError):  # fails fast meanwhile
        await guard.call(asyncio.sleep(0, result=1))
    release.set()
    await asyncio.sleep(0.01)


async def test_a_key_row_with_impossible_limits_is_skipped_not_fatal(store: HangingStore) -> None:
    good_raw, good = new_key("good", budget_usd=1.0)
    bad_raw, bad = new_key("bad", budget_usd=1.0)
    bad.budget_usd, bad.rpm = 1e300, 0
    for record in (good, bad):
        await store.create_key(record)
    access = Access(store=store, counters=MemoryCounters(), refresh_s=0, prices=PRICES)
    await access.start()  # before: OverflowError, and the gateway did not start
    try:
        assert (await access.authenticate(good_raw)).id == good.id
        with pytest.raises(GatewayError) as refused:
            await access.authenticate(bad_raw)
        assert refused.value.status == 401
        assert await access.key_spend(bad) is None
    finally:
        await access.close()
