"""The store: virtual keys and the spend log, on SQLite (a file, the default) or PostgreSQL (a DSN).

Both implementations speak this one interface and pass one test suite. Nothing here is on a request's
path: keys are read into the access layer's cache (and on a cache miss), spend is written in batches by
the spend writer's background task.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from modelyard.accounting.spend import SpendRecord, escape_text
from modelyard.state.keys import KeyRecord
from modelyard.state.migrations import GROUPINGS, KEY_COLUMNS, SPEND_COLUMNS


class SpendRow(msgspec.Struct, kw_only=True):
    """One line of a spend report."""

    group: str
    name: str | None = None  # the key's name when grouping by key
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


def spend_report_body(by: str, rows: list[SpendRow]) -> dict[str, Any]:
    """A spend report as `/admin/spend` answers it and `modelyard spend` prints it, whichever reads the store
    (costs rounded to 1e-10 USD: float sums carry noise below that)."""
    data = [
        {
            "group": r.group,
            "name": r.name,
            "requests": r.requests,
            "errors": r.errors,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cost_usd": round(r.cost_usd, 10),
        }
        for r in rows
    ]
    return {
        "by": by,
        "data": data,
        "total_cost_usd": round(sum(r.cost_usd for r in rows), 10),
        "total_requests": sum(r.requests for r in rows),
    }


class RollupRow(msgspec.Struct, kw_only=True):
    """Summed rollup figures of one group: a bucket start (grouped by time) or a dimension value (by value)."""

    bucket: float = 0.0  # unix time of the bucket's start; 0 when grouped by value
    value: str = ""  # the dimension's value ('' for dim `all`, and for requests without a key)
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0  # the sum of the requests' latencies
    histogram: tuple[int, ...] = ()  # accounting/traffic.py's latency buckets


class SpendFilter(msgspec.Struct, kw_only=True):
    """The request log's filters (every one optional; all given must hold). `before` pages: rows older than
    (at, id), newest first."""

    since: float | None = None
    until: float | None = None
    key_id: str | None = None
    model: str | None = None
    deployment: str | None = None
    #: `ok`, or `error` (any status but ok: error, stream_error, cancelled)
    status: str | None = None
    min_cost_usd: float | None = None
    min_latency_ms: float | None = None
    #: `any` (a guardrail ran and found something), `block` (one blocked), `none` (nothing found)
    guardrail: str | None = None
    #: a request id, or its beginning
    id_prefix: str | None = None
    before_at: float | None = None
    before_id: str | None = None


class UiSession(msgspec.Struct, kw_only=True):
    """A dashboard login: the SHA-256 of the cookie's secret (the secret itself is never stored), who logged in
    (`master`, or a key id), the session's CSRF token, and its life."""

    id_hash: str
    subject: str
    csrf: str
    created_at: float
    expires_at: float


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""
        ...

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    async def create_key(self, record: KeyRecord) -> None: ...

    async def find_key(self, key_hash: str) -> KeyRecord | None: ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]: ...

    async def revoke_key(self, key_id: str, at: float) -> bool:
        """True when the key existed and was active."""
        ...

    async def count_keys(self) -> int:
        """Keys not revoked (expired ones included: their holders must still get a 401, not open mode)."""
        ...

    async def write_spend(self, records: Sequence[SpendRecord]) -> None:
        """Insert the records, skipping ids already stored (a spool replay); bad data raises SpendDataError."""
        ...

    async def write_dead_spend(self, records: Sequence[tuple[SpendRecord, str]]) -> None:
        """Set aside records the spend table refused, with the reason (the dead-letter table)."""
        ...

    async def spend_report(self, by: str, since: float) -> list[SpendRow]: ...

    async def spent_since(self, key_id: str, since: float) -> float: ...

    async def spend_records(self, since: float = 0.0, limit: int = 1000) -> list[SpendRecord]: ...

    # ------------------------------------------------------------------ the dashboard (docs/dashboard.md)

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Set the given KeyRecord fields (name, models, rpm, tpm, budget_usd, period_s, expires_at, metadata;
        already validated) of a key not revoked; the updated record, or None when there is no such key."""
        ...

    async def traffic(
        self, grain: str, dim: str, since: float, until: float, *, value: str | None = None, by: str = "time"
    ) -> list[RollupRow]:
        """Rollup sums from the `grain` table (minute | hour) for `dim`, buckets in [since, until): grouped by
        bucket (`by="time"`, oldest first; only `value` when given) or by value (`by="value"`, dearest first)."""
        ...

    async def find_spend(self, where: SpendFilter, limit: int = 50) -> list[SpendRecord]:
        """The request log: rows matching `where`, newest first, at most `limit`."""
        ...

    async def get_spend(self, request_id: str) -> SpendRecord | None: ...

    async def create_session(self, session: UiSession) -> None: ...

    async def get_session(self, id_hash: str, now: float) -> UiSession | None:
        """The session, when it exists and has not expired."""
        ...

    async def delete_session(self, id_hash: str) -> None: ...

    async def purge_sessions(self, now: float) -> int:
        """Delete expired sessions; how many went."""
        ...


def open_store(dsn: str | None) -> Store:
    """The store a DSN names: postgresql://… (asyncpg), else a SQLite path (None or :memory: = in memory)."""
    if dsn and dsn.startswith(("postgres://", "postgresql://")):
        from modelyard.state.postgres_store import PostgresStore

        return PostgresStore(dsn)
    from modelyard.state.sqlite_store import SQLiteStore

    return SQLiteStore(sqlite_path(dsn))


def sqlite_path(dsn: str | None) -> str:
    """`sqlite:///rel.db`, `sqlite:////abs.db` (SQLAlchemy style) or a plain path; None → :memory:."""
    if not dsn:
        return ":memory:"
    if dsn.startswith("sqlite:///"):
        return dsn[len("sqlite:///") :] or ":memory:"
    if dsn.startswith("sqlite://"):
        return dsn[len("sqlite://") :] or ":memory:"
    return dsn


# --------------------------------------------------------------------------- rows ↔ records (shared)

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def key_row(record: KeyRecord) -> tuple[Any, ...]:
    models = None if record.models is None else _json_encode(record.models).decode()
    return (
        record.id,
        record.name,
        record.key_hash,
        record.key_prefix,
        record.created_at,
        record.expires_at,
        record.revoked_at,
        models,
        record.rpm,
        record.tpm,
        record.budget_usd,
        record.period_s,
        _json_encode(record.metadata).decode(),
    )


def key_from_row(row: Sequence[Any]) -> KeyRecord:
    values = dict(zip(KEY_COLUMNS, row, strict=True))
    values["models"] = None if values["models"] is None else _json_decode(values["models"])
    values["metadata"] = _json_decode(values["metadata"] or "{}")
    return msgspec.convert(values, KeyRecord)


if SpendRecord.__struct_fields__ != SPEND_COLUMNS:  # pragma: no cover - a developer's mistake
    raise RuntimeError("SPEND_COLUMNS must list SpendRecord's fields in order")


def spend_row(record: SpendRecord) -> tuple[Any, ...]:
    return msgspec.structs.astuple(record)


def dead_row(record: SpendRecord, reason: str) -> tuple[str, float, float, str, str]:
    """A dead-letter row: ASCII JSON (NUL and lone surrogates escaped), so any store takes it."""
    as_json = json.dumps(msgspec.to_builtins(record), ensure_ascii=True, default=str)
    return (
        escape_text(record.id),
        record.at if math.isfinite(record.at) else 0.0,
        time.time(),
        escape_text(reason),
        as_json,
    )


def spend_from_row(row: Sequence[Any]) -> SpendRecord:
    return msgspec.convert(dict(zip(SPEND_COLUMNS, row, strict=True)), SpendRecord)


def report_sql(by: str, day_expr: str, placeholder: str) -> str:
    """The spend report query for one grouping; `day_expr` is the dialect's unix-time → YYYY-MM-DD."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r} (one of {', '.join(GROUPINGS)})")
    group = {
        "model": "COALESCE(model, '-')",
        "key": "COALESCE(key_id, '-')",
        "day": day_expr,
        "deployment": "COALESCE(deployment, '-')",
    }[by]
    name = "MAX(key_name)" if by == "key" else "NULL"
    order = "grp" if by == "day" else "cost DESC, grp"
    return (
        f"SELECT {group} AS grp, {name} AS name, COUNT(*) AS requests, "
        "SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END) AS errors, "
        "SUM(prompt_tokens) AS prompt, SUM(completion_tokens) AS completion, SUM(cost_usd) AS cost "
        f"FROM modelyard_spend WHERE at >= {placeholder} GROUP BY grp ORDER BY {order}"
    )


def report_rows(rows: Sequence[Sequence[Any]]) -> list[SpendRow]:
    return [
        SpendRow(
            group=str(r[0]),
            name=r[1],
            requests=int(r[2]),
            errors=int(r[3] or 0),
            prompt_tokens=int(r[4] or 0),
            completion_tokens=int(r[5] or 0),
            cost_usd=float(r[6] or 0.0),
        )
        for r in rows
    ]
