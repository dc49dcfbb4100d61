"""The dashboard's store methods on SQLite and PostgreSQL: rollups kept by write_spend (once per row, never
for a replayed or dead-lettered one), migration 5's backfill, traffic, the request log's filters and pages,
key edits and sessions."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from modelyard.accounting.spend import SpendRecord, SpendWriter
from modelyard.accounting.traffic import BUCKETS, latency_bucket
from modelyard.state import postgres_store, rollup, sqlite_store
from modelyard.state import store as store_module
from modelyard.state.keys import new_key
from modelyard.state.migrations import MIGRATIONS, ROLLUP_DIMS, ROLLUP_GRAINS, SPEND_COLUMNS
from modelyard.state.store import SpendFilter, Store, UiSession, find_spend_sql, spend_row

from .conftest import make_store

T0 = 1_700_000_000.0  # a round hour: 1_699_999_200 + 800 s
HOUR = 3600.0


def _spend(i: int, **fields: Any) -> SpendRecord:
    base: dict[str, Any] = {
        "id": f"req_{i:05d}",
        "at": T0 + i * 7.0,
        "key_id": f"key_{i % 3}" if i % 4 else None,
        "model": ("smart", "fast")[i % 2],
        "deployment": ("dep-a", "dep-b", "dep-c")[i % 3],
        "status": "ok" if i % 5 else "error",
        "prompt_tokens": 10 + i,
        "completion_tokens": i % 7,
        "cost_usd": 0.001 * (i % 11),
        "latency_ms": float((i * 37) % 4000),
    }
    base.update(fields)
    return SpendRecord(**base)


def _expected(records: list[SpendRecord]) -> dict[tuple[str, str, str, float], tuple[Any, ...]]:
    """What the rollup tables must hold for `records`, summed the plain way (one row at a time)."""
    out: dict[tuple[str, str, str, float], list[Any]] = {}
    for r in records:
        for grain, width in ROLLUP_GRAINS.items():
            bucket = math.floor(r.at / width) * width
            for dim, value in (("all", ""), ("model", r.model), ("deployment", r.deployment), ("key", r.key_id)):
                sums = out.setdefault((grain, dim, value or "", float(bucket)), [0, 0, 0, 0, 0.0, 0.0] + [0] * BUCKETS)
                sums[0] += 1
                sums[1] += r.status != "ok"
                sums[2] += r.prompt_tokens
                sums[3] += r.completion_tokens
                sums[4] += r.cost_usd
                sums[5] += r.latency_ms
                sums[6 + latency_bucket(r.latency_ms)] += 1
    return {k: _rounded(v) for k, v in out.items()}


def _rounded(values: Any) -> tuple[Any, ...]:
    return tuple(float(f"{v:.8g}") if isinstance(v, float) else int(v) for v in values)  # sums differ in order


async def _sql(store: Store, sql: str) -> list[tuple[Any, ...]]:
    pool = getattr(store, "pool", None)
    if pool is not None:
        return [tuple(r) for r in await pool.fetch(sql)]
    return await store._run(lambda conn: conn.execute(sql).fetchall())  # type: ignore[attr-defined, no-any-return]


async def _insert_v4(store: Store, records: list[SpendRecord]) -> None:
    """Rows as a version-4 store wrote them (no route, attempt_detail; no rollups)."""
    columns = SPEND_COLUMNS[: SPEND_COLUMNS.index("route")]
    rows = [spend_row(r)[: len(columns)] for r in records]
    pool = getattr(store, "pool", None)
    if pool is not None:
        marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
        await pool.executemany(f"INSERT INTO modelyard_spend ({', '.join(columns)}) VALUES ({marks})", rows)
        return
    sql = f"INSERT INTO modelyard_spend ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    await store._run(lambda conn: conn.executemany(sql, rows))  # type: ignore[attr-defined]


async def _rollups(store: Store) -> dict[tuple[str, str, str, float], tuple[Any, ...]]:
    out = {}
    for grain in ROLLUP_GRAINS:
        for row in await _sql(store, f"SELECT * FROM modelyard_spend_{grain}"):
            bucket, dim, value, *sums = row
            out[(grain, dim, value, float(bucket))] = _rounded(sums)
    return out


async def test_write_spend_keeps_rollups_once_per_inserted_row(store: Store) -> None:
    records = [_spend(i) for i in range(300)]
    await store.write_spend(records[:200])
    await store.write_spend(records[150:])  # a spool replay overlapping what is stored
    await store.write_spend([records[0], records[0]])  # all stored already
    await store.write_spend([_spend(900), _spend(900)])  # the same new id twice in one batch
    await store.write_spend([])
    expected = _expected([*records, _spend(900)])
    assert await _rollups(store) == expected
    dims = {dim for _, dim, _, _ in expected}
    assert dims == set(ROLLUP_DIMS)


async def test_minute_rollups_older_than_two_days_are_purged_hour_rollups_kept(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = [_spend(i) for i in range(20)]
    await store.write_spend(old)
    assert {k for k in await _rollups(store) if k[0] == "minute"}  # the first purge cut nothing of its window
    three_days = 3 * 86400.0
    new = [_spend(100 + i, at=T0 + three_days + i) for i in range(5)]
    store._purge.last -= rollup.PURGE_EVERY_S  # type: ignore[attr-defined]  # an hour later
    await store.write_spend(new)
    kept = await _rollups(store)
    minutes = {bucket for grain, _, _, bucket in kept if grain == "minute"}
    assert minutes and min(minutes) >= T0 + three_days - rollup.MINUTE_KEEP_S
    hours = {bucket for grain, _, _, bucket in kept if grain == "hour"}
    assert min(hours) <= T0  # the hour rollups of the old rows stay
    assert kept == {k: v for k, v in _expected([*old, *new]).items() if k[0] == "hour" or k[3] in minutes}


async def test_rollups_skip_dead_letters_and_count_a_sanitised_retry_once(store: Store, tmp_path: Path) -> None:
    writer = SpendWriter(store, batch_size=50, flush_interval_s=0.01, spool_dir=tmp_path / "spool")
    await writer.start()
    try:
        for i in range(20):
            fields: dict[str, Any] = {}
            if i == 3:
                fields = {"model": "evil\x00model"}
            elif i == 7:
                fields = {"at": math.inf}  # refused; sanitised to at 0 and written once
            elif i == 11:
                fields = {"prompt_tokens": 2**70}  # clamped when sanitised; the rollups cap it at 2**40
            elif i == 15:
                fields = {"status": None}  # dead letter: in neither the log nor the rollups
            writer.submit(_spend(i, **fields))
        assert await writer.flush(10)
    finally:
        await writer.close()
    stored = dict(await _sql(store, "SELECT id, at FROM modelyard_spend"))
    assert len(stored) == 19 and "req_00015" not in stored and stored["req_00007"] == 0.0
    total = await store.traffic("hour", "all", 0.0, T0 + HOUR * 10)
    assert sum(r.requests for r in total) == 19
    written = [_spend(i) for i in range(20) if i != 15]
    assert sum(r.prompt_tokens for r in total) == sum(r.prompt_tokens for r in written) - 21 + 2**40
    by_model = {r.value: r.requests for r in await store.traffic("minute", "model", 0.0, T0 + HOUR, by="value")}
    assert by_model["smart"] + by_model["fast"] == 18 and sum(by_model.values()) == 19


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_migration_5_backfills_rollups_of_rows_already_logged(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = sqlite_store if kind == "sqlite" else postgres_store
    rng = random.Random(5)
    records = [
        _spend(i, at=T0 + rng.uniform(-3 * HOUR, 3 * HOUR), latency_ms=rng.choice([0.0, 49.9, 50.0, 120000.0, 9e5]))
        for i in range(400)
    ]
    monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS[:4])
    old = await make_store(kind, tmp_path)
    fresh = None
    try:
        assert await old.schema_version() == 4
        await _insert_v4(old, records)  # version 4: rows only, no rollup tables yet
        monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS[:5])
        await old.close()
        await old.open()
        assert await old.schema_version() == 5
        backfilled = await _rollups(old)
        monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS)
        assert backfilled == _expected(records)
        fresh = await make_store(kind, tmp_path / "fresh")
        await fresh.write_spend(records)
        assert await _rollups(fresh) == backfilled
    finally:
        for made in (old, fresh):
            if made is not None:
                drop = getattr(made, "drop", None)
                if drop is not None:
                    await drop()
                await made.close()


async def test_traffic_by_time_and_by_value(store: Store) -> None:
    records = [_spend(i) for i in range(1000)]  # 7 s apart: about two hours from T0
    await store.write_spend(records)
    by_hour = await store.traffic("hour", "all", T0 - HOUR, T0 + 10 * HOUR)
    assert [r.bucket for r in by_hour] == sorted(r.bucket for r in by_hour) and len(by_hour) == 3
    assert sum(r.requests for r in by_hour) == 1000
    assert sum(r.errors for r in by_hour) == sum(r.status != "ok" for r in records)
    assert sum(sum(r.histogram) for r in by_hour) == 1000 and all(len(r.histogram) == BUCKETS for r in by_hour)
    window = await store.traffic("minute", "all", T0, T0 + 600)
    assert sum(r.requests for r in window) == sum(T0 <= r.at < T0 + 600 for r in records)
    smart = await store.traffic("minute", "model", T0, T0 + 600, value="smart")
    assert sum(r.requests for r in smart) == sum(T0 <= r.at < T0 + 600 and r.model == "smart" for r in records)
    keys = await store.traffic("hour", "key", 0.0, T0 + 10 * HOUR, by="value")
    costs = [r.cost_usd for r in keys]
    assert costs == sorted(costs, reverse=True) and {r.value for r in keys} == {"", "key_0", "key_1", "key_2"}
    assert all(r.bucket == 0.0 for r in keys)
    expected_cost = sum(r.cost_usd for r in records if r.key_id == "key_1")
    assert next(r.cost_usd for r in keys if r.value == "key_1") == pytest.approx(expected_cost)
    with pytest.raises(ValueError):
        await store.traffic("day", "all", 0.0, 1.0)
    with pytest.raises(ValueError):
        await store.traffic("hour", "provider", 0.0, 1.0)
    with pytest.raises(ValueError):
        await store.traffic("hour", "all", math.nan, 1.0)


async def test_find_spend_filters_newest_first_and_pages_by_keyset(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [_spend(i) for i in range(400)]
    records.append(_spend(400, at=records[-1].at, id="req_00399b"))  # the same time as req_00399
    records.append(_spend(401, guardrails="pii:input:redact pass 0 0.02ms, jail:input:block fired 1 0.10ms"))
    records.append(_spend(402, guardrails="pii:input:redact fired 2 0.02ms"))
    await store.write_spend(records)

    def ids(rows: list[SpendRecord]) -> list[str]:
        return [r.id for r in rows]

    def newest(pred: Any) -> list[str]:
        return [r.id for r in sorted(records, key=lambda r: (r.at, r.id), reverse=True) if pred(r)]

    assert ids(await store.find_spend(SpendFilter(), limit=10)) == newest(lambda r: True)[:10]
    page = await store.find_spend(SpendFilter(model="smart", status="error"), limit=50)
    assert ids(page) == newest(lambda r: r.model == "smart" and r.status != "ok")[:50]
    assert ids(await store.find_spend(SpendFilter(status="ok", key_id="key_1"), 500)) == newest(
        lambda r: r.status == "ok" and r.key_id == "key_1"
    )
    assert ids(await store.find_spend(SpendFilter(min_cost_usd=0.009, deployment="dep-b"), 500)) == newest(
        lambda r: r.cost_usd >= 0.009 and r.deployment == "dep-b"
    )
    assert ids(await store.find_spend(SpendFilter(min_latency_ms=3900.0), 500)) == newest(
        lambda r: r.latency_ms >= 3900.0
    )
    # the same thresholds when none counts as selective: the newest-first plan, the same rows
    monkeypatch.setattr(store_module, "SELECTIVE", 1)
    assert ids(await store.find_spend(SpendFilter(min_cost_usd=0.009, deployment="dep-b"), 500)) == newest(
        lambda r: r.cost_usd >= 0.009 and r.deployment == "dep-b"
    )
    monkeypatch.undo()
    since, until = records[100].at, records[110].at
    assert ids(await store.find_spend(SpendFilter(since=since, until=until), 500)) == newest(
        lambda r: since <= r.at < until
    )
    assert ids(await store.find_spend(SpendFilter(guardrail="any"), 500)) == ["req_00402", "req_00401"]
    assert ids(await store.find_spend(SpendFilter(guardrail="block"), 500)) == ["req_00401"]
    assert len(await store.find_spend(SpendFilter(guardrail="none"), 500)) == 401
    assert ids(await store.find_spend(SpendFilter(id_prefix="req_0012"), 500)) == newest(
        lambda r: r.id.startswith("req_0012")
    )
    assert await store.find_spend(SpendFilter(id_prefix="nope"), 500) == []

    # keyset pages: every row exactly once, in order, ties on `at` split by id
    seen: list[str] = []
    where = SpendFilter()
    while True:
        page = await store.find_spend(where, limit=37)
        if not page:
            break
        seen += ids(page)
        where = SpendFilter(before_at=page[-1].at, before_id=page[-1].id)
    assert seen == newest(lambda r: True)
    assert len(await store.find_spend(SpendFilter(), limit=10_000)) == 403  # clamped to 500
    for bad in (
        SpendFilter(status="weird"),
        SpendFilter(guardrail="maybe"),
        SpendFilter(min_cost_usd=math.inf),
        SpendFilter(id_prefix="r" * 257),
    ):
        with pytest.raises(ValueError):
            await store.find_spend(bad)


async def test_get_spend_round_trips_the_new_columns(store: Store) -> None:
    record = _spend(1, route='{"ranked":["dep-a"]}', attempt_detail='[{"deployment":"dep-a","ms":12}]')
    await store.write_spend([record])
    assert await store.get_spend(record.id) == record
    assert await store.get_spend("req_missing") is None


async def test_update_key(store: Store) -> None:
    _, record = new_key("team-a", models=["smart"], rpm=10, metadata={"owner": "ana"}, now=1000.0)
    await store.create_key(record)
    updated = await store.update_key(
        record.id, {"name": "team-b", "models": ["fast", "smart"], "rpm": 20, "budget_usd": 5.0, "period_s": 86400.0}
    )
    assert updated is not None and updated == await store.get_key(record.id)
    assert (updated.name, updated.models, updated.rpm, updated.budget_usd) == ("team-b", ["fast", "smart"], 20, 5.0)
    assert updated.key_hash == record.key_hash and updated.metadata == {"owner": "ana"}
    cleared = await store.update_key(record.id, {"models": None, "metadata": {}, "rpm": None})
    assert cleared is not None and (cleared.models, cleared.metadata, cleared.rpm) == (None, {}, None)
    assert await store.update_key(record.id, {}) == cleared
    with pytest.raises(ValueError):
        await store.update_key(record.id, {"key_hash": "x"})
    assert await store.update_key("key_missing", {"rpm": 5}) is None
    await store.revoke_key(record.id, 2000.0)
    assert await store.update_key(record.id, {"rpm": 5}) is None
    assert (await store.get_key(record.id)).rpm is None  # type: ignore[union-attr]


async def test_sessions(store: Store) -> None:
    live = UiSession(id_hash="a" * 64, subject="master", csrf="c1", created_at=100.0, expires_at=200.0)
    old = UiSession(id_hash="b" * 64, subject="key_x", csrf="c2", created_at=50.0, expires_at=150.0)
    await store.create_session(live)
    await store.create_session(old)
    assert await store.get_session(live.id_hash, 160.0) == live
    assert await store.get_session(old.id_hash, 160.0) is None  # expired
    assert await store.get_session("c" * 64, 160.0) is None
    assert await store.purge_sessions(160.0) == 1
    assert await store.get_session(old.id_hash, 100.0) is None  # purged
    await store.delete_session(live.id_hash)
    assert await store.get_session(live.id_hash, 160.0) is None


async def test_sqlite_request_log_queries_use_their_indexes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = sqlite_store.SQLiteStore(str(tmp_path / "plan.db"))
    await store.open()
    try:
        await store.write_spend([_spend(i) for i in range(3000)])
        await store._run(lambda conn: conn.execute("ANALYZE"))
        monkeypatch.setattr(store_module, "SELECTIVE", 100)  # "few rows" out of 3,000

        async def plan(where: SpendFilter) -> str:
            def chosen(conn: Any) -> str | None:
                return sqlite_store._threshold_index(conn, where)

            index = await store._run(chosen)
            sql, args = find_spend_sql(where, 50, sqlite_store._ph, from_hint=f"INDEXED BY {index}" if index else "")
            rows = await store._run(lambda conn: conn.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall())
            return " | ".join(str(r[-1]) for r in rows)

        assert "modelyard_spend_model_at" in await plan(SpendFilter(model="smart", status="error"))
        assert "modelyard_spend_deployment_at" in await plan(SpendFilter(deployment="dep-a"))
        assert "modelyard_spend_errors_at" in await plan(SpendFilter(status="error"))  # the partial index
        assert "modelyard_spend_key_at" in await plan(SpendFilter(key_id="key_1"))
        assert "modelyard_spend_id" in await plan(SpendFilter(id_prefix="req_001"))
        newest = await plan(SpendFilter(min_cost_usd=0.005, before_at=T0 + 100, before_id="req_00010"))
        assert "modelyard_spend_at" in newest and "TEMP B-TREE FOR ORDER BY" not in newest
        # a threshold few rows meet is read through its own index; a loose one newest first through `at`
        assert "modelyard_spend_cost_at" in await plan(SpendFilter(min_cost_usd=0.0105))
        assert "modelyard_spend_latency_at" in await plan(SpendFilter(min_latency_ms=3990.0, min_cost_usd=0.0))
        loose = await plan(SpendFilter(min_cost_usd=0.01))  # 1 row in 11
        assert "modelyard_spend_at" in loose and "cost_at" not in loose
        page = await store.find_spend(SpendFilter(min_cost_usd=0.0095, since=T0 + 700), limit=500)
        assert [r.id for r in page] == [f"req_{i:05d}" for i in range(2999, 99, -1) if i % 11 == 10]
    finally:
        await store.close()
