"""The PostgreSQL store (asyncpg pool): the same interface and tests as SQLite, for several replicas.

`?schema=name` in the DSN puts the tables in their own schema (created if needed), which is how the
tests run in parallel without colliding and how two gateways can share one database. Spend batches go in
with COPY, the fastest way into PostgreSQL. Migrations run under an advisory lock.
"""

from __future__ import annotations

import re
import time
import typing
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from modelyard.accounting.spend import SpendDataError, SpendRecord, escape_text
from modelyard.state.conversations import (
    COUNT_SQL,
    DELETE_SQL,
    PURGE_SQL,
    StoredResponse,
    chain_sql,
    insert_sql,
    response_from_row,
    response_row,
    select_sql,
)
from modelyard.state.feedback import FeedbackRecord, FeedbackSample
from modelyard.state.keys import KeyRecord
from modelyard.state.migrations import KEY_COLUMNS, MIGRATIONS, ROLLUP_GRAINS, SPEND_COLUMNS, VERSION_TABLE
from modelyard.state.rollup import PURGE_MINUTES_SQL, PurgeClock, deltas, upsert_sql, values_source
from modelyard.state.store import (
    RollupRow,
    SpendFilter,
    SpendRow,
    UiSession,
    dead_row,
    feedback_insert_sql,
    feedback_row,
    feedback_samples_args,
    feedback_samples_sql,
    find_spend_sql,
    get_spend_sql,
    key_from_row,
    key_row,
    migration_statement,
    report_rows,
    report_sql,
    rollup_rows,
    sample_from_row,
    selective_index,
    session_from_row,
    session_row,
    session_sql,
    spend_from_row,
    spend_row,
    threshold_probes,
    traffic_args,
    traffic_sql,
    update_key_sql,
)

_KEY_SELECT = f"SELECT {', '.join(KEY_COLUMNS)} FROM modelyard_keys"
_KEY_INSERT = (
    f"INSERT INTO modelyard_keys ({', '.join(KEY_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(KEY_COLUMNS)))})"
)
_DAY = "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def _ph(n: int) -> str:
    return f"${n}"


_RESPONSE_CHAIN = chain_sql(_ph)
_RESPONSE_SELECT = select_sql(_ph)
_RESPONSE_INSERT = insert_sql(_ph)
_RESPONSE_DELETE = DELETE_SQL.format("$1", "$2", "$3")
_RESPONSE_COUNT = COUNT_SQL.format("$1", "$2")
_RESPONSE_PURGE = PURGE_SQL.format("$1")
_SESSION = session_sql(_ph)
_GET_SPEND = get_spend_sql(_ph)
_FEEDBACK_INSERT = feedback_insert_sql(_ph)
_FEEDBACK_SAMPLES = {
    (with_model, lean): feedback_samples_sql(_ph, with_model, lean)
    for with_model in (False, True)
    for lean in (False, True)
}
_ROLLUP_UPSERT = {grain: upsert_sql(grain, values_source(_ph)) for grain in ROLLUP_GRAINS}


def _bucket(width: int) -> str:
    """`at` floored to `width` seconds (CAST(double AS BIGINT) would round)."""
    return f"(FLOOR(at / {width}) * {width})"


def _pg_type(hint: Any) -> str:
    """The PostgreSQL array element type of a SpendRecord field (str → text, int → int8, float → float8)."""
    kinds = set(typing.get_args(hint)) or {hint}
    for python, sql in ((bool, "boolean"), (int, "int8"), (float, "float8")):
        if python in kinds:
            return sql
    return "text"


_SPEND_TYPES = typing.get_type_hints(SpendRecord)
_SPEND_INSERT = (
    f"INSERT INTO modelyard_spend ({', '.join(SPEND_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{_pg_type(_SPEND_TYPES[c])}[]" for i, c in enumerate(SPEND_COLUMNS))
    + ") ON CONFLICT (id) DO NOTHING RETURNING id"
)


def _valid_text(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row with NUL and lone surrogates escaped in its text (PostgreSQL's text cannot hold them)."""
    return tuple(escape_text(v) if isinstance(v, str) else v for v in row)


_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_MIGRATION_LOCK = 0x6D6F64656C79  # "modely": one lock id for every modelyard schema


def split_schema(dsn: str) -> tuple[str, str | None]:
    """The DSN without its `schema=` query parameter, and that schema (None when absent)."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresStore:
    """`Store` on PostgreSQL through an asyncpg pool."""

    def __init__(self, dsn: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 4) -> None:
        self.dsn, dsn_schema = split_schema(dsn)
        self.schema = schema or dsn_schema
        if self.schema is not None and not _SCHEMA_NAME.match(self.schema):
            raise ValueError(f"invalid schema name {self.schema!r}")
        self.min_size = min_size
        self.max_size = max_size
        self._pool: Any = None
        self._purge = PurgeClock()

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            return
        import asyncpg

        settings = {"search_path": self.schema} if self.schema else None
        if self.schema:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            finally:
                await conn.close()
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=self.min_size, max_size=self.max_size, server_settings=settings
        )
        await self._migrate()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn:
            for migration in MIGRATIONS:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    await conn.execute(VERSION_TABLE)
                    version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM modelyard_schema")
                    if version >= migration.version:
                        continue
                    for statement in migration.statements:
                        await conn.execute(migration_statement(statement, _bucket))
                    await conn.execute(
                        "INSERT INTO modelyard_schema (version, name, applied_at) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        time.time(),
                    )

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(version), 0) FROM modelyard_schema"))

    async def drop(self) -> None:
        """Remove this store's schema and everything in it (tests)."""
        if self.schema:
            await self.pool.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    # ------------------------------------------------------------------ keys

    async def create_key(self, record: KeyRecord) -> None:
        await self.pool.execute(_KEY_INSERT, *key_row(record))

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        row = await self.pool.fetchrow(f"{_KEY_SELECT} WHERE key_hash = $1", key_hash)
        return None if row is None else key_from_row(tuple(row))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self.pool.fetchrow(f"{_KEY_SELECT} WHERE id = $1", key_id)
        return None if row is None else key_from_row(tuple(row))

    async def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self.pool.fetch(f"{_KEY_SELECT}{where} ORDER BY created_at")
        return [key_from_row(tuple(row)) for row in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        status = await self.pool.execute(
            "UPDATE modelyard_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", at, key_id
        )
        return str(status).endswith(" 1")

    async def count_keys(self) -> int:
        return int(await self.pool.fetchval("SELECT COUNT(*) FROM modelyard_keys WHERE revoked_at IS NULL"))

    # ------------------------------------------------------------------ spend

    async def write_spend(self, records: Sequence[SpendRecord]) -> None:
        """One INSERT … SELECT FROM unnest(one array per column) ON CONFLICT (id) DO NOTHING: one round trip
        per batch like COPY (which cannot skip the ids a spool replay brings back). Text is made valid first:
        a NUL or a lone surrogate in one row used to fail every later batch. RETURNING id names the rows
        actually inserted; only those are added to the rollups, in the same transaction."""
        import asyncpg

        rows = [_valid_text(spend_row(r)) for r in records]
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                inserted = {r[0] for r in await conn.fetch(_SPEND_INSERT, *columns)}
                fresh, seen = [], set()
                for row in rows:
                    if row[0] in inserted and row[0] not in seen:
                        seen.add(row[0])
                        fresh.append(row)
                for grain, batch in deltas(fresh).items():
                    if batch:
                        await conn.executemany(_ROLLUP_UPSERT[grain], batch)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError, OverflowError) as exc:
            raise SpendDataError(str(exc)) from exc
        before = self._purge.due(r.at for r in records)
        if before is not None:
            await self.pool.execute(PURGE_MINUTES_SQL.format(ph="$1"), before)

    async def write_dead_spend(self, records: Sequence[tuple[SpendRecord, str]]) -> None:
        rows = [dead_row(record, reason) for record, reason in records]
        await self.pool.executemany(
            "INSERT INTO modelyard_spend_dead (id, at, failed_at, error, record) VALUES ($1, $2, $3, $4, $5)", rows
        )

    async def spend_report(self, by: str, since: float) -> list[SpendRow]:
        rows = await self.pool.fetch(report_sql(by, _DAY, "$1"), since)
        return report_rows([tuple(r) for r in rows])

    async def spent_since(self, key_id: str, since: float) -> float:
        value = await self.pool.fetchval(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM modelyard_spend WHERE key_id = $1 AND at >= $2", key_id, since
        )
        return float(value)

    async def spend_records(self, since: float = 0.0, limit: int = 1000) -> list[SpendRecord]:
        rows = await self.pool.fetch(
            f"SELECT {', '.join(SPEND_COLUMNS)} FROM modelyard_spend WHERE at >= $1 ORDER BY at LIMIT $2", since, limit
        )
        return [spend_from_row(tuple(row)) for row in rows]

    async def get_spend(self, request_id: str) -> SpendRecord | None:
        row = await self.pool.fetchrow(_GET_SPEND, request_id)
        return None if row is None else spend_from_row(tuple(row))

    # ------------------------------------------------------------------ feedback (state/feedback.py)

    async def write_feedback(self, records: Sequence[FeedbackRecord]) -> None:
        rows = [feedback_row(r) for r in records]  # ValueError before anything is written
        if rows:
            await self.pool.executemany(_FEEDBACK_INSERT, rows)

    async def feedback_samples(
        self, since: float = 0.0, limit: int = 10_000, *, model: str | None = None, lean: bool = False
    ) -> list[FeedbackSample]:
        args = feedback_samples_args(since, limit, model)
        rows = await self.pool.fetch(_FEEDBACK_SAMPLES[(model is not None, lean)], *args)
        return [sample_from_row(tuple(row)) for row in rows]

    async def find_spend(self, where: SpendFilter, limit: int = 50) -> list[SpendRecord]:
        """A selective threshold filter (few rows over it, counted first) is read through its index: the
        ORDER BY `at + 0` keeps the planner off the newest-first scan it would otherwise pick."""
        sql, args = find_spend_sql(where, limit, _ph)
        probes = threshold_probes(where, _ph)
        if probes:
            async with self.pool.acquire() as conn:
                counts = [(int(await conn.fetchval(probe, value)), index) for index, probe, value in probes]
                if selective_index(counts) is not None:
                    sql, args = find_spend_sql(where, limit, _ph, order_at="at + 0")
                rows = await conn.fetch(sql, *args)
        else:
            rows = await self.pool.fetch(sql, *args)
        return [spend_from_row(tuple(row)) for row in rows]

    async def traffic(
        self, grain: str, dim: str, since: float, until: float, *, value: str | None = None, by: str = "time"
    ) -> list[RollupRow]:
        sql = traffic_sql(grain, dim, by, value is not None, _ph)
        rows = await self.pool.fetch(sql, *traffic_args(dim, since, until, value))
        return rollup_rows([tuple(r) for r in rows])

    # ------------------------------------------------------------------ keys (the dashboard's edits)

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        sql, args = update_key_sql(key_id, changes, _ph)
        async with self.pool.acquire() as conn, conn.transaction():
            if not str(await conn.execute(sql, *args)).endswith(" 1"):
                return None
            row = await conn.fetchrow(f"{_KEY_SELECT} WHERE id = $1", key_id)
        return None if row is None else key_from_row(tuple(row))

    # ------------------------------------------------------------------ dashboard sessions

    async def create_session(self, session: UiSession) -> None:
        await self.pool.execute(_SESSION["create"], *session_row(session))

    async def get_session(self, id_hash: str, now: float) -> UiSession | None:
        row = await self.pool.fetchrow(_SESSION["get"], id_hash, now)
        return None if row is None else session_from_row(tuple(row))

    async def delete_session(self, id_hash: str) -> None:
        await self.pool.execute(_SESSION["delete"], id_hash)

    async def purge_sessions(self, now: float) -> int:
        status = str(await self.pool.execute(_SESSION["purge"], now))
        return int(status.rsplit(" ", 1)[-1]) if status.startswith("DELETE") else 0

    # ------------------------------------------------------------------ stored responses (state/conversations.py)

    async def put_response(self, record: StoredResponse) -> None:
        await self.pool.execute(_RESPONSE_INSERT, *_valid_text(response_row(record)))

    async def get_response(self, key_id: str, response_id: str, now: float) -> StoredResponse | None:
        row = await self.pool.fetchrow(_RESPONSE_SELECT, response_id, key_id, now)
        return None if row is None else response_from_row(tuple(row))

    async def response_chain(self, key_id: str, response_id: str, now: float, limit: int) -> list[StoredResponse]:
        rows = await self.pool.fetch(_RESPONSE_CHAIN, response_id, key_id, now, limit)
        return [response_from_row(tuple(row)) for row in rows]

    async def delete_response(self, key_id: str, response_id: str, now: float) -> bool:
        status = await self.pool.execute(_RESPONSE_DELETE, response_id, key_id, now)
        return str(status).endswith(" 1")

    async def count_responses(self, key_id: str, now: float) -> int:
        return int(await self.pool.fetchval(_RESPONSE_COUNT, key_id, now))

    async def purge_responses(self, now: float) -> int:
        status = str(await self.pool.execute(_RESPONSE_PURGE, now))
        return int(status.rsplit(" ", 1)[-1]) if status.startswith("DELETE") else 0
