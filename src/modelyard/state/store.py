"""The store: virtual keys and the spend log, on SQLite (a file, the default) or PostgreSQL (a DSN).

Both implementations speak this one interface and pass one test suite. Nothing here is on a request's
path: keys are read into the access layer's cache (and on a cache miss), spend is written in batches by
the spend writer's background task.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import msgspec

from modelyard.accounting.spend import SpendRecord, escape_text
from modelyard.state.feedback import FeedbackRecord, FeedbackSample
from modelyard.state.keys import KeyRecord
from modelyard.state.migrations import GROUPINGS, KEY_COLUMNS, ROLLUP_DIMS, ROLLUP_GRAINS, SPEND_COLUMNS
from modelyard.state.rollup import SUMMED as ROLLUP_SUMMED


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
    #: `any` (guardrails ran on it), `block` (a guardrail blocked it), `none` (no guardrail ran)
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

    async def write_feedback(self, records: Sequence[FeedbackRecord]) -> None:
        """Store feedback rows, skipping ids already stored (a retried write never doubles one); ValueError
        for a record out of its domain (a score not finite or outside [0, 1]), before anything is written."""
        ...

    async def feedback_samples(
        self, since: float = 0.0, limit: int = 10_000, *, model: str | None = None, lean: bool = False
    ) -> list[FeedbackSample]:
        """Feedback with `at >= since` (only for requests of `model` when given), oldest first by (at, id),
        each joined with its request's spend row; feedback whose spend row is not stored yet is left out
        until the row lands (the writer may be seconds behind, another replica's too). `lean`: without the
        prompt's embedding and text (what recalibration reads every refresh does not need ~2 KB a row)."""
        ...

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


def open_store(
    dsn: str | None,
    *,
    sqlite_inserts: Literal["auto", "thread", "process"] = "thread",
    memory_rows: int | None = None,
) -> Store:
    """The store a DSN names: postgresql://… (asyncpg), else a SQLite path (None or :memory: = in memory);
    `sqlite_inserts`: where a SQLite store makes its spend inserts (sqlite_store.InsertsIn); `memory_rows`:
    the spend rows an in-memory store keeps (default config.model.MEMORY_SPEND_ROWS)."""
    if dsn and dsn.startswith(("postgres://", "postgresql://")):
        from modelyard.state.postgres_store import PostgresStore

        return PostgresStore(dsn)
    from modelyard.state.sqlite_store import SQLiteStore

    if memory_rows is None:
        return SQLiteStore(sqlite_path(dsn), inserts=sqlite_inserts)
    return SQLiteStore(sqlite_path(dsn), inserts=sqlite_inserts, memory_rows=memory_rows)


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


_INT_FIELDS = frozenset(field.name for field in msgspec.structs.fields(SpendRecord) if field.type is int)


def spend_from_row(row: Sequence[Any]) -> SpendRecord:
    """A stored spend row as a record. A row this version cannot take as is (SQLite keeps an integer beyond
    64 bits, written by an older version, as REAL) is read with such counts as 0, not refused: one bad row
    must not make the request log unreadable."""
    values = dict(zip(SPEND_COLUMNS, row, strict=True))
    try:
        return msgspec.convert(values, SpendRecord)
    except msgspec.ValidationError:
        for name in _INT_FIELDS:
            value = values.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
                values[name] = 0
        for name, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                values[name] = 0.0
        return msgspec.convert(values, SpendRecord)


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


# --------------------------------------------------------------------------- the dashboard's SQL (shared)

#: Placeholder n (1-based) in a dialect: `?n` in SQLite, `$n` in PostgreSQL.
Placeholder = Callable[[int], str]

#: The most rows one request-log page may ask for.
MAX_PAGE = 500
#: Fields of a key that `update_key` may set (the id, hash, prefix and dates of creation and revocation stay).
KEY_UPDATABLE = ("name", "models", "rpm", "tpm", "budget_usd", "period_s", "expires_at", "metadata")
#: Above every character a request id may hold: `id >= p AND id < p + this` is the prefix as an index range
#: (binary, C or C.UTF-8 ordering; the text's own prefix test below keeps it exact under any other).
_PREFIX_END = "\U0010ffff"
#: A guardrail that blocked: `label:stage:block fired …` in the findings text (guardrails/findings.py).
_MAX_PREFIX = 256
_BLOCK_PATTERN = "%:block fired%"
_STATUSES = ("ok", "error")
_GUARDRAIL_FILTERS = ("any", "block", "none")
_SPEND_SELECT = f"SELECT {', '.join(SPEND_COLUMNS)} FROM modelyard_spend"


def _finite(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    return float(value)


def traffic_sql(grain: str, dim: str, by: str, with_value: bool, ph: Placeholder) -> str:
    """The rollup query behind `Store.traffic`; its arguments: dim, since, until[, value]."""
    if grain not in ROLLUP_GRAINS:
        raise ValueError(f"unknown grain {grain!r} (one of {', '.join(ROLLUP_GRAINS)})")
    if dim not in ROLLUP_DIMS:
        raise ValueError(f"unknown dimension {dim!r} (one of {', '.join(ROLLUP_DIMS)})")
    if by not in ("time", "value"):
        raise ValueError(f"unknown grouping {by!r} (time or value)")
    sums = ", ".join(f"SUM({c})" for c in ROLLUP_SUMMED)
    where = f"dim = {ph(1)} AND bucket >= {ph(2)} AND bucket < {ph(3)}"
    if with_value:
        where += f" AND value = {ph(4)}"
    if by == "time":
        return (
            f"SELECT bucket, '' AS v, {sums} FROM modelyard_spend_{grain} WHERE {where} GROUP BY bucket ORDER BY bucket"
        )
    return (
        f"SELECT 0.0 AS b, value, {sums} FROM modelyard_spend_{grain} WHERE {where} "
        "GROUP BY value ORDER BY SUM(cost_usd) DESC, SUM(requests) DESC, value"
    )


def traffic_args(dim: str, since: float, until: float, value: str | None) -> tuple[Any, ...]:
    args: tuple[Any, ...] = (dim, _finite("since", since), _finite("until", until))
    return args if value is None else (*args, value)


def rollup_rows(rows: Sequence[Sequence[Any]]) -> list[RollupRow]:
    return [
        RollupRow(
            bucket=float(r[0] or 0.0),
            value=str(r[1] or ""),
            requests=int(r[2] or 0),
            errors=int(r[3] or 0),
            prompt_tokens=int(r[4] or 0),
            completion_tokens=int(r[5] or 0),
            cost_usd=float(r[6] or 0.0),
            latency_ms=float(r[7] or 0.0),
            histogram=tuple(int(h or 0) for h in r[8:]),
        )
        for r in rows
    ]


def _text_and_page_conditions(where: SpendFilter, arg: Callable[[Any], str]) -> list[str]:
    """The guardrail outcome, the id prefix (as an index range) and the keyset page's (at, id) bound."""
    conds: list[str] = []
    if where.guardrail is not None:
        if where.guardrail not in _GUARDRAIL_FILTERS:
            raise ValueError(f"guardrail must be one of {', '.join(_GUARDRAIL_FILTERS)}")
        if where.guardrail == "block":
            conds.append(f"guardrails LIKE {arg(_BLOCK_PATTERN)}")
        else:
            conds.append("guardrails IS NOT NULL" if where.guardrail == "any" else "guardrails IS NULL")
    if where.id_prefix:
        prefix = where.id_prefix
        if len(prefix) > _MAX_PREFIX:
            raise ValueError(f"id_prefix is longer than {_MAX_PREFIX} characters")
        low, high = arg(prefix), arg(prefix + _PREFIX_END)
        conds.append(f"id >= {low} AND id < {high} AND substr(id, 1, {arg(len(prefix))}) = {low}")
    before_at = _finite("before_at", where.before_at)
    if before_at is not None:
        at = arg(before_at)
        if where.before_id is None:
            conds.append(f"at < {at}")
        else:
            conds.append(f"at <= {at} AND (at < {at} OR id < {arg(where.before_id)})")
    return conds


def find_spend_sql(
    where: SpendFilter, limit: int, ph: Placeholder, *, from_hint: str = "", order_at: str = "at"
) -> tuple[str, list[Any]]:
    """The request log's query: every filter given, newest first, keyset-paged on (at, id); ValueError for a
    filter out of its domain. Each filter is one indexable condition where an index exists for it.
    `from_hint` (SQLite's INDEXED BY) or `order_at` (`at + 0` in PostgreSQL: an ORDER BY no index serves)
    steer the planner to a selective threshold's index (see `selective_index`)."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return ph(len(args))

    conds: list[str] = []
    since = _finite("since", where.since)
    until = _finite("until", where.until)
    if since is not None:
        conds.append(f"at >= {arg(since)}")
    if until is not None:
        conds.append(f"at < {arg(until)}")
    for column in ("key_id", "model", "deployment"):
        value = getattr(where, column)
        if value is not None:
            conds.append(f"{column} = {arg(value)}")
    if where.status is not None:
        if where.status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}")
        conds.append("status = 'ok'" if where.status == "ok" else "status <> 'ok'")
    min_cost = _finite("min_cost_usd", where.min_cost_usd)
    if min_cost is not None:
        conds.append(f"cost_usd >= {arg(min_cost)}")
    min_latency = _finite("min_latency_ms", where.min_latency_ms)
    if min_latency is not None:
        conds.append(f"latency_ms >= {arg(min_latency)}")
    conds += _text_and_page_conditions(where, arg)
    page = min(max(int(limit), 1), MAX_PAGE)
    sql = f"{_SPEND_SELECT} {from_hint}" if from_hint else _SPEND_SELECT
    if conds:
        sql += " WHERE " + " AND ".join(conds)
    sql += f" ORDER BY {order_at} DESC, id DESC LIMIT {arg(page)}"
    return sql, args


#: Threshold filters and the index that serves each when it is selective.
THRESHOLD_INDEXES = {
    "min_cost_usd": ("cost_usd", "modelyard_spend_cost_at"),
    "min_latency_ms": ("latency_ms", "modelyard_spend_latency_at"),
}
#: A threshold (min cost, min latency) matching fewer rows than this is read through its own index and
#: sorted; a looser one is met soon enough scanning newest first (1,000,000 rows, 10,000 matching: ~5,000
#: rows read before a 50-row page is full).
SELECTIVE = 10_000


def threshold_probes(where: SpendFilter, ph: Placeholder) -> list[tuple[str, str, float]]:
    """(index, SQL, argument) per threshold filter given: the SQL counts at most SELECTIVE rows over it,
    through its index (a few ms). Planners misjudge the tail of a distribution (SQLite has no histograms;
    PostgreSQL's estimated 6,990 rows for 309, and scanned 155,000 rows newest first: 1.8 s)."""
    out = []
    for name, (column, index) in THRESHOLD_INDEXES.items():
        value = _finite(name, getattr(where, name))
        if value is not None:
            sql = (
                f"SELECT COUNT(*) FROM (SELECT 1 FROM modelyard_spend WHERE {column} >= {ph(1)} "
                f"ORDER BY {column} LIMIT {SELECTIVE}) AS probe"
            )
            out.append((index, sql, value))
    return out


def selective_index(counts: Sequence[tuple[int, str]]) -> str | None:
    """The index of the most selective threshold, when one matches fewer than SELECTIVE rows."""
    best = min(counts, default=None)
    return best[1] if best is not None and best[0] < SELECTIVE else None


def get_spend_sql(ph: Placeholder) -> str:
    return f"{_SPEND_SELECT} WHERE id = {ph(1)}"


def update_key_sql(key_id: str, changes: dict[str, Any], ph: Placeholder) -> tuple[str, list[Any]]:
    """The UPDATE of a key's settable fields (models and metadata as JSON, like `key_row`), for a key not
    revoked; ValueError for a field that cannot be set. None of the changes: a no-op UPDATE that still tells
    whether the key is there."""
    unknown = sorted(set(changes) - set(KEY_UPDATABLE))
    if unknown:
        raise ValueError(f"these key fields cannot be changed: {', '.join(unknown)}")
    args: list[Any] = []
    sets: list[str] = []
    for name in KEY_UPDATABLE:
        if name not in changes:
            continue
        value = changes[name]
        if name == "models":
            value = None if value is None else _json_encode(list(value)).decode()
        elif name == "metadata":
            value = _json_encode(dict(value or {})).decode()
        elif name == "name" and (not isinstance(value, str) or not value.strip()):
            raise ValueError("a key needs a name")
        args.append(value)
        sets.append(f"{name} = {ph(len(args))}")
    if not sets:
        sets.append("id = id")
    args.append(key_id)
    return f"UPDATE modelyard_keys SET {', '.join(sets)} WHERE id = {ph(len(args))} AND revoked_at IS NULL", args


SESSION_COLUMNS = ("id_hash", "subject", "csrf", "created_at", "expires_at")


def session_sql(ph: Placeholder) -> dict[str, str]:
    """create / get / delete / purge of dashboard sessions."""
    columns = ", ".join(SESSION_COLUMNS)
    return {
        "create": f"INSERT INTO modelyard_ui_sessions ({columns}) VALUES ({', '.join(ph(i + 1) for i in range(5))})",
        "get": f"SELECT {columns} FROM modelyard_ui_sessions WHERE id_hash = {ph(1)} AND expires_at > {ph(2)}",
        "delete": f"DELETE FROM modelyard_ui_sessions WHERE id_hash = {ph(1)}",
        "purge": f"DELETE FROM modelyard_ui_sessions WHERE expires_at <= {ph(1)}",
    }


def session_row(session: UiSession) -> tuple[Any, ...]:
    return msgspec.structs.astuple(session)


def session_from_row(row: Sequence[Any]) -> UiSession:
    return UiSession(**dict(zip(SESSION_COLUMNS, row, strict=True)))


# --------------------------------------------------------------------------- feedback (shared)

FEEDBACK_COLUMNS = ("id", "request_id", "at", "score", "label", "key_id", "source")
#: The most feedback samples one read returns (a recalibration pass or a retrain pages with `since`).
MAX_SAMPLES = 100_000
_SAMPLE_COLUMNS = (
    "f.id, f.request_id, f.at, f.score, f.source, f.label, s.key_id, s.model, s.deployment, s.task, s.predicted"
)
_SAMPLE_FIELDS = (
    "feedback_id", "request_id", "at", "score", "source", "label", "key_id", "model", "deployment", "task",
    "predicted", "embedding", "content",
)  # fmt: skip


def feedback_insert_sql(ph: Placeholder) -> str:
    values = ", ".join(ph(i + 1) for i in range(len(FEEDBACK_COLUMNS)))
    return (
        f"INSERT INTO modelyard_feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({values}) ON CONFLICT (id) DO NOTHING"
    )


def feedback_row(record: FeedbackRecord) -> tuple[Any, ...]:
    """A feedback row, checked (the endpoint validates too; the store must not take a NaN from elsewhere) and
    with its text storable everywhere (NUL and lone surrogates escaped)."""
    score = _finite("score", record.score)
    at = _finite("at", record.at)
    if score is None or not 0.0 <= score <= 1.0:
        raise ValueError("score must be a number in [0, 1]")
    if record.source not in ("key", "admin"):
        raise ValueError("source must be key or admin")
    label = None if record.label is None else escape_text(record.label)
    key_id = None if record.key_id is None else escape_text(record.key_id)
    return (escape_text(record.id), escape_text(record.request_id), at, score, label, key_id, record.source)


def feedback_samples_sql(ph: Placeholder, with_model: bool, lean: bool = False) -> str:
    """Feedback joined with its spend row, from `since` ($1), oldest first; `limit` is the last argument;
    `lean`: the embedding and text columns read as NULL (not read from the table)."""
    where = f"f.at >= {ph(1)}"
    if with_model:
        where += f" AND s.model = {ph(2)}"
    limit = ph(3 if with_model else 2)
    learning = "NULL, NULL" if lean else "s.embedding, s.content"
    return (
        f"SELECT {_SAMPLE_COLUMNS}, {learning} FROM modelyard_feedback f JOIN modelyard_spend s ON s.id = f.request_id "
        f"WHERE {where} ORDER BY f.at, f.id LIMIT {limit}"
    )


def feedback_samples_args(since: float, limit: int, model: str | None) -> tuple[Any, ...]:
    start = _finite("since", since)
    page = min(max(int(limit), 1), MAX_SAMPLES)
    return (start, page) if model is None else (start, model, page)


def sample_from_row(row: Sequence[Any]) -> FeedbackSample:
    return msgspec.convert(dict(zip(_SAMPLE_FIELDS, row, strict=True)), FeedbackSample)


def migration_statement(statement: str, bucket_expr: Callable[[int], str]) -> str:
    """A migration's statement in one dialect: `{bucket_<grain>}` → that dialect's floor of `at` to the
    grain's width (`bucket_expr(width)`)."""
    for grain, width in ROLLUP_GRAINS.items():
        statement = statement.replace(f"{{bucket_{grain}}}", bucket_expr(width))
    return statement
