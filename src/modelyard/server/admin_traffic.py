"""Admin API: traffic. The overview (rates, errors, latency percentiles, cost, by model / deployment / key)
from the spend log's rollups, and the request log (filtered, keyset-paged) with each request's record,
routing explanation and attempts. The dashboard's pages call the same query functions in-process, so the
JSON here is the contract for every figure they show.

    GET /admin/overview       ?range=15m|1h|6h|24h|7d|30d&model=|deployment=|key=
    GET /admin/requests       ?key=&model=&deployment=&status=ok|error&min_cost=&min_latency_ms=&since=&until=
                              &guardrail=any|block|none&q=<id or prefix>&before=<cursor>&limit=
    GET /admin/requests/{id}  one request: record, route, attempts, tokens by kind, headers, content if logged

Speed: an overview is at most four store calls (one per time series, one per breakdown) plus one for key
names, whatever the range holds; a request-log page is one (two when it pages on). Every value from the
query string is checked here (finite, in range, bounded) before the store sees it.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelyard.accounting.spend import SpendRecord
from modelyard.accounting.traffic import percentile
from modelyard.routing.trace import read_attempts, read_route
from modelyard.schema.errors import GatewayError
from modelyard.server.admin import _services, admin_gate
from modelyard.server.admin_routes import AdminRoutes
from modelyard.server.http import Request, send_json
from modelyard.server.validation import whole_number
from modelyard.state.store import RollupRow, SpendFilter

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext
    from modelyard.server.services import Services

OVERVIEW_PATH = "/admin/overview"
REQUESTS_PATH = "/admin/requests"
#: The overview's ranges: name → seconds. Up to 6 h it reads the per-minute rollups, beyond the per-hour.
RANGES: dict[str, int] = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
DEFAULT_RANGE = "1h"
_MINUTE_UP_TO_S = 21600
#: Rows per breakdown table (the dearest first).
TOP_ROWS = 20
#: Dimensions the overview may be narrowed by (query parameter → rollup dimension).
NARROW = ("model", "deployment", "key")
MAX_PAGE = 200
DEFAULT_PAGE = 50
_MAX_TEXT = 256
_MAX_ID = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DURATION = re.compile(r"^(\d{1,9}(?:\.\d{1,6})?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER = re.compile(r"^\d{1,12}(?:\.\d{1,9})?$")
#: How far ahead `since` / `until` may reach (a day: clocks disagree a little); back, to 1970.
_MAX_AHEAD_S = 86400.0
#: The spend writer is flushed before a read at most this often per process (a dashboard refreshing every
#: few seconds must not force a flush per view; the writer flushes on its own anyway).
FLUSH_EVERY_S = 1.0
_QUANTILES = (("p50_ms", 0.5), ("p95_ms", 0.95))
_NAMES = tuple(name for name, _ in _QUANTILES)


# --------------------------------------------------------------------------- reading fresh rows


async def fresh(services: Services) -> None:
    """Let the newest requests show: flush the spend writer, bounded by the store timeout and at most once
    per FLUSH_EVERY_S per replica (concurrent views wait for the one flush in progress, not one each)."""
    writer, access = services.spend, services.access
    if writer is None or access is None or access.store_guard.down:
        return
    await writer.flush_for_read(FLUSH_EVERY_S, timeout_s=min(access.store_guard.timeout_s, 2.0))


# --------------------------------------------------------------------------- validation at the edge


def _text(query: Mapping[str, str], name: str, limit: int = _MAX_TEXT) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if len(value) > limit or _CONTROL.search(value):
        raise GatewayError(400, f"`{name}` must be at most {limit} characters, without control characters", param=name)
    return value


def _choice(query: Mapping[str, str], name: str, choices: Sequence[str]) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if value not in choices:
        raise GatewayError(400, f"`{name}` must be one of {', '.join(choices)}", param=name)
    return value


def _number(query: Mapping[str, str], name: str, maximum: float) -> float | None:
    """A finite number in [0, maximum]; None when absent."""
    value = query.get(name)
    if value is None or value == "":
        return None
    problem = f"`{name}` must be a finite number between 0 and {maximum:g}"
    if len(value) > 32:
        raise GatewayError(400, problem, param=name)
    try:
        number = float(value)
    except ValueError:
        raise GatewayError(400, problem, param=name) from None
    if not math.isfinite(number) or not 0 <= number <= maximum:
        raise GatewayError(400, problem, param=name)
    return number


def _limit(query: Mapping[str, str]) -> int:
    return whole_number(query.get("limit"), "limit", 1, MAX_PAGE, DEFAULT_PAGE) or DEFAULT_PAGE


def parse_moment(name: str, value: str | None, now: float) -> float | None:
    """A point in time: a duration ago (`24h`, `90m`, `7d`), unix seconds, or an ISO date / date-time (UTC
    unless it says otherwise); from 1970 to a day ahead."""
    if value is None or value == "":
        return None
    problem = f"`{name}` must be a duration ago (e.g. 24h), unix seconds or an ISO date"
    text = value.strip()
    if len(text) > 40:
        raise GatewayError(400, problem, param=name)
    duration = _DURATION.match(text.lower())
    if duration is not None:
        moment = now - float(duration.group(1)) * _UNIT_S[duration.group(2)]
    elif _NUMBER.match(text):
        moment = float(text)
    else:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise GatewayError(400, problem, param=name) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        moment = parsed.timestamp()
    if not math.isfinite(moment) or not 0 <= moment <= now + _MAX_AHEAD_S:
        raise GatewayError(400, f"`{name}` must lie between 1970 and tomorrow", param=name)
    return moment


def encode_cursor(record: SpendRecord) -> str:
    """The keyset position after `record`: `at:id` (at as exact float text; ids hold no colon)."""
    return f"{record.at!r}:{record.id}"


def parse_cursor(value: str | None) -> tuple[float, str] | None:
    if value is None or value == "":
        return None
    problem = "`before` is not a cursor this API gave (use the `next` value of the previous page)"
    at_text, sep, request_id = value.partition(":")
    if not sep or len(value) > 200 or not request_id or len(request_id) > _MAX_ID or _CONTROL.search(request_id):
        raise GatewayError(400, problem, param="before")
    try:
        at = float(at_text)
    except ValueError:
        raise GatewayError(400, problem, param="before") from None
    if not math.isfinite(at) or at < 0:
        raise GatewayError(400, problem, param="before")
    return at, request_id


# --------------------------------------------------------------------------- the overview


def _quantiles(histogram: Sequence[int]) -> dict[str, float | None]:
    if not any(histogram):  # most buckets of a long range: no traffic, no percentiles to read
        return dict.fromkeys(_NAMES)
    return {name: _round(percentile(histogram, q)) for name, q in _QUANTILES}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _summed(rows: Sequence[RollupRow]) -> list[int]:
    """The rows' histograms added bucket by bucket (column sums: one pass in C, not a loop per count)."""
    return [sum(column) for column in zip(*(r.histogram for r in rows), strict=False)]


def _figures(row: RollupRow) -> dict[str, Any]:
    requests = row.requests
    return {
        "requests": requests,
        "errors": row.errors,
        "error_rate": row.errors / requests if requests else 0.0,
        **_quantiles(row.histogram),
        "cost_usd": row.cost_usd,
    }


def overview_window(range_name: str, now: float) -> tuple[str, int, float, float]:
    """(grain, bucket width, since, until): whole buckets, the last one the bucket now is in."""
    span = RANGES[range_name]
    grain, width = ("minute", 60) if span <= _MINUTE_UP_TO_S else ("hour", 3600)
    until = math.floor(now / width) * width + width
    return grain, width, float(until - span), float(until)


async def overview_data(gw: Gateway, query: Mapping[str, str]) -> dict[str, Any]:
    """The overview of `range` (narrowed to one model, deployment or key when one is given)."""
    range_name = query.get("range") or DEFAULT_RANGE
    if range_name not in RANGES:
        raise GatewayError(400, f"`range` must be one of {', '.join(RANGES)}", param="range")
    narrowed = [(dim, value) for dim in NARROW if (value := _text(query, dim)) is not None]
    if len(narrowed) > 1:
        raise GatewayError(400, "narrow the overview by at most one of model, deployment and key", param=narrowed[1][0])
    services = admin_gate(gw)
    access = services.access
    assert access is not None
    guard, store = access.store_guard, services.store
    await fresh(services)
    now = time.time()
    grain, width, since, until = overview_window(range_name, now)
    dim, value = narrowed[0] if narrowed else ("all", None)
    dims = [d for d in NARROW if not narrowed or d == dim]
    calls = [guard.call(store.traffic(grain, dim, since, until, value=value, by="time"))]
    calls += [
        guard.call(store.traffic(grain, d, since, until, value=value if d == dim else None, by="value")) for d in dims
    ]
    series_rows, *breakdowns = await asyncio.gather(*calls)
    by: dict[str, list[dict[str, Any]]] = {d: [] for d in NARROW}
    for d, rows in zip(dims, breakdowns, strict=True):
        by[d] = [{"name": r.value, **_figures(r)} for r in rows[:TOP_ROWS]]
    if by["key"]:
        names = await _key_names(services)
        for entry in by["key"]:
            entry["key_name"] = names.get(entry["name"])
    elapsed = max(1.0, min(now, until) - since)
    total = RollupRow(
        requests=sum(r.requests for r in series_rows),
        errors=sum(r.errors for r in series_rows),
        prompt_tokens=sum(r.prompt_tokens for r in series_rows),
        completion_tokens=sum(r.completion_tokens for r in series_rows),
        cost_usd=sum(r.cost_usd for r in series_rows),
        histogram=tuple(_summed(series_rows)),
    )
    per_hour = total.cost_usd / (elapsed / 3600)
    totals = {
        **_figures(total),
        "rps": total.requests / elapsed,
        "cost_per_hour_usd": per_hour,
        "cost_per_day_usd": per_hour * 24,
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
    }
    return {
        "object": "overview",
        "range": range_name,
        "narrowed": {"dim": dim, "value": value} if value is not None else None,
        "since": since,
        "until": until,
        "grain": grain,
        "bucket_s": width,
        "percentiles": "interpolated within latency buckets (accounting/traffic.py LATENCY_EDGES_MS)",
        "totals": totals,
        "series": _series(series_rows, since, until, width, now),
        "by": by,
    }


def _series(rows: Sequence[RollupRow], since: float, until: float, width: int, now: float) -> list[dict[str, Any]]:
    """Every bucket of the range, oldest first, zeros where there was no traffic; the bucket now is in
    counts its rate over the part of it that has passed."""
    found = {r.bucket: r for r in rows}
    out: list[dict[str, Any]] = []
    t = since
    while t < until:
        row = found.get(t) or RollupRow(bucket=t)
        seconds = max(1.0, min(float(width), now - t))
        out.append({"t": t, **_figures(row), "rps": row.requests / seconds})
        t += width
    return out


async def _key_names(services: Services) -> dict[str, str]:
    """Every key's name, revoked ones included: one store call for the whole table."""
    access = services.access
    assert access is not None
    records = await access.store_guard.call(services.store.list_keys(include_revoked=True))
    return {r.id: r.name for r in records}


# --------------------------------------------------------------------------- the request log


def request_filter(query: Mapping[str, str], now: float) -> tuple[SpendFilter, int]:
    """The request log's filters and page size from a query string, every value checked."""
    cursor = parse_cursor(query.get("before"))
    since = parse_moment("since", query.get("since"), now)
    until = parse_moment("until", query.get("until"), now)
    if since is not None and until is not None and since >= until:
        raise GatewayError(400, "`since` must be before `until`", param="since")
    where = SpendFilter(
        since=since,
        until=until,
        key_id=_text(query, "key", _MAX_ID),
        model=_text(query, "model"),
        deployment=_text(query, "deployment"),
        status=_choice(query, "status", ("ok", "error")),
        min_cost_usd=_number(query, "min_cost", 1e9),
        min_latency_ms=_number(query, "min_latency_ms", 1e9),
        guardrail=_choice(query, "guardrail", ("any", "block", "none")),
        id_prefix=_text(query, "q", _MAX_ID),
        before_at=cursor[0] if cursor else None,
        before_id=cursor[1] if cursor else None,
    )
    return where, _limit(query)


def _row(record: SpendRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": record.at,
        "key_id": record.key_id,
        "key_name": record.key_name,
        "model": record.model,
        "deployment": record.deployment,
        "provider": record.provider,
        "status": record.status,
        "error_kind": record.error_kind,
        "attempts": record.attempts,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost_usd": record.cost_usd,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "guardrails": record.guardrails,
    }


async def requests_data(gw: Gateway, query: Mapping[str, str]) -> dict[str, Any]:
    """One page of the request log, newest first; `next` the cursor of the page after, null at the end."""
    where, limit = request_filter(query, time.time())
    services = admin_gate(gw)
    access = services.access
    assert access is not None
    await fresh(services)
    records = await access.store_guard.call(services.store.find_spend(where, limit + 1))
    page = records[:limit]
    more = len(records) > limit
    return {
        "object": "list",
        "data": [_row(r) for r in page],
        "next": encode_cursor(page[-1]) if more and page else None,
    }


def answer_headers(record: SpendRecord) -> dict[str, str]:
    """The x-modelyard-* headers the answer carried, rebuilt from the record (as server/app.py writes them)."""
    headers = {"x-request-id": record.id}
    if record.deployment:
        headers["x-modelyard-model"] = record.deployment
    if record.provider:
        headers["x-modelyard-provider"] = record.provider
    if record.attempt_log:
        headers["x-modelyard-attempts"] = record.attempt_log
    if record.status == "ok":
        headers["x-modelyard-cost-usd"] = f"{record.cost_usd:.8f}"
    headers["x-modelyard-latency-ms"] = f"{record.latency_ms:.1f}"
    if record.guardrails:
        headers["x-modelyard-guardrails"] = record.guardrails
    return headers


async def request_data(gw: Gateway, request_id: str) -> dict[str, Any]:
    """One request: its record, routing explanation, attempts, tokens by kind, headers; content if logged."""
    if not request_id or len(request_id) > _MAX_ID or _CONTROL.search(request_id):
        raise GatewayError(404, "no such request", code="request_not_found")
    services = admin_gate(gw)
    access = services.access
    assert access is not None
    await fresh(services)
    record = await access.store_guard.call(services.store.get_spend(request_id))
    if record is None:
        raise GatewayError(404, f"no request with id `{request_id}`", code="request_not_found")
    body: dict[str, Any] = {
        "object": "request",
        **_row(record),
        "endpoint": record.endpoint,
        "attempt_log": record.attempt_log,
        "attempt_count": record.attempts,
        "attempts": read_attempts(record.attempt_detail),
        "route": read_route(record.route),
        "tokens": {
            "prompt": record.prompt_tokens,
            "completion": record.completion_tokens,
            "cached": record.cached_tokens,
            "cache_write": record.cache_write_tokens,
            "reasoning": record.reasoning_tokens,
        },
        "headers": answer_headers(record),
        "content_logged": record.content is not None,
    }
    if record.content is not None:
        body["content"] = record.content
    return body


# --------------------------------------------------------------------------- the endpoints


async def overview(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    await send_json(request.send, 200, await overview_data(gw, request.query))


async def requests(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    await send_json(request.send, 200, await requests_data(gw, request.query))


async def one_request(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    await send_json(request.send, 200, await request_data(gw, request.path[len(REQUESTS_PATH) + 1 :]))


def install(routes: AdminRoutes) -> None:
    """Register this module's endpoints."""
    routes.add("GET", OVERVIEW_PATH, overview)
    routes.add("GET", REQUESTS_PATH, requests)
    routes.add_prefixed("GET", REQUESTS_PATH + "/", one_request)
