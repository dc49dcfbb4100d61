"""The spend log's rollups (migration 5): a batch of inserted spend rows → one delta per (grain, dim, value,
bucket), and the SQL that adds them up.

Pure: the stores call `deltas` on the rows they actually inserted (an id already stored, replayed from the
spool, is not counted again) and run `upsert_sql` in the same transaction as the insert, so the rollups and
the log never disagree. Aggregating in Python first makes the upsert one row per group (a few hundred per
batch at most), not one per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from modelyard.accounting.traffic import BUCKETS, latency_bucket
from modelyard.state.migrations import ROLLUP_GRAINS, SPEND_COLUMNS

HISTOGRAM: tuple[str, ...] = tuple(f"h{i}" for i in range(BUCKETS))
#: Summed figures, in table order after (bucket, dim, value).
SUMMED: tuple[str, ...] = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    *HISTOGRAM,
)
ROLLUP_COLUMNS: tuple[str, ...] = ("bucket", "dim", "value", *SUMMED)

_AT, _KEY, _MODEL, _DEPLOYMENT, _PROMPT, _COMPLETION, _COST, _LATENCY, _STATUS = (
    SPEND_COLUMNS.index(c)
    for c in (
        "at",
        "key_id",
        "model",
        "deployment",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "status",
    )
)
_FIRST_BUCKET = SUMMED.index("h0")
#: A row's token counts count at most this much in the rollups (and never below 0): a sanitised row may
#: hold 2**63 - 1, and adding it to a bucket's BIGINT would overflow and refuse the row. migrations.py's
#: backfill bounds them the same way.
TOKEN_CAP = 2**40


def _tokens(value: Any) -> int:
    return min(max(int(value), 0), TOKEN_CAP)


Delta = tuple[Any, ...]


def bucket_start(at: float, width: float) -> float:
    """The start of the rollup bucket of `width` seconds that holds time `at` (how every row is bucketed;
    readers that combine rows and rollups cut at the same boundaries)."""
    return float(math.floor(at / width) * width)


_FINEST = min(ROLLUP_GRAINS.values())
if any(width % _FINEST for width in ROLLUP_GRAINS.values()):  # pragma: no cover - a developer's mistake
    raise RuntimeError("every rollup grain must be a multiple of the finest")


def deltas(rows: Iterable[Sequence[Any]]) -> dict[str, list[Delta]]:
    """Per grain, the rollup rows (ROLLUP_COLUMNS order) the given spend rows (SPEND_COLUMNS order) add.

    Each row is added to its four dimensions in the finest grain only; the coarser grains are then summed
    from those groups (a batch of the spend writer spans a second or so: a few dozen groups, not one per
    row). A time that is not a finite number raises ValueError (a data error: the spend writer then
    sanitises the row)."""
    return deltas_of(group_rows(rows, {}))


#: Rows grouped by everything a row's four dimensions need (`group_rows`), before `deltas_of` expands them.
Grouped = dict[tuple[float, str, str, str, int, int], list[Any]]


def group_rows(rows: Iterable[Sequence[Any]], rows_by: Grouped) -> Grouped:
    """Add `rows` to `rows_by` (and return it): a batch may be grouped in slices, the event loop getting
    control back between them, and expanded once."""
    # One dict step per row, keyed by everything a row's four dimensions need; expanded to the dimensions
    # per group afterwards (a batch has a few dozen groups, not one per row).
    for row in rows:
        at = row[_AT]
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise ValueError(f"spend time {at!r} is not a finite number")
        latency = row[_LATENCY]
        key = (
            bucket_start(at, _FINEST),
            row[_MODEL] or "",
            row[_DEPLOYMENT] or "",
            row[_KEY] or "",
            0 if row[_STATUS] == "ok" else 1,
            _FIRST_BUCKET + latency_bucket(float(latency)),
        )
        sums = rows_by.get(key)
        if sums is None:
            rows_by[key] = [1, _tokens(row[_PROMPT]), _tokens(row[_COMPLETION]), row[_COST], latency]
        else:
            sums[0] += 1
            sums[1] += _tokens(row[_PROMPT])
            sums[2] += _tokens(row[_COMPLETION])
            sums[3] += row[_COST]
            sums[4] += latency
    return rows_by


def deltas_of(rows_by: Grouped) -> dict[str, list[Delta]]:
    """The rollup rows of grouped spend rows (see `deltas`). A cost or latency that is not a finite number
    raises ValueError, like a time (a data error: the row is sanitised, its number made 0)."""
    fine: dict[tuple[float, str, str], list[Any]] = {}
    for (bucket, model, deployment, key_id, error, slot), (n, prompt, completion, cost, latency) in rows_by.items():
        if not (math.isfinite(cost) and math.isfinite(latency)):
            raise ValueError(f"spend cost {cost!r} or latency {latency!r} is not a finite number")
        for group in (
            (bucket, "all", ""),
            (bucket, "model", model),
            (bucket, "deployment", deployment),
            (bucket, "key", key_id),
        ):
            sums = fine.get(group)
            if sums is None:
                sums = fine[group] = [0, 0, 0, 0, 0.0, 0.0] + [0] * BUCKETS
            sums[0] += n
            sums[1] += error * n
            sums[2] += prompt
            sums[3] += completion
            sums[4] += cost
            sums[5] += latency
            sums[slot] += n
    out: dict[str, list[Delta]] = {}
    for grain, width in ROLLUP_GRAINS.items():
        if width == _FINEST:
            out[grain] = [(*group, *sums) for group, sums in fine.items()]
            continue
        coarse: dict[tuple[float, str, str], list[Any]] = {}
        for (bucket, dim, value), sums in fine.items():
            group = (bucket_start(bucket, width), dim, value)
            total = coarse.get(group)
            if total is None:
                coarse[group] = list(sums)
            else:
                coarse[group] = [a + b for a, b in zip(total, sums, strict=True)]
        out[grain] = [(*group, *sums) for group, sums in coarse.items()]
    return out


def first_new(rows: Iterable[Sequence[Any]], stored: set[str]) -> list[Sequence[Any]]:
    """The rows an `INSERT … ON CONFLICT (id) DO NOTHING` of `rows` inserts, given the ids already `stored`:
    an id stored before, or seen earlier in the batch, is skipped."""
    seen = set(stored)
    out = []
    for row in rows:
        if row[0] in seen:
            continue
        seen.add(row[0])
        out.append(row)
    return out


def upsert_sql(grain: str, source: str) -> str:
    """Add rollup rows from `source` (a `VALUES (…)` or a `SELECT …`, in ROLLUP_COLUMNS order) to a grain's
    table. SQLite wants `WHERE true` after a SELECT source, so its ON CONFLICT is not read as a join's ON."""
    if grain not in ROLLUP_GRAINS:
        raise ValueError(f"unknown grain {grain!r}")
    table = f"modelyard_spend_{grain}"
    sets = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in SUMMED)
    return (
        f"INSERT INTO {table} ({', '.join(ROLLUP_COLUMNS)}) {source} "
        f"ON CONFLICT (dim, value, bucket) DO UPDATE SET {sets}"
    )


def values_source(ph: Callable[[int], str]) -> str:
    return "VALUES (" + ", ".join(ph(i + 1) for i in range(len(ROLLUP_COLUMNS))) + ")"


#: Minute rollups are read only for ranges up to 6 hours (the overview, a key's usage); older minute rows
#: are deleted (once an hour, by the store that writes spend) so the table stays bounded, about two days of
#: rows per dimension value. The hour rollups are kept.
MINUTE_KEEP_S = 2 * 86400.0
PURGE_EVERY_S = 3600.0
PURGE_MINUTES_SQL = "DELETE FROM modelyard_spend_minute WHERE bucket < {ph}"


class PurgeClock:
    """When this store last purged the minute rollups, and the newest request time it has written: the
    cut-off is two days before that time (so a replay of old rows, or a log written for a test at some
    fixed past time, never loses the minutes of its own window)."""

    __slots__ = ("last", "newest")

    def __init__(self) -> None:
        self.last = -math.inf  # monotonic seconds
        self.newest = -math.inf  # unix seconds

    def due(self, written_at: Iterable[float]) -> float | None:
        """The cut-off to purge minute rows before, when a purge is due (and then marks it done)."""
        self.newest = max(self.newest, max((t for t in written_at if math.isfinite(t)), default=-math.inf))
        now = time.monotonic()
        if now - self.last < PURGE_EVERY_S or not math.isfinite(self.newest):
            return None
        self.last = now
        return self.newest - MINUTE_KEEP_S
