"""`POST /v1/feedback`: a client's verdict on an answer, stored for retraining and recalibration.

The route is keyed (server/app.py checks the key from the headers before the body is read). The body is
small (16 KiB at most) and checked strictly: a request id, exactly one of a finite `score` in [0, 1] or
`thumbs` up/down, an optional printable label of at most 200 characters; nothing else.

Whose request is it? The process's spend writer knows the requests it committed lately (`RecentRequests`,
no store read); otherwise the store's spend row says, and a row another replica has not flushed yet is
waited for (a few reads within `wait_s`: twice the spend writer's flush interval, at most 2 s). Only the key
that made the request, the master key or an admin key may give feedback on it (anyone, in open mode). An
unknown id and another key's id get the same 404 after the same wait, so the endpoint tells nobody whether
another tenant's request exists; the waits are capped (`max_waiting` at once, beyond which every 404 is
immediate for both) so a flood of bad ids cannot pile up store reads. Store trouble is the usual retryable 503.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import TYPE_CHECKING

import msgspec

from modelyard.providers.base import new_id
from modelyard.schema.errors import GatewayError, bad_request
from modelyard.server.access import MASTER_ID
from modelyard.server.http import Request, send_json
from modelyard.state.feedback import FeedbackRecord, FeedbackSource

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

PATH = "/v1/feedback"
#: The largest body accepted (a verdict is a few hundred bytes).
MAX_BODY = 16 * 1024
MAX_LABEL = 200
#: A request id as the gateway makes them (`req_…`), with room for other id schemes; nothing else is looked up.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_FIELDS = frozenset({"request_id", "score", "thumbs", "label"})
_THUMBS = {"up": 1.0, "down": 0.0}
#: The longest a lookup waits for a spend row another replica has not flushed yet.
MAX_WAIT_S = 2.0


def feedback_wait(flush_interval_s: float) -> float:
    """How long to wait for another replica's row: its spend writer flushes a partial batch every
    `flush_interval_s`, so twice that covers the batch wait and the write (at most MAX_WAIT_S, at least 0.1 s)."""
    return min(MAX_WAIT_S, max(0.1, 2.0 * flush_interval_s))


class Verdict(msgspec.Struct, frozen=True):
    """A checked feedback body."""

    request_id: str
    score: float
    label: str | None


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    """The body as decoded: typed, so a hostile value (a 100,000-deep array, a bool for a number) is refused by
    the decoder where it stands, without building it."""

    request_id: str
    score: float | None = None
    thumbs: str | None = None
    label: str | None = None


_decode = msgspec.json.Decoder(_Body).decode
_AT_FIELD = re.compile(r"`\$\.(\w{1,64})")
_NAMED_FIELD = re.compile(r"field `(\w{1,64})`")


def parse_verdict(body: bytes) -> Verdict:
    """The body as a `Verdict`, or a 400 naming the field at fault (`param`)."""
    try:
        data = _decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except (msgspec.DecodeError, RecursionError):
        raise bad_request("The body must be a JSON object.", param="body") from None
    if _REQUEST_ID.fullmatch(data.request_id) is None:
        raise bad_request("request_id must be the x-request-id of an answer (e.g. req_…).", param="request_id")
    return Verdict(data.request_id, _score(data), _label(data.label))


def _invalid(reason: str) -> GatewayError:
    """A 400 for what the typed decoder refused, naming the field (`$.score`, or the unknown/missing one)."""
    found = _AT_FIELD.search(reason) or _NAMED_FIELD.search(reason)
    param = found.group(1) if found else "body"
    if param not in _FIELDS:
        return bad_request(f"Unknown field {param!r}: feedback takes request_id, score or thumbs, label.", param=param)
    if param == "request_id":
        return bad_request("request_id must be the x-request-id of an answer (e.g. req_…).", param=param)
    if param == "score":
        return bad_request("score must be a finite number in [0, 1].", param=param)
    if param == "thumbs":
        return bad_request('thumbs must be "up" or "down".', param=param)
    return bad_request(f"label must be text of at most {MAX_LABEL} printable characters.", param=param)


def _score(data: _Body) -> float:
    if (data.score is None) == (data.thumbs is None):
        raise bad_request("Give exactly one of score (a number in [0, 1]) or thumbs (up or down).", param="score")
    if data.thumbs is not None:
        if data.thumbs not in _THUMBS:
            raise bad_request('thumbs must be "up" or "down".', param="thumbs")
        return _THUMBS[data.thumbs]
    value = float(data.score)  # type: ignore[arg-type]
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise bad_request("score must be a finite number in [0, 1].", param="score")
    return value


def _label(label: str | None) -> str | None:
    if label is None:
        return None
    if len(label) > MAX_LABEL or not label.isprintable():
        raise bad_request(
            f"label must be text of at most {MAX_LABEL} printable characters (no control characters).", param="label"
        )
    return label


def not_found() -> GatewayError:
    """The one answer for an id that is unknown or not the caller's (no oracle for other tenants' ids)."""
    return GatewayError(
        404, "No request with this id was found for this key.", param="request_id", code="request_not_found"
    )


class FeedbackRoute:
    """The handler (one per gateway generation): owns the cap on concurrent waits for unflushed rows."""

    def __init__(self, *, wait_s: float = MAX_WAIT_S, first_poll_s: float = 0.05, max_waiting: int = 64) -> None:
        self.wait_s = wait_s
        self.first_poll_s = first_poll_s
        self.max_waiting = max_waiting
        self.waiting = 0
        #: Feedback stored, and refused with 404, since start (tests and the operator's curiosity).
        self.accepted = 0
        self.not_found = 0

    async def __call__(self, gw: Gateway, request: Request, ctx: RequestContext) -> None:
        body = await request.body(MAX_BODY)
        verdict = parse_verdict(body)
        services = gw.services
        access = gw.access
        if services is None or access is None:
            raise not_found()  # no store: no request can be found
        source, sender = _sender(ctx, open_mode=access.open)
        if not await self._owned(gw, verdict.request_id, None if source == "admin" or access.open else sender):
            self.not_found += 1
            raise not_found()
        now = time.time()
        record = FeedbackRecord(
            id=new_id("fb_"),
            request_id=verdict.request_id,
            at=now,
            score=verdict.score,
            source=source,
            key_id=None if source == "admin" else sender,
            label=verdict.label,
        )
        await access.store_guard.call(services.store.write_feedback([record]))
        self.accepted += 1
        answer = {
            "id": record.id,
            "object": "feedback",
            "request_id": record.request_id,
            "score": record.score,
            "label": record.label,
            "created_at": int(now),
        }
        await send_json(request.send, 200, answer, [(b"x-request-id", ctx.request_id.encode())])

    async def _owned(self, gw: Gateway, request_id: str, owner: str | None) -> bool:
        """Whether the request exists and, when `owner` is given, was made by that key.

        An id of another key is treated exactly like an unknown one from the moment it is found: the same
        store reads at the same pace until the same deadline (when a wait slot is free), so neither the time
        of the 404 nor a store outage (a 503 from those reads) tells the two apart."""
        services = gw.services
        access = gw.access
        assert services is not None and access is not None
        spend = services.spend
        deadline = time.monotonic() + self.wait_s
        may_wait = self.waiting < self.max_waiting
        if may_wait:
            self.waiting += 1
        try:
            pause = self.first_poll_s
            foreign = False
            while True:
                if not foreign and spend is not None:
                    known, key_id = spend.recent.lookup(request_id)
                    if known and (owner is None or key_id == owner):
                        return True
                    foreign = known
                row = await access.store_guard.call(services.store.get_spend(request_id))
                if row is not None and not foreign:
                    if owner is None or row.key_id == owner:
                        return True
                    foreign = True
                left = deadline - time.monotonic()
                if not may_wait or left <= 0:
                    return False
                await asyncio.sleep(min(pause, left))
                pause *= 2
        finally:
            if may_wait:
                self.waiting -= 1


def _sender(ctx: RequestContext, *, open_mode: bool) -> tuple[FeedbackSource, str | None]:
    """("admin", key id) for the master key and admin keys (they may rate any request), else ("key", key id);
    in open mode ("key", None)."""
    key = ctx.key
    if open_mode or key is None:
        return "key", None
    if key.id == MASTER_ID or key.admin:
        return "admin", key.id
    return "key", key.id
