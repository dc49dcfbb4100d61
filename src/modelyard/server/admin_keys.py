"""Admin API: one key (JSON; the dashboard's key pages call the same query functions).

    GET   /admin/keys/{id}   ?range=1h|6h|24h|7d|30d (default 24h): the key's record, its budget period's
                             spend, and its usage over the range (requests and cost per minute or hour)
    PATCH /admin/keys/{id}   any of name, models, rpm, tpm, budget_usd, period, expires_in/expires_at,
                             metadata, priority, max_priority, max_queue_ms (checked by POST's rules; `null`
                             clears) → the updated record; 404 for an unknown or revoked key, 400 for a bad
                             value (nothing written). Applied at once on this replica; a budget or period
                             change re-seeds the budget in the shared counters (docs/accounting.md).

Admin keys are the master key's to manage: only it may give a key the admin role or change a key that has
it (a role-admin key can neither make other admins nor lift its own limits).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from modelyard.schema.errors import GatewayError
from modelyard.server.access import MASTER_ID, has_admin_role
from modelyard.server.admin import (
    ADMIN_BODY_LIMIT,
    KEYS_PATH,
    admin_changing,
    admin_gate,
    admin_minting,
    class_names,
    grants_admin,
    key_changes,
    key_record,
    known_guardrails,
    subject_services,
)
from modelyard.server.admin_routes import AdminRoutes
from modelyard.server.admin_traffic import fresh
from modelyard.server.http import Request, send_json
from modelyard.server.validation import decode_body

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

#: A usage chart's ranges: name → (seconds, rollup grain). Minutes up to 6 h (≤ 360 points), hours beyond.
RANGES: dict[str, tuple[int, str]] = {
    "1h": (3600, "minute"),
    "6h": (6 * 3600, "minute"),
    "24h": (86400, "hour"),
    "7d": (7 * 86400, "hour"),
    "30d": (30 * 86400, "hour"),
}
DEFAULT_RANGE = "24h"
_GRAIN_S = {"minute": 60, "hour": 3600}


def usage_range(text: str | None) -> str:
    """A range name from a query (`range`), default 24h; anything else is a 400."""
    if text is None or text == "":
        return DEFAULT_RANGE
    if text not in RANGES:
        raise GatewayError(400, f"`range` must be one of {', '.join(RANGES)}", param="range")
    return text


async def key_data(gw: Gateway, key_id: str, range_name: str = DEFAULT_RANGE) -> dict[str, Any]:
    """A key's record, its current budget period's spend (None without a budget) and its usage over
    `range_name`: one point per bucket of the range (empty buckets are 0), oldest first."""
    range_name = usage_range(range_name)
    record = await key_record(gw, key_id)
    access = admin_gate(gw).access
    assert access is not None
    span, grain = RANGES[range_name]
    width = _GRAIN_S[grain]
    now = access.clock()
    until = math.floor(now / width) * width + width  # the bucket in progress included
    since = until - span
    await fresh(admin_gate(gw))  # the key's newest requests in its usage (bounded, at most once a second)
    rows = await access.store_guard.call(access.store.traffic(grain, "key", since, until, value=record.id, by="time"))
    by_bucket = {int(row.bucket): row for row in rows}
    points = []
    for bucket in range(int(since), int(until), width):
        row = by_bucket.get(bucket)
        points.append(
            {
                "t": float(bucket),
                "requests": row.requests if row is not None else 0,
                "errors": row.errors if row is not None else 0,
                "cost_usd": round(row.cost_usd, 10) if row is not None else 0.0,
            }
        )
    return {
        **record.public(now),
        "spend": await access.key_spend(record),
        "usage": {
            "range": range_name,
            "grain": grain,
            "since": float(since),
            "until": float(until),
            "requests": sum(p["requests"] for p in points),
            "cost_usd": round(sum(p["cost_usd"] for p in points), 10),
            "points": points,
        },
    }


async def update_key_data(gw: Gateway, key_id: str, body: dict[str, Any], *, master: bool) -> dict[str, Any]:
    """Apply a PATCH body to a key: every value checked first (a 400 writes nothing), 404 for an unknown or
    revoked key, 403 when a caller other than the master key would make it an admin or edits an admin key;
    the updated record."""
    record = await key_record(gw, key_id)
    if record.revoked_at is not None:
        raise GatewayError(404, f"key `{key_id}` is revoked", code="key_not_found")
    if not master and has_admin_role(record.metadata):
        raise admin_changing()
    access = admin_gate(gw).access
    assert access is not None
    changes = key_changes(body, record, access.clock(), class_names(gw.config.queue))
    if "metadata" in changes:
        known_guardrails(changes["metadata"], gw.config.guardrails)
        if not master and grants_admin(record, changes["metadata"]):
            raise admin_minting()
    updated = await access.update_key(record, changes)
    if updated is None:  # revoked (or deleted) between the read and the write
        raise GatewayError(404, f"no active key with id `{key_id}`", code="key_not_found")
    return {**updated.public(access.clock()), "spend": await access.key_spend(updated)}


def _key_id(request: Request) -> str:
    return request.path[len(KEYS_PATH) + 1 :]


async def get_key(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await subject_services(gw, ctx)
    body = await key_data(gw, _key_id(request), usage_range(request.query.get("range")))
    await send_json(request.send, 200, body)


async def patch_key(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    _, subject = await subject_services(gw, ctx)
    body = decode_body(await request.body(ADMIN_BODY_LIMIT))
    await send_json(request.send, 200, await update_key_data(gw, _key_id(request), body, master=subject == MASTER_ID))


def install(routes: AdminRoutes) -> None:
    """Register this module's endpoints."""
    routes.add_prefixed("GET", KEYS_PATH + "/", get_key)
    routes.add_prefixed("PATCH", KEYS_PATH + "/", patch_key)
