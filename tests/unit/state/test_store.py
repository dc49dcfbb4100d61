"""The store contract, run on SQLite and on PostgreSQL (the real server): keys, spend log, migrations."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from modelyard.state.keys import KEY_PREFIX, hash_key, new_key
from modelyard.state.migrations import LATEST
from modelyard.state.sqlite_store import SQLiteStore
from modelyard.state.store import Store, open_store, sqlite_path
from tests.unit.state.conftest import spend_record

DAY = 86400.0


async def test_migrations_are_applied_once(store: Store) -> None:
    assert await store.schema_version() == LATEST
    await store.open()  # idempotent
    assert await store.schema_version() == LATEST


async def test_sqlite_reopen_keeps_data_and_version(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite")
    first = SQLiteStore(path)
    await first.open()
    _, record = new_key("team-a")
    await first.create_key(record)
    await first.close()
    second = SQLiteStore(path)
    await second.open()
    assert await second.schema_version() == LATEST
    assert (await second.get_key(record.id)) == record
    await second.close()


async def test_key_round_trip(store: Store) -> None:
    raw, record = new_key(
        "team-a",
        models=["smart", "fast"],
        rpm=600,
        tpm=200_000,
        budget_usd=50.0,
        period_s=30 * DAY,
        expires_at=time.time() + DAY,
        metadata={"owner": "ana"},
    )
    assert raw.startswith(KEY_PREFIX) and record.key_hash == hash_key(raw)
    await store.create_key(record)
    assert await store.find_key(hash_key(raw)) == record
    assert await store.get_key(record.id) == record
    assert await store.find_key(hash_key(raw + "x")) is None
    assert record.models == ["fast", "smart"]


async def test_revoke_and_list(store: Store) -> None:
    _, a = new_key("a", now=1000.0)
    _, b = new_key("b", now=2000.0)
    await store.create_key(a)
    await store.create_key(b)
    assert [k.id for k in await store.list_keys()] == [a.id, b.id]
    assert await store.count_keys() == 2
    assert await store.revoke_key(a.id, 3000.0) is True
    assert await store.revoke_key(a.id, 4000.0) is False  # already revoked
    assert await store.revoke_key("key_missing", 4000.0) is False
    assert [k.id for k in await store.list_keys()] == [b.id]
    everything = await store.list_keys(include_revoked=True)
    assert [(k.id, k.revoked_at) for k in everything] == [(a.id, 3000.0), (b.id, None)]
    assert (await store.get_key(a.id)).status(5000.0) == "revoked"  # type: ignore[union-attr]
    assert await store.count_keys() == 1


async def test_duplicate_hash_is_rejected(store: Store) -> None:
    _, record = new_key("a")
    await store.create_key(record)
    clone = type(record)(**{**{f: getattr(record, f) for f in record.__struct_fields__}, "id": "key_other"})
    with pytest.raises(Exception):  # noqa: B017 - sqlite3.IntegrityError or asyncpg.UniqueViolationError
        await store.create_key(clone)


_spend = spend_record


async def test_spend_round_trip(store: Store) -> None:
    record = _spend(
        1,
        key_id="key_1",
        key_name="team-a",
        cached_tokens=40,
        cache_write_tokens=10,
        reasoning_tokens=5,
        ttft_ms=12.5,
        attempt_log="2; a rate_limited 3ms, b ok 9ms",
        error_kind=None,
        endpoint="/v1/chat/completions",
        latency_ms=33.3,
    )
    await store.write_spend([record])
    assert await store.spend_records() == [record]


async def test_spend_text_survives_the_batch_encoding(store: Store) -> None:
    record = _spend(
        2,
        content='héllo "quoted" \n\t✓ \\ end',
        status="stream_error",
        error_kind="connection",
        ttft_ms=None,
        cost_usd=1e-12,
    )
    await store.write_spend([record])
    assert (await store.spend_records())[-1] == record


async def test_sqlite_binds_none_through_a_registered_adapter_and_stores_null(tmp_path: Path) -> None:
    # Without an adapter, each None a statement binds costs two raised and cleared AttributeErrors (sqlite_store).
    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    store = SQLiteStore(str(tmp_path / "nulls.db"))
    await store.open()
    try:
        record = _spend(3, ttft_ms=None, error_kind=None, content=None, task=None, predicted=None)
        await store.write_spend([record])
        assert (await store.spend_records())[-1] == record
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "nulls.db") as conn:
        stored = conn.execute(
            "SELECT ttft_ms IS NULL, error_kind IS NULL, content IS NULL, task IS NULL, predicted IS NULL"
            " FROM modelyard_spend"
        ).fetchone()
    assert stored == (1, 1, 1, 1, 1)


async def test_spend_report_by_model_key_and_day(store: Store) -> None:
    day2 = 1_700_000_000.0 + DAY
    records = [
        _spend(1, key_id="key_a", key_name="team-a", cost_usd=0.25),
        _spend(2, key_id="key_a", key_name="team-a", cost_usd=0.5, model="fast"),
        _spend(
            3, key_id="key_b", key_name="team-b", cost_usd=1.0, status="error", error_kind="server", completion_tokens=0
        ),
        _spend(4, key_id="key_b", key_name="team-b", cost_usd=2.0, at=day2),
    ]
    await store.write_spend(records)
    by_model = {r.group: r for r in await store.spend_report("model", 0.0)}
    assert set(by_model) == {"smart", "fast"}
    assert by_model["smart"].requests == 3 and by_model["smart"].errors == 1
    assert by_model["smart"].cost_usd == pytest.approx(3.25)
    assert by_model["smart"].prompt_tokens == 300 and by_model["smart"].completion_tokens == 40
    by_key = await store.spend_report("key", 0.0)
    assert [(r.group, r.name, r.requests) for r in by_key] == [("key_b", "team-b", 2), ("key_a", "team-a", 2)]
    assert [r.cost_usd for r in by_key] == pytest.approx([3.0, 0.75])
    by_day = await store.spend_report("day", 0.0)
    assert [(r.group, r.requests) for r in by_day] == [("2023-11-14", 3), ("2023-11-15", 1)]
    since = await store.spend_report("model", day2)
    assert [(r.group, r.requests) for r in since] == [("smart", 1)]
    with pytest.raises(ValueError):
        await store.spend_report("colour", 0.0)


async def test_spent_since_sums_one_key(store: Store) -> None:
    await store.write_spend(
        [
            _spend(1, key_id="k", cost_usd=0.125),
            _spend(2, key_id="k", cost_usd=0.25),
            _spend(3, key_id="other", cost_usd=9.0),
            _spend(50, key_id="k", cost_usd=1.0),
        ]
    )
    assert await store.spent_since("k", 0.0) == pytest.approx(1.375)
    assert await store.spent_since("k", 1_700_000_000.0 + 2) == pytest.approx(1.25)
    assert await store.spent_since("nobody", 0.0) == 0.0


async def test_big_batch_is_written_whole(store: Store) -> None:
    await store.write_spend([_spend(i) for i in range(2000)])
    rows = await store.spend_report("model", 0.0)
    assert rows[0].requests == 2000


async def test_raw_key_is_not_in_the_database_file(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "keys.db"))
    await store.open()
    raw, record = new_key("secret-team")
    await store.create_key(record)
    await store.close()
    blobs = b"".join(p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file())  # noqa: ASYNC240
    assert raw.encode() not in blobs
    assert raw[len(KEY_PREFIX) + 4 :].encode() not in blobs  # not even the part after the visible prefix
    assert record.key_hash.encode() in blobs


def test_dsn_parsing() -> None:
    assert sqlite_path(None) == ":memory:"
    assert sqlite_path("sqlite:///rel/spend.db") == "rel/spend.db"
    assert sqlite_path("sqlite:////abs/spend.db") == "/abs/spend.db"
    assert sqlite_path("/var/lib/modelyard.db") == "/var/lib/modelyard.db"
    assert type(open_store("postgresql://u@h/db?schema=s1")).__name__ == "PostgresStore"
    assert type(open_store("spend.db")).__name__ == "SQLiteStore"


def test_postgres_schema_from_dsn() -> None:
    from modelyard.state.postgres_store import split_schema

    assert split_schema("postgresql://u@h:5432/db?schema=abc&sslmode=disable") == (
        "postgresql://u@h:5432/db?sslmode=disable",
        "abc",
    )
    with pytest.raises(ValueError):
        split_schema("postgresql://u@h/db?schema=bad;drop")


def test_spend_report_body_is_the_one_report_shape() -> None:
    """`/admin/spend` and `modelyard spend --config` both answer with this body."""
    from modelyard.state.store import SpendRow, spend_report_body

    rows = [
        SpendRow(group="a", requests=2, errors=1, prompt_tokens=10, completion_tokens=5, cost_usd=0.1 + 0.2),
        SpendRow(group="b", name="team", requests=1, cost_usd=1e-12),
    ]
    body = spend_report_body("model", rows)
    assert body["by"] == "model" and body["total_requests"] == 3
    assert body["total_cost_usd"] == 0.3 and body["data"][0]["cost_usd"] == 0.3  # float noise rounded away
    assert body["data"][1] == {
        "group": "b",
        "name": "team",
        "requests": 1,
        "errors": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
    }


@pytest.mark.parametrize("installed", [True, False])
async def test_a_short_spend_batch_gives_up_the_cpu_between_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: bool
) -> None:
    """A spend batch is milliseconds of C: the store's thread must yield the core between its statements (the
    c=1 p99 tail of issue #20), and the write must still be whole. A batch over YIELD_UP_TO_ROWS (a writer
    that is behind, a saturated machine) does not yield, and is whole too. Where the platform has no
    sched_yield, nothing yields and the writes are the same."""
    from modelyard.state import sqlite_store

    yields: list[int] = []
    monkeypatch.setattr(sqlite_store, "_YIELD", (lambda: yields.append(1)) if installed else None)
    store = SQLiteStore(str(tmp_path / "db.sqlite"))
    await store.open()
    try:
        small = sqlite_store.YIELD_UP_TO_ROWS - 6  # several statements (INSERT_ROWS)
        await store.write_spend([_spend(i, at=1000.0 + i) for i in range(small)])
        yielded_small = len(yields)
        await store.write_spend([_spend(i, at=1000.0 + i) for i in range(small, small + 500)])
        yielded_big = len(yields) - yielded_small
        await store.write_spend([_spend(i, at=1000.0 + i) for i in range(small + 500, small + 510)])
        yielded_last = len(yields) - yielded_small - yielded_big
        assert len(await store.spend_records(limit=1000)) == small + 510
        hours = await store.traffic("hour", "all", 0.0, 5000.0)
        assert sum(r.requests for r in hours) == small + 510
        assert sum(r.prompt_tokens for r in hours) == (small + 510) * 100
    finally:
        await store.close()
    if installed:
        assert yielded_small == len(sqlite_store._statement_rows(small)) > 5
        assert yielded_big == 0
        assert yielded_last == len(sqlite_store._statement_rows(10))
    else:
        assert yields == []
