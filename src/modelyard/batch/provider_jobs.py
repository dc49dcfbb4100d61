"""The providers' Batch APIs as two small clients with one shape: submit a job, find a job a killed driver
created, poll it, read its results.

OpenAI: upload a JSONL file (`POST /v1/files`, purpose `batch`), `POST /v1/batches` with the file and
`metadata.modelyard_nonce`, poll `GET /v1/batches/{id}`, read the output and error files. Anthropic:
`POST /v1/messages/batches` with the requests inline, poll, read `GET /v1/messages/batches/{id}/results`.
Anthropic has no metadata: a job is found again by its creation time and its request count.
Credentials and headers are the deployment's own, taken from its adapter's chat call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import msgspec

from modelyard.batch.model import Submission
from modelyard.config.model import Deployment
from modelyard.providers.anthropic import DEFAULT_BASE as ANTHROPIC_BASE
from modelyard.schema.errors import ModelyardError

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
CHAT_ENDPOINT = "/v1/chat/completions"
#: How far back a resumed driver looks for a job it may have created (list pages of 100).
_FIND_PAGES = 10
#: A job created this long after its submission was recorded still counts as that submission's (Anthropic).
_FIND_WINDOW_S = 600.0
_OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
#: The longest error text kept from a provider's answer.
_MAX_ERROR = 500
_RETRIES = 3


class JobError(ModelyardError, RuntimeError):
    """A Batch API request failed: the provider's status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}"[:_MAX_ERROR])
        self.status = status


@dataclass
class JobStatus:
    ended: bool
    #: The provider's own words: `completed`, `expired`, `in_progress`, `ended`, ...
    state: str
    #: Why the whole job failed (OpenAI's validation errors), else None.
    error: str | None = None
    raw: dict[str, Any] | None = None


@dataclass
class Outcome:
    """One request's result: the provider's 2xx response body, or why there is none."""

    body: bytes | None
    error: str | None = None


class BatchClient(Protocol):
    fmt: str

    async def submit(self, sub: Submission, requests: list[tuple[str, dict[str, Any]]], saved: Any) -> str:
        """Create the job (OpenAI: upload first, `saved(sub)` after the upload); its id."""
        ...

    async def find(self, sub: Submission, claimed: set[str]) -> str | None:
        """The id of the job a killed driver created for `sub`, if any."""
        ...

    async def status(self, job_id: str) -> JobStatus: ...

    async def results(self, job_id: str, status: JobStatus) -> dict[str, Outcome]: ...


class _Http:
    """JSON over one aiohttp session, with the deployment's headers; transient failures retried."""

    def __init__(self, session: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        self.session = session
        self.headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}

    async def request(self, method: str, url: str, *, json: Any = None, data: Any = None) -> bytes:
        body = _encode(json) if json is not None else data
        headers = dict(self.headers)
        if json is not None:
            headers["content-type"] = "application/json"
        for attempt in range(_RETRIES):
            try:
                async with self.session.request(method, url, data=body, headers=headers) as response:
                    payload = await response.read()
                    if response.status < 300:
                        return payload
                    if (response.status < 500 and response.status != 429) or attempt == _RETRIES - 1:
                        raise JobError(response.status, _message(payload))
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == _RETRIES - 1:
                    raise JobError(0, f"{type(exc).__name__}: {exc}") from None
            await asyncio.sleep(0.5 * 2**attempt)
        raise JobError(0, "unreachable")  # pragma: no cover

    async def json(self, method: str, url: str, *, json: Any = None, data: Any = None) -> dict[str, Any]:
        payload = await self.request(method, url, json=json, data=data)
        try:
            value = _decode(payload)
        except msgspec.DecodeError:
            raise JobError(200, "the answer is not JSON") from None
        if not isinstance(value, dict):
            raise JobError(200, "the answer is not a JSON object")
        return value


def _message(payload: bytes) -> str:
    try:
        data = _decode(payload)
    except msgspec.DecodeError:
        return payload[:_MAX_ERROR].decode("utf-8", "replace")
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        nested = error.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else error
        return str(inner.get("message") or error)[:_MAX_ERROR]
    return str(data)[:_MAX_ERROR]


class OpenAIBatches:
    """OpenAI's files + batches at a deployment's base URL (`.../v1`)."""

    fmt = "openai"

    def __init__(self, session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> None:
        self.http = _Http(session, headers)
        self.base = base.rstrip("/")

    async def submit(self, sub: Submission, requests: list[tuple[str, dict[str, Any]]], saved: Any) -> str:
        lines = [
            _encode({"custom_id": cid, "method": "POST", "url": CHAT_ENDPOINT, "body": body}) for cid, body in requests
        ]
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file", b"\n".join(lines) + b"\n", filename=f"{sub.nonce}.jsonl", content_type="application/jsonl"
        )
        uploaded = await self.http.json("POST", f"{self.base}/files", data=form)
        sub.file_id = str(uploaded["id"])
        saved(sub)
        metadata = {"modelyard_nonce": sub.nonce, "modelyard_batch": sub.batch_id[:512]}
        body = {
            "input_file_id": sub.file_id,
            "endpoint": CHAT_ENDPOINT,
            "completion_window": "24h",
            "metadata": metadata,
        }
        created = await self.http.json("POST", f"{self.base}/batches", json=body)
        return str(created["id"])

    async def find(self, sub: Submission, claimed: set[str]) -> str | None:
        after: str | None = None
        for _ in range(_FIND_PAGES):
            query = "limit=100" + (f"&after={after}" if after else "")
            page = await self.http.json("GET", f"{self.base}/batches?{query}")
            data = page.get("data") or []
            for job in data:
                if (job.get("metadata") or {}).get("modelyard_nonce") == sub.nonce:
                    return str(job["id"])
            oldest = min((float(job.get("created_at") or 0) for job in data), default=0.0)
            if not page.get("has_more") or not data or oldest < sub.created_at - _FIND_WINDOW_S:
                return None
            after = str(data[-1]["id"])
        return None

    async def status(self, job_id: str) -> JobStatus:
        job = await self.http.json("GET", f"{self.base}/batches/{job_id}")
        state = str(job.get("status"))
        error = None
        if state == "failed":
            errors = (job.get("errors") or {}).get("data") or []
            error = "; ".join(f"line {e.get('line')}: {e.get('message')}" for e in errors[:5]) or "the batch failed"
        return JobStatus(state in _OPENAI_ENDED, state, error, job)

    async def results(self, job_id: str, status: JobStatus) -> dict[str, Outcome]:
        job = status.raw or {}
        found: dict[str, Outcome] = {}
        for key in ("output_file_id", "error_file_id"):
            file_id = job.get(key)
            if not file_id:
                continue
            content = await self.http.request("GET", f"{self.base}/files/{file_id}/content")
            for line in content.splitlines():
                item = _result_item(line)
                if item is not None:
                    custom_id, outcome = _openai_line(item)
                    found[custom_id] = outcome
        return found


def _result_item(line: bytes) -> dict[str, Any] | None:
    """One line of a results file as an object with a custom id; None for a blank or malformed line (it answers
    no row: the row it meant fails as unanswered, the others are still collected)."""
    if not line.strip():
        return None
    try:
        item = _decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
        return None
    return item


def _openai_line(item: dict[str, Any]) -> tuple[str, Outcome]:
    custom_id = str(item["custom_id"])
    response = item.get("response") or {}
    status = response.get("status_code")
    if status == 200 and isinstance(response.get("body"), dict):
        return custom_id, Outcome(_encode(response["body"]))
    error = item.get("error") or (response.get("body") or {}).get("error") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    where = f"HTTP {status}" if status else str(code or "error")
    return custom_id, Outcome(None, f"{where}: {message or 'no answer'}"[:_MAX_ERROR])


class AnthropicBatches:
    """Anthropic's message batches at a deployment's base URL."""

    fmt = "anthropic"

    def __init__(self, session: aiohttp.ClientSession, api_base: str | None, headers: dict[str, str]) -> None:
        self.http = _Http(session, headers)
        base = (api_base or ANTHROPIC_BASE).rstrip("/")
        self.base = (base if base.endswith("/v1") else base + "/v1") + "/messages/batches"

    async def submit(self, sub: Submission, requests: list[tuple[str, dict[str, Any]]], saved: Any) -> str:
        body = {"requests": [{"custom_id": cid, "params": params} for cid, params in requests]}
        created = await self.http.json("POST", self.base, json=body)
        return str(created["id"])

    async def find(self, sub: Submission, claimed: set[str]) -> str | None:
        """The earliest job created within the window after `sub` was recorded with its request count (the
        narrow window: two submissions of the same size recorded within it could be told apart only by order)."""
        after: str | None = None
        matches: list[tuple[float, str]] = []
        for _ in range(_FIND_PAGES):
            query = "limit=100" + (f"&after_id={after}" if after else "")
            page = await self.http.json("GET", f"{self.base}?{query}")
            data = page.get("data") or []
            oldest = float("inf")
            for job in data:
                created = _seconds(job.get("created_at"))
                oldest = min(oldest, created)
                counts = job.get("request_counts") or {}
                total = sum(int(v) for v in counts.values() if isinstance(v, int))
                in_window = sub.created_at - 5.0 <= created <= sub.created_at + _FIND_WINDOW_S
                if in_window and total == len(sub.rows) and job.get("id") not in claimed:
                    matches.append((created, str(job["id"])))
            if not page.get("has_more") or not data or oldest < sub.created_at - _FIND_WINDOW_S:
                break
            after = str(page.get("last_id") or data[-1]["id"])
        return min(matches)[1] if matches else None

    async def status(self, job_id: str) -> JobStatus:
        job = await self.http.json("GET", f"{self.base}/{job_id}")
        state = str(job.get("processing_status"))
        return JobStatus(state == "ended", state, None, job)

    async def results(self, job_id: str, status: JobStatus) -> dict[str, Outcome]:
        content = await self.http.request("GET", f"{self.base}/{job_id}/results")
        found: dict[str, Outcome] = {}
        for line in content.splitlines():
            item = _result_item(line)
            if item is None:
                continue
            result = item.get("result") or {}
            kind = result.get("type")
            if kind == "succeeded" and isinstance(result.get("message"), dict):
                found[str(item.get("custom_id"))] = Outcome(_encode(result["message"]))
                continue
            error = (result.get("error") or {}).get("error") or result.get("error") or {}
            detail = error.get("message") if isinstance(error, dict) else None
            reason = f"{kind}: {detail}" if detail else f"the request was {kind} by the provider"
            found[str(item.get("custom_id"))] = Outcome(None, reason[:_MAX_ERROR])
        return found


def _seconds(stamp: Any) -> float:
    if isinstance(stamp, int | float):
        return float(stamp)
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def client_for(
    fmt: str, session: aiohttp.ClientSession, dep: Deployment, base: str, headers: dict[str, str]
) -> BatchClient:
    """The Batch API client of a deployment of wire format `fmt` (`base`: OpenAI's URL prefix of its paths)."""
    if fmt == "openai":
        return OpenAIBatches(session, base, headers)
    return AnthropicBatches(session, dep.api_base, headers)
