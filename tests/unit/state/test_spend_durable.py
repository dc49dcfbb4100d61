"""Spend rows on the real stores (SQLite, PostgreSQL): idempotent replay by id, and poison rows that once
stopped the PostgreSQL spend log for good (a NUL byte: `invalid byte sequence for encoding "UTF8": 0x00`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelyard.accounting.spend import SpendRecord, SpendWriter
from modelyard.state.store import Store
from tests.unit.state.conftest import spend_record


def _spend(i: int, **fields: Any) -> SpendRecord:
    return spend_record(i, **{"prompt_tokens": 10, **fields})


async def _rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    pool = getattr(store, "pool", None)
    if pool is not None:
        return [tuple(r) for r in await pool.fetch(sql)]
    return await store._run(lambda conn: conn.execute(sql).fetchall())  # type: ignore[attr-defined, no-any-return]


async def test_write_spend_skips_ids_already_stored(store: Store) -> None:
    await store.write_spend([_spend(i) for i in range(10)])
    await store.write_spend([_spend(i) for i in range(5, 15)])  # a replay overlapping what is stored
    await store.write_spend([_spend(20), _spend(20)])  # the same id twice in one batch
    rows = await _rows(store, "SELECT id, COUNT(*) FROM modelyard_spend GROUP BY id")
    assert len(rows) == 16 and all(count == 1 for _, count in rows)


async def test_poison_rows_are_sanitised_or_set_aside_and_later_batches_flow(store: Store, tmp_path: Path) -> None:
    writer = SpendWriter(store, batch_size=50, flush_interval_s=0.01, spool_dir=tmp_path / "spool")
    await writer.start()
    try:
        for i in range(20):
            fields: dict[str, Any] = {}
            if i == 3:
                fields = {"model": "evil\x00model"}  # NUL: PostgreSQL text cannot hold it
            elif i == 7:
                fields = {"key_name": "half \ud800 pair"}  # a lone surrogate: not UTF-8 at all
            elif i == 11:
                fields = {"prompt_tokens": 2**70}  # beyond BIGINT: clamped when sanitised
            elif i == 15:
                fields = {"status": None}  # NOT NULL: nothing can fix it → dead letter
            writer.submit(_spend(i, **fields))
        assert await writer.flush(10)
        ids = {r[0] for r in await _rows(store, "SELECT id FROM modelyard_spend")}
        assert ids == {f"req_{i}" for i in range(20)} - {"req_15"}
        models = dict(await _rows(store, "SELECT id, model FROM modelyard_spend WHERE id = 'req_3'"))
        assert "\x00" not in models["req_3"] and models["req_3"].startswith("evil")
        dead = await _rows(store, "SELECT id, error, record FROM modelyard_spend_dead")
        assert [d[0] for d in dead] == ["req_15"] and '"status":null' in dead[0][2].replace(" ", "")
        assert writer.dead_letters == 1

        writer.submit(_spend(100, model="after the poison"))
        assert await writer.flush(10)
        assert await _rows(store, "SELECT id FROM modelyard_spend WHERE id = 'req_100'") == [("req_100",)]
    finally:
        await writer.close()
    assert os.listdir(tmp_path / "spool") == []


async def test_a_cost_or_latency_that_is_not_finite_is_stored_as_zero_and_the_rollups_stay_finite(
    store: Store, tmp_path: Path
) -> None:
    """Non-finite money must not reach the rollups' sums (one inf would poison a bucket for good): the row is
    a data error, sanitised (the number made 0) and written; the rest of the batch is untouched."""
    writer = SpendWriter(store, batch_size=50, flush_interval_s=0.01)
    await writer.start()
    try:
        for i in range(10):
            fields: dict[str, Any] = {}
            if i == 2:
                fields = {"cost_usd": float("inf")}
            elif i == 5:
                fields = {"latency_ms": float("nan")}
            writer.submit(_spend(i, **fields))
        assert await writer.flush(10)
    finally:
        await writer.close()
    rows = dict(await _rows(store, "SELECT id, cost_usd FROM modelyard_spend"))
    assert len(rows) == 10 and rows["req_2"] == 0.0 and rows["req_1"] == 0.001
    latency = dict(await _rows(store, "SELECT id, latency_ms FROM modelyard_spend WHERE id = 'req_5'"))
    assert latency["req_5"] == 0.0
    hours = await store.traffic("hour", "all", 0.0, 2_000_000_000.0)
    assert sum(r.requests for r in hours) == 10
    assert abs(sum(r.cost_usd for r in hours) - 9 * 0.001) < 1e-12


def test_a_batch_of_any_size_is_cut_into_statements_of_the_cached_sizes() -> None:
    from modelyard.state import sqlite_store

    for total in range(0, 3 * sqlite_store.INSERT_ROWS + 2):
        sizes = sqlite_store._statement_rows(total)
        assert sum(sizes) == total and set(sizes) <= set(sqlite_store._SPEND_INSERTS)
        assert sizes == sorted(sizes, reverse=True) and len(sizes) <= total // sqlite_store.INSERT_ROWS + 7
