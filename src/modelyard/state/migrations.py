"""Schema migrations for the store, one list for SQLite and PostgreSQL alike.

Each migration has a version and plain portable SQL (TEXT, BIGINT, DOUBLE PRECISION; times are unix
seconds). `modelyard_schema` records which versions ran; a store applies the missing ones in order, each
in its own transaction, under a lock (BEGIN IMMEDIATE in SQLite, an advisory lock in PostgreSQL) so two
gateways starting together do not race. Append new migrations; never edit one that has shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.accounting.traffic import LATENCY_EDGES_MS

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS modelyard_schema (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


#: Rollup tables of the spend log (migration 5): name suffix → bucket width in seconds.
ROLLUP_GRAINS: dict[str, int] = {"minute": 60, "hour": 3600}
#: The rollups' dimensions; `all` has one value, ''.
ROLLUP_DIMS = ("all", "model", "deployment", "key")

#: The largest finite double: a latency above it (infinity; NaN, which PostgreSQL sorts above every number)
#: counts in the first bucket, as accounting/traffic.latency_bucket puts it.
_FINITE_MAX = "1.7976931348623157e308"


def _histogram_sums() -> list[str]:
    """h0..h17 of the rollups as SQL sums over spend rows, bucket for bucket as latency_bucket() counts."""
    edges = LATENCY_EDGES_MS
    out = [f"SUM(CASE WHEN latency_ms >= {edges[0]!r} AND latency_ms <= {_FINITE_MAX} THEN 0 ELSE 1 END)"]
    for i in range(1, len(edges)):
        out.append(f"SUM(CASE WHEN latency_ms >= {edges[i - 1]!r} AND latency_ms < {edges[i]!r} THEN 1 ELSE 0 END)")
    out.append(f"SUM(CASE WHEN latency_ms >= {edges[-1]!r} AND latency_ms <= {_FINITE_MAX} THEN 1 ELSE 0 END)")
    return out


def _capped_sum(column: str) -> str:
    """A token column's sum as the rollups count it: each row within [0, 2**40] (state/rollup.TOKEN_CAP)."""
    return f"SUM(CASE WHEN {column} < 0 THEN 0 WHEN {column} > {2**40} THEN {2**40} ELSE {column} END)"


def _rollup_backfill() -> tuple[str, ...]:
    """Roll up the rows already in the spend log when migration 5 runs: one INSERT … SELECT … GROUP BY per
    table and dimension. `{bucket_minute}` / `{bucket_hour}` are left for the store to fill in with its
    dialect's floor of `at` (state/sqlite_store.py, state/postgres_store.py)."""
    values = {"all": "''", "model": "COALESCE(model, '')", "deployment": "COALESCE(deployment, '')"}
    values["key"] = "COALESCE(key_id, '')"
    histogram = ", ".join(_histogram_sums())
    columns = ", ".join(f"h{i}" for i in range(len(LATENCY_EDGES_MS) + 1))
    return tuple(
        f"INSERT INTO modelyard_spend_{grain} (bucket, dim, value, requests, errors, prompt_tokens, "
        f"completion_tokens, cost_usd, latency_ms, {columns}) "
        f"SELECT {{bucket_{grain}}} AS b, '{dim}', {values[dim]} AS v, COUNT(*), "
        "SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END), "
        f"{_capped_sum('prompt_tokens')}, {_capped_sum('completion_tokens')}, "
        f"SUM(cost_usd), SUM(latency_ms), {histogram} FROM modelyard_spend GROUP BY b, v"
        for grain in ROLLUP_GRAINS
        for dim in ROLLUP_DIMS
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "virtual keys and spend log",
        (
            """CREATE TABLE modelyard_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION,
            models TEXT,
            rpm BIGINT,
            tpm BIGINT,
            budget_usd DOUBLE PRECISION,
            period_s DOUBLE PRECISION,
            metadata TEXT NOT NULL DEFAULT '{}'
        )""",
            """CREATE TABLE modelyard_spend (
            id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            key_id TEXT,
            key_name TEXT,
            model TEXT,
            deployment TEXT,
            provider TEXT,
            endpoint TEXT NOT NULL DEFAULT '',
            attempts BIGINT NOT NULL DEFAULT 0,
            attempt_log TEXT NOT NULL DEFAULT '',
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            cached_tokens BIGINT NOT NULL DEFAULT 0,
            cache_write_tokens BIGINT NOT NULL DEFAULT 0,
            reasoning_tokens BIGINT NOT NULL DEFAULT 0,
            cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            latency_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            ttft_ms DOUBLE PRECISION,
            status TEXT NOT NULL,
            error_kind TEXT,
            content TEXT
        )""",
            "CREATE INDEX modelyard_spend_at ON modelyard_spend (at)",
            "CREATE INDEX modelyard_spend_key_at ON modelyard_spend (key_id, at)",
        ),
    ),
    # A spend row's id is its request id: unique, so replaying the spool after a crash never doubles a row
    # (SQLite inserts with OR IGNORE, PostgreSQL with ON CONFLICT (id) DO NOTHING). Rows the store refused
    # even sanitised are set aside, as JSON, in the dead-letter table.
    Migration(
        2,
        "unique spend ids, spend dead letters",
        (
            "CREATE UNIQUE INDEX modelyard_spend_id ON modelyard_spend (id)",
            """CREATE TABLE modelyard_spend_dead (
            id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            failed_at DOUBLE PRECISION NOT NULL,
            error TEXT NOT NULL,
            record TEXT NOT NULL
        )""",
        ),
    ),
    # Responses API conversations (state/conversations.py): one row per stored response, scoped by key id
    # ('' without a key); items as JSON text. Rows past `expires_at` are invisible and purged now and then.
    Migration(
        3,
        "stored responses",
        (
            """CREATE TABLE modelyard_responses (
            id TEXT PRIMARY KEY,
            key_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            model TEXT NOT NULL,
            previous_id TEXT,
            upstream TEXT,
            input_items TEXT NOT NULL,
            output_items TEXT NOT NULL,
            response TEXT
        )""",
            "CREATE INDEX modelyard_responses_key ON modelyard_responses (key_id, expires_at)",
            "CREATE INDEX modelyard_responses_expiry ON modelyard_responses (expires_at)",
        ),
    ),
    # Guardrails (server/guards.py): what each request's checks ran and found, as the header's text.
    Migration(4, "guardrail findings in the spend log", ("ALTER TABLE modelyard_spend ADD COLUMN guardrails TEXT",)),
    # The dashboard (docs/dashboard.md). Each request's routing decision and attempts, as compact JSON
    # (routing/trace.py). Rollups of the spend log per minute and per hour, one row per bucket and
    # dimension value (`dim` is all, model, deployment or key; `value` '' for all and for no key), kept by
    # the spend writer in the same transaction as the rows it inserts, with a latency histogram
    # (accounting/traffic.py's LATENCY_EDGES_MS: h0 below the first edge … h17 above the last) for
    # percentiles: the overview reads at most a few thousand rollup rows whatever the size of the log.
    # {bucket_minute} / {bucket_hour}: the dialect's floor of `at` to the bucket (the backfill of rows
    # written before this migration). Indexes for the request log's filters. Dashboard sessions.
    Migration(
        5,
        "dashboard: routing traces, rollups, sessions",
        (
            "ALTER TABLE modelyard_spend ADD COLUMN route TEXT",
            "ALTER TABLE modelyard_spend ADD COLUMN attempt_detail TEXT",
            "CREATE INDEX modelyard_spend_model_at ON modelyard_spend (model, at)",
            "CREATE INDEX modelyard_spend_deployment_at ON modelyard_spend (deployment, at)",
            # Errors only (a few percent of rows): the request log's status=error filter, at a fraction of the
            # writer's cost of indexing every row's status.
            "CREATE INDEX modelyard_spend_errors_at ON modelyard_spend (at) WHERE status <> 'ok'",
            # min cost / min latency: a selective threshold reads its few rows from these (and `at`, for a
            # time range or a keyset page, from the index itself); see SQLiteStore.find_spend for when.
            "CREATE INDEX modelyard_spend_cost_at ON modelyard_spend (cost_usd, at)",
            "CREATE INDEX modelyard_spend_latency_at ON modelyard_spend (latency_ms, at)",
            *(
                f"""CREATE TABLE modelyard_spend_{grain} (
            bucket DOUBLE PRECISION NOT NULL,
            dim TEXT NOT NULL,
            value TEXT NOT NULL,
            requests BIGINT NOT NULL DEFAULT 0,
            errors BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            latency_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            h0 BIGINT NOT NULL DEFAULT 0,
            h1 BIGINT NOT NULL DEFAULT 0,
            h2 BIGINT NOT NULL DEFAULT 0,
            h3 BIGINT NOT NULL DEFAULT 0,
            h4 BIGINT NOT NULL DEFAULT 0,
            h5 BIGINT NOT NULL DEFAULT 0,
            h6 BIGINT NOT NULL DEFAULT 0,
            h7 BIGINT NOT NULL DEFAULT 0,
            h8 BIGINT NOT NULL DEFAULT 0,
            h9 BIGINT NOT NULL DEFAULT 0,
            h10 BIGINT NOT NULL DEFAULT 0,
            h11 BIGINT NOT NULL DEFAULT 0,
            h12 BIGINT NOT NULL DEFAULT 0,
            h13 BIGINT NOT NULL DEFAULT 0,
            h14 BIGINT NOT NULL DEFAULT 0,
            h15 BIGINT NOT NULL DEFAULT 0,
            h16 BIGINT NOT NULL DEFAULT 0,
            h17 BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (dim, value, bucket)
        )"""
                for grain in ROLLUP_GRAINS
            ),
            *_rollup_backfill(),
            # The overview over days reads every hour of a dimension (30 days x 50 keys: 36,000 rows): from
            # this index alone, not one table lookup per row (SQLite, 1,000,000 rows: 124 → 74 ms of CPU for the four).
            "CREATE INDEX modelyard_spend_hour_cover ON modelyard_spend_hour (dim, bucket, value, requests, errors, "
            "prompt_tokens, completion_tokens, cost_usd, latency_ms, "
            + ", ".join(f"h{i}" for i in range(len(LATENCY_EDGES_MS) + 1))
            + ")",
            """CREATE TABLE modelyard_ui_sessions (
            id_hash TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
            "CREATE INDEX modelyard_ui_sessions_expiry ON modelyard_ui_sessions (expires_at)",
        ),
    ),
    # Feedback on answers (server/feedback.py, state/feedback.py, docs/feedback.md). What retraining and
    # recalibration need of the request, kept with its spend row: the recognised task, the learned router's
    # P(good) for the deployment that answered, and the prompt's embedding (`space|base64 float32`, only for
    # requests that were embedded; the text stays in `content`, which only `log_content` fills). Feedback rows
    # are their own table, since feedback may arrive before the spend row is written and several may concern
    # one request; `request_id` is indexed for the join, `at` for the recalibration's cursor.
    Migration(
        6,
        "feedback, and what learning from it needs in the spend log",
        (
            "ALTER TABLE modelyard_spend ADD COLUMN task TEXT",
            "ALTER TABLE modelyard_spend ADD COLUMN predicted DOUBLE PRECISION",
            "ALTER TABLE modelyard_spend ADD COLUMN embedding TEXT",
            """CREATE TABLE modelyard_feedback (
            id TEXT PRIMARY KEY,
            request_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            score DOUBLE PRECISION NOT NULL,
            label TEXT,
            key_id TEXT,
            source TEXT NOT NULL
        )""",
            "CREATE INDEX modelyard_feedback_request ON modelyard_feedback (request_id)",
            "CREATE INDEX modelyard_feedback_at ON modelyard_feedback (at)",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

#: Spend columns in insert order (the SpendRecord field names).
SPEND_COLUMNS: tuple[str, ...] = (
    "id",
    "at",
    "key_id",
    "key_name",
    "model",
    "deployment",
    "provider",
    "endpoint",
    "attempts",
    "attempt_log",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "status",
    "error_kind",
    "content",
    "guardrails",
    "route",
    "attempt_detail",
    "task",
    "predicted",
    "embedding",
)

KEY_COLUMNS: tuple[str, ...] = (
    "id",
    "name",
    "key_hash",
    "key_prefix",
    "created_at",
    "expires_at",
    "revoked_at",
    "models",
    "rpm",
    "tpm",
    "budget_usd",
    "period_s",
    "metadata",
)

#: GET /admin/spend and `modelyard spend` groupings.
GROUPINGS = ("model", "key", "day", "deployment")
