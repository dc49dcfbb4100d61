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
