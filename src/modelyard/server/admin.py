"""The admin API (the master key, or a key with role admin): virtual keys and spend reports.

    POST   /admin/keys          {"name", "models"?, "rpm"?, "tpm"?, "budget_usd"?, "period"?, "expires_in"?,
                                 "priority"?, "max_priority"?, "max_queue_ms"?, "metadata"?}  → the key record
                                 plus `key`, the raw key, shown this once
    GET    /admin/keys          ?all=true lists revoked keys too; each with its current budget period spend
    DELETE /admin/keys/{id}     revoke (immediate on this replica, within `access.refresh_s` on the others)
    GET|PATCH /admin/keys/{id}  one key, its spend and usage; edit it (admin_keys.py)
    GET    /admin/spend         ?by=model|key|day|deployment&since=7d
    GET    /admin/queues        the admission queues now: per model and class, depth, tokens, service rate
    POST   /admin/reload        re-read the config file (and its prices_from file) and swap it in: 200 with
                                the changes, or 422 `config_invalid` with every problem at its file:line (the
                                old config stays)
    GET    /admin/reload        this process's config generation and its last reload's result

A key's admission-queue settings (server/priority.py reads them) are kept in its metadata: `priority` and
`max_priority` name classes of `queue.classes`, `max_queue_ms` is the longest its requests wait. They may be
given at the top level of the body or in `metadata`; either way they are checked here, so a key never holds a
class the config does not have or a wait that is not a finite number of milliseconds.

Errors are OpenAI-shaped like everywhere else: 401 without the master key, 403 when the gateway has no
master key (the admin API is off), 404 for an unknown key id, 400 for a bad body or query (every value is
checked, finite and in range, before anything is written), 503 `store_unavailable` when the store does not
answer within `state.store_timeout_s` (never a hang).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelyard.accounting.budgets import parse_duration
from modelyard.config.model import QueueSettings
from modelyard.schema.errors import GatewayError
from modelyard.server.access import MASTER_ID, has_admin_role
from modelyard.server.http import Request, send_json
from modelyard.server.validation import decode_body
from modelyard.state.key_limits import (
    MAX_PERIOD_S,
    MIN_PERIOD_S,
    budget_problem,
    rate_problem,
    timestamp_problem,
)
from modelyard.state.keys import KeyRecord
from modelyard.state.migrations import GROUPINGS
from modelyard.state.store import spend_report_body

if TYPE_CHECKING:
    from modelyard.server.access import Access
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext
    from modelyard.server.services import Services

KEYS_PATH = "/admin/keys"
QUEUES_PATH = "/admin/queues"
RELOAD_PATH = "/admin/reload"
ADMIN_BODY_LIMIT = 64 * 1024
_MAX_TEXT = 256  # a key's name, a model name, a metadata key
_MAX_VALUE = 4096  # a metadata value
_MAX_ITEMS = 256  # models, metadata entries
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Control characters (NUL first) have no place in names, and PostgreSQL's text cannot hold NUL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A key's longest queue wait may not exceed the gateway's own bound on `queue.max_wait_ms` (one hour).
MAX_QUEUE_MS = 3_600_000.0
_CLASS_FIELDS = ("priority", "max_priority")


def admin_gate(gw: Gateway) -> Services:
    """The services the admin API and the dashboard run on: 404 without them, 403 without a master key
    (both are off then)."""
    services = gw.services
    if services is None or services.access is None:
        raise GatewayError(404, "the admin API is not enabled on this gateway", code="not_found")
    if services.access.master_hash is None:
        raise GatewayError(
            403,
            "the admin API needs a master key (access.master_key or MODELYARD_MASTER_KEY)",
            type="permission_error",
            code="admin_disabled",
        )
    return services


async def _services(gw: Gateway, ctx: RequestContext) -> Services:
    """The admin API's services, for the master key or a key with `role: admin` (else 401)."""
    services = admin_gate(gw)
    access = services.access
    assert access is not None
    if await access.admin_subject(ctx.credential) is None:
        raise GatewayError(401, "the admin API needs the master key or a key with role admin", code="invalid_api_key")
    return services


def _optional(body: dict[str, Any], name: str, kind: type[int] | type[float], minimum: float | None = None) -> Any:
    """`body[name]` checked against `kind` (ints accepted for floats), finite and at least `minimum`; None when
    absent."""
    value: Any = body.get(name)
    if value is None:
        return None
    wrong = isinstance(value, bool) or not isinstance(value, int | float)
    if wrong or (kind is int and isinstance(value, float)):
        raise GatewayError(400, f"`{name}` must be {'an integer' if kind is int else 'a number'}", param=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise GatewayError(400, f"`{name}` must be a finite number", param=name)
    if minimum is not None and value < minimum:
        raise GatewayError(400, f"`{name}` must be at least {minimum:g}", param=name)
    try:
        return kind(value)
    except OverflowError:  # an integer beyond a float's range (JSON has no bound on digits)
        raise GatewayError(400, f"`{name}` is out of range", param=name) from None


def _checked(name: str, value: Any, problem: str | None) -> Any:
    if problem is not None:
        raise GatewayError(400, f"`{name}` {problem}", param=name)
    return value


def _text(name: str, value: str, limit: int = _MAX_TEXT) -> str:
    if len(value) > limit or _CONTROL.search(value):
        raise GatewayError(400, f"`{name}` must be at most {limit} characters, without control characters", param=name)
    return value


def _models(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [m.strip() for m in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise GatewayError(
            400, "`models` must be a list of model names (or one comma-separated string)", param="models"
        )
    if len(value) > _MAX_ITEMS:
        raise GatewayError(400, f"`models` may list at most {_MAX_ITEMS} names", param="models")
    return [_text("models", m) for m in value if m] or None


def _metadata(value: Any) -> dict[str, str]:
    metadata = value or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise GatewayError(400, "`metadata` must be an object of strings", param="metadata")
    if len(metadata) > _MAX_ITEMS:
        raise GatewayError(400, f"`metadata` may hold at most {_MAX_ITEMS} entries", param="metadata")
    for key, text in metadata.items():
        _text("metadata", key)
        _text("metadata", text, _MAX_VALUE)
    return metadata


def known_guardrails(metadata: dict[str, str], sets: Mapping[str, object]) -> None:
    """A key's `guardrails` metadata names sets the config has (a request with an unknown one would fail
    closed, so the mistake is refused here, when the key is made)."""
    named = [n.strip() for n in metadata.get("guardrails", "").split(",") if n.strip()]
    unknown = [n for n in named if n not in sets]
    if unknown:
        known = ", ".join(sorted(sets)) or "none configured"
        raise GatewayError(
            400, f"unknown guardrail set(s) {', '.join(unknown)} (known: {known})", param="metadata.guardrails"
        )


def _queue_metadata(body: dict[str, Any], metadata: dict[str, str], classes: Collection[str]) -> dict[str, str]:
    """The key's metadata with the body's top-level `priority`, `max_priority` and `max_queue_ms` folded in
    (they win over the same names in `metadata`), every one of them checked: class names against the
    config's `queue.classes`, the wait a finite number of milliseconds in (0, MAX_QUEUE_MS]."""
    merged = dict(metadata)
    for name in _CLASS_FIELDS:
        top = body.get(name)
        if top is not None:
            if not isinstance(top, str):
                raise GatewayError(400, f"`{name}` must be the name of a priority class", param=name)
            merged[name] = _class_name(name, top, classes, param=name)
        elif name in metadata:
            merged[name] = _class_name(name, metadata[name], classes, param=f"metadata.{name}")
    own, cap = merged.get("priority"), merged.get("max_priority")
    order = list(classes)  # highest first
    if own is not None and cap is not None and order.index(own) < order.index(cap):
        raise GatewayError(
            400,
            f"`priority` {own!r} is above `max_priority` {cap!r}: the key would never get its own class",
            param="priority",
        )
    wait = body.get("max_queue_ms")
    if wait is not None:
        merged["max_queue_ms"] = _format_ms(_queue_ms(wait, "max_queue_ms"))
    elif "max_queue_ms" in metadata:
        merged["max_queue_ms"] = _format_ms(_queue_ms(metadata["max_queue_ms"], "metadata.max_queue_ms"))
    return merged


def _class_name(name: str, value: str, classes: Collection[str], *, param: str) -> str:
    cleaned = value.strip()
    if cleaned not in classes:
        known = ", ".join(classes) or "none configured"
        shown = _CONTROL.sub("?", value[:64])
        raise GatewayError(400, f"`{name}`: unknown priority class {shown!r} (known: {known})", param=param)
    return cleaned


def _queue_ms(value: Any, param: str) -> float:
    """Milliseconds: a number (or, in metadata, its decimal text), finite, above 0 and at most MAX_QUEUE_MS."""
    problem = f"`{param}` must be a number of milliseconds above 0 and at most {MAX_QUEUE_MS:.0f}"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise GatewayError(400, problem, param=param)
    if isinstance(value, str):
        try:
            value = float(value.strip()) if len(value) <= 64 else math.nan
        except ValueError:
            raise GatewayError(400, problem, param=param) from None
    try:
        ms = float(value)
    except OverflowError:  # an integer beyond any float
        raise GatewayError(400, problem, param=param) from None
    if not math.isfinite(ms) or not 0 < ms <= MAX_QUEUE_MS:
        raise GatewayError(400, problem, param=param)
    return ms


def _format_ms(ms: float) -> str:
    return str(int(ms)) if ms.is_integer() else repr(ms)


def _duration(body: dict[str, Any], name: str, minimum: float) -> float | None:
    """`body[name]` as seconds ("30d", "12h", a number), between `minimum` and MAX_PERIOD_S; None when absent."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise GatewayError(400, f"`{name}` must be a duration (e.g. 30d, 12h, 90m) or seconds", param=name)
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise GatewayError(400, f"`{name}`: {exc}", param=name) from None
    if not math.isfinite(seconds) or not minimum <= seconds <= MAX_PERIOD_S:
        raise GatewayError(400, f"`{name}` must be between {minimum:g}s and {MAX_PERIOD_S / 86400:.0f}d", param=name)
    return seconds


def _expiry(body: dict[str, Any], now: float) -> float | None:
    """`expires_in` (a duration from now) or `expires_at` (unix time), checked; None when neither is given."""
    expires_in = _duration(body, "expires_in", 1.0)
    expires_at: float | None = now + expires_in if expires_in is not None else _optional(body, "expires_at", float)
    _checked("expires_in" if expires_in is not None else "expires_at", expires_at, timestamp_problem(expires_at))
    return expires_at


def _rate(body: dict[str, Any], name: str) -> int | None:
    rate: int | None = _optional(body, name, int, 1)
    _checked(name, rate, rate_problem(rate))
    return rate


def _budget(body: dict[str, Any]) -> float | None:
    budget: float | None = _optional(body, "budget_usd", float, 0)
    _checked("budget_usd", budget, budget_problem(budget))
    return budget


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GatewayError(400, "`name` is required", param="name")
    return _text("name", value).strip()


def key_options(body: dict[str, Any], now: float, classes: Collection[str]) -> dict[str, Any]:
    """Validated `new_key` options from a POST /admin/keys body: every value finite and in range; `classes`
    are the config's priority class names (`queue.classes`), highest first."""
    period = _duration(body, "period", MIN_PERIOD_S)
    expires_at = _expiry(body, now)
    return {
        "models": _models(body.get("models")),
        "rpm": _rate(body, "rpm"),
        "tpm": _rate(body, "tpm"),
        "budget_usd": _budget(body),
        "period_s": period if period is not None else 30 * 86400.0,
        "expires_at": expires_at,
        "metadata": _queue_metadata(body, _metadata(body.get("metadata")), classes),
        "now": now,
    }


#: What a PATCH /admin/keys/{id} body may name (anything else is a 400: a misspelt field is not ignored).
PATCH_FIELDS = frozenset(
    (
        "name",
        "models",
        "rpm",
        "tpm",
        "budget_usd",
        "period",
        "expires_in",
        "expires_at",
        "metadata",
        *_CLASS_FIELDS,
        "max_queue_ms",
    )
)


def key_changes(body: dict[str, Any], before: KeyRecord, now: float, classes: Collection[str]) -> dict[str, Any]:
    """The `Store.update_key` changes a PATCH body asks for, each checked by the same rule as POST's (`null`
    clears a limit, an expiry, or the models list; `period: null` is the default 30d). `metadata` merges
    into the key's (a `null` value removes that entry; `metadata: null` removes every entry); the queue
    fields at the top level win over it, as in POST, and `null` removes them."""
    unknown = sorted(set(body) - PATCH_FIELDS)
    if unknown:
        shown = ", ".join(_CONTROL.sub("?", name[:64]) for name in unknown[:5])
        raise GatewayError(
            400, f"unknown field(s) {shown} (a key's {', '.join(sorted(PATCH_FIELDS))})", param=unknown[0][:64]
        )
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _name(body["name"])
    if "models" in body:
        changes["models"] = _models(body["models"])
    for rate in ("rpm", "tpm"):
        if rate in body:
            changes[rate] = _rate(body, rate)
    if "budget_usd" in body:
        changes["budget_usd"] = _budget(body)
    if "period" in body:
        changes["period_s"] = _duration(body, "period", MIN_PERIOD_S)
    if "expires_in" in body and "expires_at" in body:
        raise GatewayError(400, "give `expires_in` or `expires_at`, not both", param="expires_in")
    if "expires_in" in body or "expires_at" in body:
        changes["expires_at"] = _expiry(body, now)
    if "metadata" in body or any(f in body for f in (*_CLASS_FIELDS, "max_queue_ms")):
        changes["metadata"] = _patched_metadata(body, before.metadata, classes)
    return changes


def _patched_metadata(body: dict[str, Any], metadata: dict[str, str], classes: Collection[str]) -> dict[str, str]:
    """A key's metadata after a PATCH body: `metadata` merged in (RFC 7396: a null value removes the entry, a
    null `metadata` every entry), then the top-level queue fields (null removes), all checked as in POST."""
    patch = body.get("metadata")
    if patch is not None and not isinstance(patch, dict):
        raise GatewayError(400, "`metadata` must be an object of strings", param="metadata")
    merged = {} if "metadata" in body and patch is None else dict(metadata)
    for name, value in (patch or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    for name in (*_CLASS_FIELDS, "max_queue_ms"):
        if name in body and body[name] is None:
            merged.pop(name, None)
    return _queue_metadata(body, _metadata(merged), classes)


def grants_admin(before: KeyRecord | None, metadata: Mapping[str, str] | None) -> bool:
    """Whether writing `metadata` makes a key an admin that was not one (only the master key may)."""
    if metadata is None or not has_admin_role(dict(metadata)):
        return False
    return before is None or not has_admin_role(before.metadata)


def admin_changing() -> GatewayError:
    """A role-admin key editing or revoking an admin key (its own included): the master key's to do."""
    return GatewayError(
        403,
        "only the master key may change or revoke an admin key (a role-admin key cannot lift its own or another "
        "admin's limits, nor revoke another admin)",
        type="permission_error",
        code="admin_role_denied",
    )


def admin_minting() -> GatewayError:
    return GatewayError(
        403,
        "only the master key may give a key the admin role (metadata role: admin)",
        type="permission_error",
        param="metadata.role",
        code="admin_role_denied",
    )


async def subject_services(gw: Gateway, ctx: RequestContext) -> tuple[Services, str]:
    """The admin API's services and who calls: `master`, or the id of a key with role admin (else 401)."""
    services = admin_gate(gw)
    access = services.access
    assert access is not None
    subject = await access.admin_subject(ctx.credential)
    if subject is None:
        raise GatewayError(401, "the admin API needs the master key or a key with role admin", code="invalid_api_key")
    return services, subject


def _access(gw: Gateway) -> Access:
    access = admin_gate(gw).access
    assert access is not None
    return access


async def create_key_data(gw: Gateway, body: dict[str, Any], *, master: bool) -> dict[str, Any]:
    """Make a key from a POST body (every value checked before anything is written): its record and `key`,
    the raw key, which exists only in this answer. Only the master key may make an admin key."""
    name = _name(body.get("name"))
    access = _access(gw)
    options = key_options(body, access.clock(), class_names(gw.config.queue))
    known_guardrails(options["metadata"], gw.config.guardrails)
    if not master and grants_admin(None, options["metadata"]):
        raise admin_minting()
    raw, record = await access.store_guard.call(access.create_key(name, **options))
    return {**record.public(), "key": raw}


async def keys_data(gw: Gateway, *, include_revoked: bool = False) -> dict[str, Any]:
    """Every key (revoked ones too when asked), newest first as the store lists them, each with its current
    budget period's spend (read concurrently, a few at a time: bounded by the counters' and store's timeouts)."""
    access = _access(gw)
    records = await access.store_guard.call(access.store.list_keys(include_revoked=include_revoked))
    limit = asyncio.Semaphore(8)

    async def spend_of(record: KeyRecord) -> dict[str, float] | None:
        async with limit:
            return await access.key_spend(record)

    spends = await asyncio.gather(*(spend_of(r) for r in records))
    data = []
    for record, spent in zip(records, spends, strict=True):
        entry = record.public()
        entry["spend"] = spent
        data.append(entry)
    return {"object": "list", "data": data}


async def key_record(gw: Gateway, key_id: str) -> KeyRecord:
    """The key with this id (revoked ones included), or a 404."""
    if not _KEY_ID.match(key_id):
        raise GatewayError(404, f"no key with id `{_CONTROL.sub('?', key_id[:64])}`", code="key_not_found")
    access = _access(gw)
    record = await access.store_guard.call(access.store.get_key(key_id))
    if record is None:
        raise GatewayError(404, f"no key with id `{key_id}`", code="key_not_found")
    return record


async def revoke_key_data(gw: Gateway, key_id: str, *, master: bool) -> dict[str, Any]:
    """Revoke a key: at once on this replica, within `access.refresh_s` on the others; an admin key only by
    the master key (403)."""
    record = await key_record(gw, key_id)
    if not master and has_admin_role(record.metadata):
        raise admin_changing()
    access = _access(gw)
    revoked = await access.store_guard.call(access.revoke_key(key_id))
    return {"id": key_id, "revoked": True, "already_revoked": not revoked}


async def create_key(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    _, subject = await subject_services(gw, ctx)
    body = decode_body(await request.body(ADMIN_BODY_LIMIT))
    await send_json(request.send, 200, await create_key_data(gw, body, master=subject == MASTER_ID))


async def list_keys(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    include_revoked = request.query.get("all", "").lower() in ("1", "true", "yes")
    await send_json(request.send, 200, await keys_data(gw, include_revoked=include_revoked))


async def revoke_key(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    _, subject = await subject_services(gw, ctx)
    key_id = request.path[len(KEYS_PATH) + 1 :]
    await send_json(request.send, 200, await revoke_key_data(gw, key_id, master=subject == MASTER_ID))


async def queues(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    """The admission queues of this replica now (each replica has its own; docs/queueing.md)."""
    await _services(gw, ctx)
    await send_json(request.send, 200, gw.router.admission.snapshot())


def class_names(settings: QueueSettings) -> list[str]:
    """The priority classes a key may name, highest first."""
    return [c.name for c in settings.classes]


def parse_since(text: str | None, now: float) -> float:
    """`7d`, `24h`, … before now; `all` (or nothing but `since=0`) for everything."""
    if text is None or text == "":
        return now - 7 * 86400.0
    if text in ("all", "0"):
        return 0.0
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise GatewayError(400, f"invalid `since` {text[:64]!r} (write e.g. 7d, 24h or all)", param="since") from None
    if not math.isfinite(seconds) or seconds > MAX_PERIOD_S:
        raise GatewayError(
            400, f"`since` may reach back at most {MAX_PERIOD_S / 86400:.0f}d (or write all)", param="since"
        )
    return max(0.0, now - seconds)


async def spend(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    services = await _services(gw, ctx)
    query = request.query
    by = query.get("by", "model")
    if by not in GROUPINGS:
        raise GatewayError(400, f"`by` must be one of {', '.join(GROUPINGS)}", param="by")
    now = time.time()
    since = parse_since(query.get("since"), now)
    access = services.access
    assert access is not None
    guard = access.store_guard
    if services.spend is not None and not guard.down:  # include the requests still in the writer's queue
        await services.spend.flush(timeout_s=guard.timeout_s)
    rows = await guard.call(services.store.spend_report(by, since))
    body = spend_report_body(by, rows)
    await send_json(
        request.send,
        200,
        {"object": "spend_report", **body, "since": datetime.fromtimestamp(since, UTC).isoformat()},
    )


async def reload(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    reloader = gw.root.reloader
    assert reloader is not None  # every root gateway has one
    result = await reloader.reload("POST /admin/reload")
    body = result.as_dict()
    if not result.ok:
        message = "the config was not reloaded (the old one stays): " + "; ".join(result.errors)
        error = GatewayError(422, message, code="config_invalid").to_body()
        await send_json(request.send, 422, {**error, "reload": body})
        return
    await send_json(request.send, 200, body)


async def last_reload(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    reloader = gw.root.reloader
    assert reloader is not None
    last = reloader.last
    await send_json(
        request.send,
        200,
        {
            "generation": reloader.generation,
            "replica": gw.root.control.replica if gw.root.control is not None else None,
            "source": gw.root.current.config.source,
            "reloads": {"ok": reloader.ok, "failed": reloader.failed},
            "last": last.as_dict() if last is not None else None,
        },
    )
