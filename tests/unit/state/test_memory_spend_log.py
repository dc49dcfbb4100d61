"""An in-memory spend log (no `spend.store`) is bounded: it keeps about the newest `spend.memory_rows` requests,
and a key's spend since any time still counts the evicted rows (from the rollups), never less than was spent."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelyard.accounting.spend import SpendRecord
from modelyard.state import rollup
from modelyard.state.sqlite_store import SQLiteStore
from tests.unit.state.conftest import spend_record

T0 = 1_700_000_000.0  # T0 % 60 == 20: a minute starts at T0 + 40
KEEP = 1000


def _rows(count: int, start_at: float, first_id: int = 0) -> list[SpendRecord]:
    """One request a second; even ones by key `k` (0.125 USD), odd ones by `other` (1 USD)."""
    return [
        spend_record(
            first_id + i,
            at=start_at + i,
            key_id="k" if i % 2 == 0 else "other",
            cost_usd=0.125 if i % 2 == 0 else 1.0,
        )
        for i in range(count)
    ]


async def _write(store: SQLiteStore, records: list[SpendRecord], batch: int = 100) -> None:
    for start in range(0, len(records), batch):
        await store.write_spend(records[start : start + batch])


async def _count(store: SQLiteStore, sql: str) -> int:
    return int(await store._run(lambda conn: conn.execute(sql).fetchone()[0]))


@pytest.fixture
async def memory() -> AsyncIterator[SQLiteStore]:
    """An open in-memory store keeping KEEP rows."""
    store = SQLiteStore(":memory:", memory_rows=KEEP)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _spent(records: list[SpendRecord], since: float) -> float:
    return sum(r.cost_usd for r in records if r.key_id == "k" and r.at >= since)


async def test_an_in_memory_log_keeps_about_the_newest_rows_and_every_total(memory: SQLiteStore) -> None:
    records = _rows(5000, T0)
    await _write(memory, records)
    kept = await _count(memory, "SELECT COUNT(*) FROM modelyard_spend")
    assert KEEP <= kept <= KEEP + KEEP // 10
    assert await memory.get_spend(records[-1].id) is not None  # the newest stay
    assert await memory.get_spend(records[0].id) is None  # the oldest went
    oldest_kept = await _count(memory, "SELECT MIN(CAST(substr(id, 5) AS INTEGER)) FROM modelyard_spend")
    assert oldest_kept == 5000 - kept  # exactly the newest `kept`, none skipped
    for grain in ("minute", "hour"):  # the rollups still hold every request
        total = f"SELECT SUM(requests) FROM modelyard_spend_{grain} WHERE dim = 'all'"
        assert await _count(memory, total) == 5000


async def test_a_file_store_keeps_every_row(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "spend.db"), memory_rows=KEEP)
    await store.open()
    try:
        await _write(store, _rows(3000, T0))
        assert await _count(store, "SELECT COUNT(*) FROM modelyard_spend") == 3000
    finally:
        await store.close()


async def test_a_keys_spend_counts_the_evicted_rows_and_is_never_low(memory: SQLiteStore) -> None:
    records = _rows(5000, T0)
    await _write(memory, records)
    evicted_through = 5000 - await _count(memory, "SELECT COUNT(*) FROM modelyard_spend") - 1
    assert evicted_through > 2000
    # Kept rows only: exact.
    assert await memory.spent_since("k", T0 + 4500) == pytest.approx(_spent(records, T0 + 4500))
    # From a minute boundary inside the evicted rows: the rollups, exact.
    for since in (T0 + 40, T0 + 40 + 60 * 20, T0 - 3600):
        assert await memory.spent_since("k", since) == pytest.approx(_spent(records, since))
    # From inside a minute: at most that minute's spend before `since` too, never less than spent.
    for since in (T0 + 41, T0 + 40 + 60 * 30 + 33):
        minute_start = math.floor(since / 60) * 60
        got = await memory.spent_since("k", since)
        assert _spent(records, since) <= got + 1e-9
        assert got <= _spent(records, minute_start) + 1e-9
    assert await memory.spent_since("nobody", T0) == 0.0
    # A time that is not a number never reaches the bucket arithmetic: the rows' answer (nothing is >= NaN).
    assert await memory.spent_since("k", math.nan) == 0.0


async def test_past_the_minute_rollups_the_hours_count(memory: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollup, "PURGE_EVERY_S", 0.0)  # purge old minutes at every write
    old = _rows(200, T0 - 3 * 86400, first_id=100_000)  # minutes purged once newer rows come
    new = _rows(3000, T0)
    await _write(memory, old)
    await _write(memory, new)
    old_minutes = f"SELECT COUNT(*) FROM modelyard_spend_minute WHERE bucket < {T0 - 2 * 86400}"
    assert await _count(memory, old_minutes) == 0
    everything = old + new
    since = T0 - 3 * 86400 + 50  # inside an hour whose minutes are gone
    got = await memory.spent_since("k", since)
    assert _spent(everything, since) <= got + 1e-9
    assert got <= _spent(everything, math.floor(since / 3600) * 3600) + 1e-9


async def test_a_failed_trim_is_not_a_failed_write(memory: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.state import sqlite_store

    def broken(conn: sqlite3.Connection, keep: int, most: int = 0) -> tuple[float | None, int]:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(sqlite_store, "evict_oldest", broken)
    await _write(memory, _rows(2000, T0))  # no exception: the rows are stored, the trim waits
    assert await _count(memory, "SELECT COUNT(*) FROM modelyard_spend") == 2000
    monkeypatch.undo()
    await _write(memory, _rows(200, T0 + 2000, first_id=2000))
    assert await _count(memory, "SELECT COUNT(*) FROM modelyard_spend") == KEEP  # trimmed at the next check


def _varied(i: int) -> SpendRecord:
    return spend_record(
        i,
        key_id=f"key_{i % 3}" if i % 4 else None,
        model=("smart", "fast")[i % 2],
        deployment=("dep-a", "dep-b", "dep-c")[i % 3],
        status="ok" if i % 5 else "error",
        cost_usd=0.001 * (i % 11),
        latency_ms=float((i * 37) % 4000),
    )


async def _indexes(store: SQLiteStore) -> set[str]:
    sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'modelyard_spend'"
    return {row[0] for row in await store._run(lambda conn: conn.execute(sql).fetchall())}


async def test_an_in_memory_log_answers_every_filter_as_a_file_does_without_the_big_log_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.state import store as store_module
    from modelyard.state.sqlite_store import _BIG_LOG_INDEXES
    from modelyard.state.store import SpendFilter

    monkeypatch.setattr(store_module, "SELECTIVE", 100)  # the file store takes its threshold indexes' hint
    memory = SQLiteStore(":memory:")
    file = SQLiteStore(str(tmp_path / "spend.db"))
    records = [_varied(i) for i in range(3000)]
    for store in (memory, file):
        await store.open()
        await _write(store, records, batch=500)
    try:
        assert set(_BIG_LOG_INDEXES) <= await _indexes(file)  # the names are the migrations' own
        assert not set(_BIG_LOG_INDEXES) & await _indexes(memory)
        for where in (
            SpendFilter(),
            SpendFilter(key_id="key_1"),
            SpendFilter(model="fast", status="error"),
            SpendFilter(deployment="dep-c", since=T0 + 500),
            SpendFilter(min_cost_usd=0.0095),
            SpendFilter(min_latency_ms=3990.0, min_cost_usd=0.0),
            SpendFilter(before_at=T0 + 1500, before_id="req_1500"),
        ):
            found = [r.id for r in await memory.find_spend(where, 50)]
            assert found == [r.id for r in await file.find_spend(where, 50)], where
            assert found, where
    finally:
        await memory.close()
        await file.close()


def test_the_config_sets_what_memory_keeps() -> None:
    from modelyard.config.loader import parse_config
    from modelyard.schema.errors import ModelyardError
    from modelyard.server.services import build_services

    deployments = 'deployments:\n  - {name: d, provider: openai, model: m, api_base: "http://127.0.0.1:9/v1"}\n'
    store = build_services(parse_config(deployments + "spend: {memory_rows: 5000}\n", env={})).store
    assert isinstance(store, SQLiteStore)
    assert store.memory_rows == 5000
    default = build_services(parse_config(deployments, env={})).store
    assert isinstance(default, SQLiteStore) and default.memory_rows == 100_000
    for bad in ("10", "-5", "1000000000000", ".nan", "lots"):
        with pytest.raises(ModelyardError, match="memory_rows"):
            parse_config(deployments + f"spend: {{memory_rows: {bad}}}\n", env={})
