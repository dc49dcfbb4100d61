"""The simulator's Batch APIs: OpenAI's files + batches and Anthropic's message batches.

OpenAI: ``POST /v1/files`` (multipart, ``purpose=batch``, a JSONL of ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body"}``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
``DELETE /v1/files/{id}``, ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window: "24h"``,
``metadata``), ``GET /v1/batches/{id}``, ``GET /v1/batches?limit&after``, ``POST /v1/batches/{id}/cancel``.

Anthropic: ``POST /v1/messages/batches`` (``requests: [{custom_id, params}]``), ``GET /v1/messages/batches/{id}``,
``GET /v1/messages/batches?limit&after_id``, ``GET /v1/messages/batches/{id}/results``, ``POST .../cancel``.

A batch ends its completion delay after it was created: ``x-sim-batch-delay-s`` on the create request, else
``$MODELYARD_SIM_BATCH_DELAY_S``, else 1 s. It is answered when it is next read after that (a poll, a list, its
results): each request exactly as the same model answers it live (the same behaviour, the same seeded RNG,
counted in the model's request stats and in ``GET /_sim/requests/{model}``), without faults, latency or rate
limits. ``x-sim-batch-expire: N`` on the create request makes its last N requests expire (the 24-hour window,
simulated). Credentials are checked as on the chat routes. Everything is bounded per simulator (`BatchLimits`).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgspec

from modelyard.sim import asgi
from modelyard.sim.asgi import Receive, Scope, Send
from modelyard.sim.behaviour import cached_tokens, generate
from modelyard.sim.faults import ttft_seconds
from modelyard.sim.shapes import Answer, BadRequest, Wire, decode_object

if TYPE_CHECKING:
    from modelyard.sim.app import SimApp

__all__ = ["DELAY_ENV", "BatchLimits", "BatchState", "batch_state", "claims", "handle"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
DELAY_ENV = "MODELYARD_SIM_BATCH_DELAY_S"
_DELAY_HEADER = b"x-sim-batch-delay-s"
_EXPIRE_HEADER = b"x-sim-batch-expire"
_STATE_KEY = "batch_api"
_CHAT = "/v1/chat/completions"
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_ERRORS = 100
_WINDOW_S = 24 * 3600
_YIELD_EVERY = 256


@dataclass
class BatchLimits:
    """What one simulator keeps at most (a request over a bound is refused in the provider's error shape)."""

    max_files: int = 1000
    max_file_bytes: int = 100 * 2**20
    max_total_bytes: int = 2**30
    max_batches: int = 1000
    max_openai_requests: int = 50_000
    max_anthropic_requests: int = 100_000


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(slots=True)
class _Outcome:
    """One request's fate: answered (`status`, `payload`: the wire's answer or error body) or not."""

    custom_id: str
    status: int
    payload: bytes | None
    unanswered: str | None = None  # "expired" | "canceled"


@dataclass
class _Job:
    """One batch of either API, from creation to its results."""

    id: str
    fmt: str  # "openai" | "anthropic"
    created_at: float
    ready_at: float
    requests: list[tuple[str, bytes]]
    expire: int = 0
    metadata: dict[str, str] | None = None
    input_file_id: str = ""
    endpoint: str = _CHAT
    errors: list[dict[str, Any]] = field(default_factory=list)
    status: str = "in_progress"
    cancel_at: float | None = None
    ended_at: float | None = None
    processing: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: bytes | None = None

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


class BatchState:
    """One simulator's files and batches (kept in `SimApp.cloud_state`)."""

    def __init__(self, limits: BatchLimits | None = None, delay_s: float | None = None) -> None:
        self.limits = limits or BatchLimits()
        self.delay_s = delay_s if delay_s is not None else _env_delay()
        self.files: dict[str, _File] = {}
        self.jobs: dict[str, _Job] = {}
        self.total_bytes = 0

    def add_file(self, filename: str, purpose: str, data: bytes, *, output: bool = False) -> _File:
        """Keep an upload (refused over the bounds) or a batch's output file (`output`: always kept, as its
        batch's answers must not be lost; its bytes count toward the next upload's bound)."""
        limits = self.limits
        full = len(self.files) >= limits.max_files or self.total_bytes + len(data) > limits.max_total_bytes
        if full and not output:
            raise _Refused(400, "The simulator's file storage is full; delete files first.")
        stored = _File(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        self.total_bytes += len(data)
        return stored

    def drop_file(self, file_id: str | None) -> bool:
        stored = self.files.pop(file_id, None) if file_id else None
        if stored is None:
            return False
        self.total_bytes -= len(stored.data)
        return True

    def add_job(self, job: _Job) -> None:
        """Keep `job`; at the bound the oldest ended batch (and its output files) makes room."""
        if len(self.jobs) >= self.limits.max_batches:
            oldest = next((j for j in self.jobs.values() if j.ended), None)
            if oldest is None:
                raise _Refused(429, "Too many batches in progress on this simulator.", "rate_limit")
            del self.jobs[oldest.id]
            self.drop_file(oldest.output_file_id)
            self.drop_file(oldest.error_file_id)
        self.jobs[job.id] = job


def batch_state(app: SimApp) -> BatchState:
    """The app's batch state (created on first use)."""
    state = app.cloud_state.get(_STATE_KEY)
    if not isinstance(state, BatchState):
        state = app.cloud_state[_STATE_KEY] = BatchState()
    return state


def _env_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(DELAY_ENV, "1")))
    except ValueError:
        return 1.0


class _Refused(Exception):
    """A request answered with an error: its status, message and kind (mapped to each API's error type)."""

    def __init__(self, status: int, message: str, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


_OPENAI_TYPES = {"bad_request": "invalid_request_error", "auth": "invalid_request_error", "rate_limit": "rate_limit"}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def _error_body(anthropic: bool, refused: _Refused) -> bytes:
    if anthropic:
        kind = _ANTHROPIC_TYPES.get(refused.status, "api_error")
        return _encode({"type": "error", "error": {"type": kind, "message": refused.message}})
    kind = _OPENAI_TYPES.get(refused.kind, "invalid_request_error")
    return _encode({"error": {"message": refused.message, "type": kind, "param": None, "code": None}})


def claims(method: str, path: str) -> bool:
    """Whether this module serves the request."""
    return path.startswith(("/v1/files", "/v1/batches", "/v1/messages/batches")) and method in ("GET", "POST", "DELETE")


async def handle(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    """One files or batches request of either API, answered in that API's shape."""
    from modelyard.sim.app import _read_headers  # the app imports this module: read at call time

    path: str = scope["path"].rstrip("/")
    anthropic = path.startswith("/v1/messages/batches")
    try:
        if not app._authorised(_read_headers(scope), scope):
            message = "invalid x-api-key" if anthropic else "Incorrect API key provided."
            raise _Refused(401, message, "auth")
        state = batch_state(app)
        if anthropic:
            status, body, kind = await _anthropic(app, state, scope, receive, path)
        else:
            status, body, kind = await _openai(app, state, scope, receive, path)
    except _Refused as refused:
        app.stats.rejected += 1
        return await asgi.respond(send, refused.status, _error_body(anthropic, refused))
    await asgi.respond(send, status, body, content_type=kind)


# ----------------------------------------------------------------------------- shared


async def _read_bounded(receive: Receive, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"The request is larger than the simulator's limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _delay_and_expire(state: BatchState, scope: Scope, requests: int) -> tuple[float, int]:
    delay, expire = state.delay_s, 0
    try:
        text = _header(scope, _DELAY_HEADER)
        if text is not None:
            delay = max(0.0, float(text))
        text = _header(scope, _EXPIRE_HEADER)
        if text is not None:
            expire = min(requests, max(0, int(text)))
    except ValueError:
        raise _Refused(400, "x-sim-batch-delay-s must be a number and x-sim-batch-expire an integer") from None
    return delay, expire


def _query(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


def _limit(query: dict[str, str]) -> int:
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise _Refused(400, "limit must be an integer") from None
    if not 1 <= limit <= 1000:
        raise _Refused(400, "limit must be between 1 and 1000")
    return limit


def _page(jobs: list[_Job], after: str | None, limit: int) -> tuple[list[_Job], bool]:
    """Newest first, starting after the job `after` (the last id of the previous page)."""
    newest = list(reversed(jobs))
    if after:
        ids = [j.id for j in newest]
        newest = newest[ids.index(after) + 1 :] if after in ids else []
    return newest[:limit], len(newest) > limit


def _answer_one(app: SimApp, wire: Wire, body: bytes) -> tuple[int, bytes]:
    """One batched request answered as the model answers it live (behaviour, RNG, stats), without faults."""
    try:
        ask = wire.parse_chat(body, None)
    except BadRequest as exc:
        return wire.error("bad_request", str(exc))
    facts: dict[str, Any] = {"detail": "", "model": ask.model, "retry": ""}
    if ask.stream:
        facts["detail"] = "stream is not supported in a batch request"
        return wire.error("bad_request", wire.messages["bad_request"].format(**facts))
    app.received.record(ask.model, _CHAT if wire.name == "openai" else "/v1/messages", [], body)
    model = app.models.get(ask.model)
    if model is None:
        return wire.error("not_found", wire.messages["not_found"].format(**facts))
    if model.kind != "chat":
        facts["detail"] = f"`{model.name}` is not a chat model"
        return wire.error("bad_request", wire.messages["bad_request"].format(**facts))
    if ask.prompt_tokens > model.context_window:
        facts.update(prompt=ask.prompt_tokens, limit=model.context_window)
        return wire.error("context_length", wire.messages["context_length"].format(**facts))
    stats = app.stats.model(model.name)
    stats.admitted(time.monotonic())
    stats.requests += 1
    stats.by_wire[wire.name] = stats.by_wire.get(wire.name, 0) + 1
    rng = app._rng(model.name, body)
    rng.random()  # the draws a live call makes before it answers (its fault, its latency): the same answers
    ttft_seconds(model, rng)
    replies = [generate(ask, model, rng, app.answer_keys) for _ in range(ask.n)]
    key = f"{rng.getrandbits(96):024x}"
    answer = Answer(
        ask, replies, key, int(time.time()), ask.prompt_tokens, cached_tokens(ask.prompt_tokens, model, rng)
    )
    app._succeeded(stats, answer.prompt_tokens, answer.completion_tokens)
    return 200, wire.completion(answer)


async def _advance(app: SimApp, state: BatchState, job: _Job) -> None:
    """Answer `job` once its delay has passed (or cancel it); a no-op while it waits or once it has ended."""
    if job.ended or job.processing:
        return
    now = time.time()
    cancelled = job.cancel_at is not None
    if not cancelled and now < job.ready_at:
        return
    job.processing = True
    try:
        wire: Wire = app.anthropic if job.fmt == "anthropic" else app.openai
        outcomes: list[_Outcome] = []
        answered = 0 if cancelled else len(job.requests) - job.expire
        for i, (custom_id, body) in enumerate(job.requests):
            if i < answered:
                status, payload = _answer_one(app, wire, body)
                outcomes.append(_Outcome(custom_id, status, payload))
            else:
                outcomes.append(_Outcome(custom_id, 0, None, "canceled" if cancelled else "expired"))
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
        if job.fmt == "anthropic":
            _finish_anthropic(job, outcomes)
        else:
            _finish_openai(state, job, outcomes, cancelled)
        job.requests = []
        job.ended_at = time.time()
    finally:
        job.processing = False


# ----------------------------------------------------------------------------- OpenAI


async def _openai(
    app: SimApp, state: BatchState, scope: Scope, receive: Receive, path: str
) -> tuple[int, bytes, bytes]:
    method: str = scope["method"]
    parts = path.split("/")[2:]  # ["files", id, "content"] or ["batches", id, "cancel"]
    if parts[0] == "files":
        return await _openai_files(state, scope, receive, method, parts[1:])
    if parts[0] != "batches":
        raise _Refused(404, f"Unknown request URL: {method} {path}.", "not_found")
    if method == "POST" and len(parts) == 1:
        return (
            200,
            _encode(_openai_create(state, scope, decode_object_or_refuse(await _read_bounded(receive, 2**20)))),
            asgi.JSON_TYPE,
        )
    if method == "GET" and len(parts) == 1:
        query = _query(scope)
        for job in list(state.jobs.values()):
            await _advance(app, state, job)
        jobs = [j for j in state.jobs.values() if j.fmt == "openai"]
        page, more = _page(jobs, query.get("after"), _limit(query))
        data = [_openai_batch(j) for j in page]
        first, last = (page[0].id, page[-1].id) if page else (None, None)
        listing = {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}
        return 200, _encode(listing), asgi.JSON_TYPE
    found = state.jobs.get(parts[1]) if len(parts) > 1 else None
    if found is None or found.fmt != "openai":
        raise _Refused(404, f"No batch found with id '{parts[1] if len(parts) > 1 else ''}'.", "not_found")
    job = found
    if method == "POST" and parts[2:] == ["cancel"]:
        if not job.ended and job.cancel_at is None:
            job.cancel_at = time.time()
            job.status = "cancelling"
            answer = _openai_batch(job)
            await _advance(app, state, job)
            return 200, _encode(answer), asgi.JSON_TYPE
        return 200, _encode(_openai_batch(job)), asgi.JSON_TYPE
    if method == "GET" and len(parts) == 2:
        await _advance(app, state, job)
        return 200, _encode(_openai_batch(job)), asgi.JSON_TYPE
    raise _Refused(404, f"Unknown request URL: {method} {path}.", "not_found")


def decode_object_or_refuse(body: bytes) -> dict[str, Any]:
    try:
        return decode_object(body)
    except BadRequest as exc:
        raise _Refused(400, str(exc)) from None


async def _openai_files(
    state: BatchState, scope: Scope, receive: Receive, method: str, parts: list[str]
) -> tuple[int, bytes, bytes]:
    if method == "POST" and not parts:
        from modelyard.sim.media import parse_form

        body = await _read_bounded(receive, state.limits.max_file_bytes + 64 * 1024)
        content_type = _header(scope, b"content-type") or ""
        try:
            fields, upload = parse_form(content_type.encode("latin-1"), body)
        except BadRequest as exc:
            raise _Refused(400, str(exc)) from None
        if upload is None:
            raise _Refused(400, "Missing required parameter: 'file'.")
        if fields.get("purpose") != "batch":
            raise _Refused(400, "The simulator accepts files of purpose 'batch' only.")
        if len(upload.data) > state.limits.max_file_bytes:
            raise _Refused(400, f"File is too large: the limit is {state.limits.max_file_bytes} bytes.")
        return 200, _encode(state.add_file(upload.filename, "batch", upload.data).describe()), asgi.JSON_TYPE
    stored = state.files.get(parts[0]) if parts else None
    if stored is None:
        raise _Refused(404, f"No such File object: {parts[0] if parts else ''}", "not_found")
    if method == "GET" and len(parts) == 1:
        return 200, _encode(stored.describe()), asgi.JSON_TYPE
    if method == "GET" and parts[1:] == ["content"]:
        return 200, stored.data, b"application/octet-stream"
    if method == "DELETE" and len(parts) == 1:
        state.drop_file(stored.id)
        return 200, _encode({"id": stored.id, "object": "file", "deleted": True}), asgi.JSON_TYPE
    raise _Refused(404, f"Unknown request URL: {method} /v1/files/{'/'.join(parts)}.", "not_found")


def _openai_create(state: BatchState, scope: Scope, body: dict[str, Any]) -> dict[str, Any]:
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise _Refused(400, "Missing required parameter: 'input_file_id'.")
    endpoint = body.get("endpoint")
    if endpoint != _CHAT:
        raise _Refused(400, f"Invalid value for 'endpoint': the simulator batches {_CHAT} only.")
    if body.get("completion_window") != "24h":
        raise _Refused(400, "Invalid value for 'completion_window': supported values are: '24h'.")
    metadata = body.get("metadata")
    if metadata is not None and not _valid_metadata(metadata):
        raise _Refused(400, "Invalid 'metadata': at most 16 string pairs, keys <= 64 and values <= 512 characters.")
    stored = state.files.get(file_id)
    if stored is None:
        raise _Refused(404, f"No such File object: {file_id}", "not_found")
    if stored.purpose != "batch":
        raise _Refused(400, f"File {file_id} does not have purpose 'batch'.")
    requests, errors = _read_input(stored.data, state.limits.max_openai_requests)
    delay, expire = _delay_and_expire(state, scope, len(requests))
    now = time.time()
    job = _Job(f"batch_{uuid.uuid4().hex[:24]}", "openai", now, now + delay, requests, expire, metadata, file_id)
    if errors:
        job.errors, job.status, job.ended_at, job.requests = errors, "failed", now, []
        job.counts = {"total": 0, "completed": 0, "failed": 0}
    else:
        job.counts = {"total": len(requests), "completed": 0, "failed": 0}
    state.add_job(job)
    created = _openai_batch(job)
    if not errors:
        created["status"] = "validating"
    return created


def _valid_metadata(metadata: Any) -> bool:
    if not isinstance(metadata, dict) or len(metadata) > 16:
        return False
    return all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
    )


def _read_input(data: bytes, most: int) -> tuple[list[tuple[str, bytes]], list[dict[str, Any]]]:
    """The file's requests, or the reasons it fails validation (OpenAI's `errors.data`, by line)."""
    requests: list[tuple[str, bytes]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        problem, custom_id, body = _input_line(line, seen)
        if problem is None and isinstance(body.get("model"), str):
            models.add(body["model"])
            if len(models) > 1:
                problem = "All requests in a batch must use the same model."
        if problem is not None:
            errors.append({"code": "invalid_request", "message": problem, "param": None, "line": number})
            if len(errors) >= _MAX_ERRORS:
                break
            continue
        seen.add(custom_id)
        requests.append((custom_id, _encode(body)))
        if len(requests) > most:
            message = f"The batch has more than {most} requests."
            return [], [{"code": "too_many_requests", "message": message, "param": None, "line": number}]
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "The input file has no requests.", "param": None, "line": None})
    return requests, errors


def _input_line(line: bytes, seen: set[str]) -> tuple[str | None, str, dict[str, Any]]:
    try:
        item = _decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "The line is not valid JSON.", "", {}
    if not isinstance(item, dict):
        return "The line must be a JSON object.", "", {}
    custom_id, body = item.get("custom_id"), item.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return "Missing required parameter: 'custom_id'.", "", {}
    if custom_id in seen:
        return f"The custom_id '{custom_id[:64]}' is not unique.", "", {}
    if item.get("method") != "POST":
        return "Invalid value for 'method': only 'POST' is supported.", "", {}
    if item.get("url") != _CHAT:
        return f"The url must match the batch's endpoint {_CHAT}.", "", {}
    if not isinstance(body, dict):
        return "Missing required parameter: 'body'.", "", {}
    return None, custom_id, body


def _openai_batch(job: _Job) -> dict[str, Any]:
    ended = int(job.ended_at) if job.ended_at is not None else None
    status = job.status
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "errors": {"object": "list", "data": job.errors} if job.errors else None,
        "input_file_id": job.input_file_id,
        "completion_window": "24h",
        "status": status,
        "output_file_id": job.output_file_id,
        "error_file_id": job.error_file_id,
        "created_at": int(job.created_at),
        "in_progress_at": int(job.created_at) if status != "failed" else None,
        "expires_at": int(job.created_at) + _WINDOW_S,
        "finalizing_at": ended if status in ("completed", "expired") else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": ended if status == "expired" else None,
        "cancelling_at": int(job.cancel_at) if job.cancel_at is not None else None,
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": dict(job.counts),
        "metadata": job.metadata,
    }


_OPENAI_UNANSWERED = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "canceled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


def _finish_openai(state: BatchState, job: _Job, outcomes: list[_Outcome], cancelled: bool) -> None:
    out: list[bytes] = []
    err: list[bytes] = []
    for outcome in outcomes:
        custom_id, status, payload = outcome.custom_id, outcome.status, outcome.payload
        head = b'{"id":"batch_req_' + uuid.uuid4().hex[:24].encode() + b'","custom_id":' + _encode(custom_id)
        if payload is None:
            code, message = _OPENAI_UNANSWERED[outcome.unanswered or "expired"]
            error = _encode({"code": code, "message": message})
            err.append(head + b',"response":null,"error":' + error + b"}")
            continue
        request_id = b'"req_' + uuid.uuid4().hex[:24].encode() + b'"'
        line = head + b',"response":{"status_code":%d,"request_id":%s,"body":%s},"error":null}' % (
            status,
            request_id,
            payload,
        )
        (out if status == 200 else err).append(line)
    completed = len(out)
    failed = sum(1 for o in outcomes if o.payload is not None and o.status != 200)
    job.counts = {"total": len(outcomes), "completed": completed, "failed": failed}
    if out:
        job.output_file_id = state.add_file(
            f"{job.id}_output.jsonl", "batch_output", b"\n".join(out) + b"\n", output=True
        ).id
    if err:
        job.error_file_id = state.add_file(
            f"{job.id}_error.jsonl", "batch_output", b"\n".join(err) + b"\n", output=True
        ).id
    job.status = "cancelled" if cancelled else ("expired" if job.expire else "completed")


# ----------------------------------------------------------------------------- Anthropic


async def _anthropic(
    app: SimApp, state: BatchState, scope: Scope, receive: Receive, path: str
) -> tuple[int, bytes, bytes]:
    method: str = scope["method"]
    parts = path.split("/")[4:]  # [] or [id] or [id, "results" | "cancel"]
    if not parts and method == "POST":
        body = decode_object_or_refuse(await _read_bounded(receive, state.limits.max_file_bytes))
        return 200, _encode(_anthropic_batch(scope, _anthropic_create(state, scope, body))), asgi.JSON_TYPE
    if not parts and method == "GET":
        query = _query(scope)
        for job in list(state.jobs.values()):
            await _advance(app, state, job)
        jobs = [j for j in state.jobs.values() if j.fmt == "anthropic"]
        page, more = _page(jobs, query.get("after_id"), _limit(query))
        first, last = (page[0].id, page[-1].id) if page else (None, None)
        data = [_anthropic_batch(scope, j) for j in page]
        return 200, _encode({"data": data, "has_more": more, "first_id": first, "last_id": last}), asgi.JSON_TYPE
    found = state.jobs.get(parts[0]) if parts else None
    if found is None or found.fmt != "anthropic":
        raise _Refused(404, f"message batch {parts[0] if parts else ''!r} not found", "not_found")
    job = found
    if method == "POST" and parts[1:] == ["cancel"]:
        if not job.ended and job.cancel_at is None:
            job.cancel_at = time.time()
        answer = _anthropic_batch(scope, job)
        await _advance(app, state, job)
        return 200, _encode(answer), asgi.JSON_TYPE
    if method == "GET" and len(parts) == 1:
        await _advance(app, state, job)
        return 200, _encode(_anthropic_batch(scope, job)), asgi.JSON_TYPE
    if method == "GET" and parts[1:] == ["results"]:
        await _advance(app, state, job)
        if job.results is None:
            raise _Refused(400, f"message batch {job.id} has not ended: its results are not available yet")
        return 200, job.results, b"application/x-jsonl"
    raise _Refused(404, f"Unknown request URL: {method} {path}.", "not_found")


def _anthropic_create(state: BatchState, scope: Scope, body: dict[str, Any]) -> _Job:
    requests = body.get("requests")
    most = state.limits.max_anthropic_requests
    if not isinstance(requests, list) or not requests:
        raise _Refused(400, "requests: a non-empty list is required")
    if len(requests) > most:
        raise _Refused(400, f"requests: at most {most} requests are allowed in a batch")
    seen: set[str] = set()
    kept: list[tuple[str, bytes]] = []
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        params = item.get("params") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
            raise _Refused(400, f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
        if custom_id in seen:
            raise _Refused(400, f"requests.{i}.custom_id: {custom_id!r} is not unique in the batch")
        if not isinstance(params, dict):
            raise _Refused(400, f"requests.{i}.params: an object is required")
        seen.add(custom_id)
        kept.append((custom_id, _encode(params)))
    delay, expire = _delay_and_expire(state, scope, len(kept))
    now = time.time()
    job = _Job(f"msgbatch_{uuid.uuid4().hex[:24]}", "anthropic", now, now + delay, kept, expire)
    job.counts = {"processing": len(kept), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    state.add_job(job)
    return job


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _anthropic_batch(scope: Scope, job: _Job) -> dict[str, Any]:
    status = "ended" if job.ended else "canceling" if job.cancel_at is not None else "in_progress"
    results_url = None
    if job.ended:
        host = _header(scope, b"host") or "127.0.0.1"
        results_url = f"{scope.get('scheme', 'http')}://{host}/v1/messages/batches/{job.id}/results"
    return {
        "id": job.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": dict(job.counts),
        "ended_at": _rfc3339(job.ended_at),
        "created_at": _rfc3339(job.created_at),
        "expires_at": _rfc3339(job.created_at + _WINDOW_S),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(job.cancel_at),
        "results_url": results_url,
    }


def _finish_anthropic(job: _Job, outcomes: list[_Outcome]) -> None:
    lines: list[bytes] = []
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    for outcome in outcomes:
        custom_id, status, payload = outcome.custom_id, outcome.status, outcome.payload
        head = b'{"custom_id":' + _encode(custom_id) + b',"result":'
        if payload is None:
            kind = outcome.unanswered or "expired"
            counts[kind] += 1
            lines.append(head + b'{"type":"' + kind.encode() + b'"}}')
        elif status == 200:
            counts["succeeded"] += 1
            lines.append(head + b'{"type":"succeeded","message":' + payload + b"}}")
        else:
            counts["errored"] += 1
            lines.append(head + b'{"type":"errored","error":' + payload + b"}}")
    job.counts = counts
    job.results = b"\n".join(lines) + b"\n"
    job.status = "ended"
