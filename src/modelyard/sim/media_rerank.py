"""The simulator's rerank routes: Cohere's `POST /v2/rerank`, and `POST /v1/rerank` as Jina or Voyage.

Jina and Voyage share the path. `/v1/rerank` answers in Voyage's shape (`data`, `document` as a string,
`return_documents` off by default) when the body has Voyage's `top_k` or `truncation` (the gateway's Voyage
adapter always sends `truncation`) or the request says `x-sim-wire: voyage`; otherwise in Jina's
(`results`, `document: {text}`, `return_documents` on by default).

Only fleet models of kind `rerank` rerank. Relevance is deterministic word overlap: the share of the
query's words the document contains (0.9 of the score) plus their Jaccard similarity (0.1), so a
document with the query's words ranks first and the same request always gets the same order. Usage:
Cohere bills one search unit per 100 documents; Jina and Voyage count tokens as Voyage defines them
(query tokens times documents + the documents' tokens).

Credentials, `x-sim-fault`, `x-sim-ttft-ms`, per-model rate limits and `GET /_sim/requests/{model}` work as
for chat (the app's own admission step).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.sim import asgi
from modelyard.sim.asgi import Receive, Scope, Send
from modelyard.sim.behaviour import count_tokens
from modelyard.sim.faults import Fault
from modelyard.sim.shapes import BadRequest, ErrKind, decode_object

if TYPE_CHECKING:
    from modelyard.sim.app import SimApp

__all__ = ["COHERE", "JINA", "VOYAGE", "RerankWire", "claims", "handle", "relevance", "wire_for"]

_encode = msgspec.json.Encoder().encode
_WORD = re.compile(r"[a-z0-9]+")
_PATHS = frozenset({"/v2/rerank", "/v1/rerank"})
#: The most documents one request may carry (Cohere's and Voyage's limit).
MAX_DOCUMENTS = 1000

_STATUS: dict[str, int] = {
    "bad_request": 400,
    "auth": 401,
    "not_found": 404,
    "rate_limit": 429,
    "server_error": 500,
    "unavailable": 503,
    "context_length": 400,
}
_MESSAGES: dict[str, str] = {
    "bad_request": "{detail}",
    "auth": "invalid api token",
    "not_found": "model '{model}' not found",
    "rate_limit": "You are using a rate-limited key for {model} (simulated); retry in {retry}s.",
    "server_error": "internal server error",
    "unavailable": "the service is temporarily unavailable",
    "context_length": "the query is too long for {model}: {prompt} tokens, the limit is {limit}",
}


@dataclass(frozen=True, slots=True)
class RerankWire:
    """One rerank wire format: its name, the key its error message goes under, its results list."""

    name: str
    #: Cohere: `{"message"}`; Jina and Voyage (FastAPI): `{"detail"}`.
    error_key: str
    messages: dict[str, str]

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]:
        return _STATUS[kind], _encode({self.error_key: message})


COHERE = RerankWire("cohere", "message", _MESSAGES)
JINA = RerankWire("jina", "detail", _MESSAGES)
VOYAGE = RerankWire("voyage", "detail", _MESSAGES)


def claims(method: str, path: str) -> bool:
    """Whether this module serves the request."""
    return method == "POST" and path in _PATHS


def wire_for(path: str, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> RerankWire:
    """Which provider's shape a request is in (the module docstring says how it is told)."""
    if path == "/v2/rerank":
        return COHERE
    for name, value in headers:
        if name == b"x-sim-wire" and value.strip().lower() == b"voyage":
            return VOYAGE
    return VOYAGE if "top_k" in body or "truncation" in body else JINA


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def relevance(query: str, document: str) -> float:
    """How relevant `document` is to `query`, in [0, 1]: word overlap, deterministic."""
    asked = _words(query)
    have = _words(document)
    if not asked or not have:
        return 0.0
    shared = len(asked & have)
    return round(0.9 * shared / len(asked) + 0.1 * shared / len(asked | have), 6)


@dataclass(slots=True)
class _Rerank:
    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


def _parse(wire: RerankWire, body: dict[str, Any]) -> _Rerank:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise BadRequest("query must be a non-empty string")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise BadRequest("documents must be a non-empty list")
    if len(documents) > MAX_DOCUMENTS:
        raise BadRequest(f"too many documents: at most {MAX_DOCUMENTS}")
    texts: list[str] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
        elif wire is JINA and isinstance(doc, dict) and isinstance(doc.get("text"), str):
            texts.append(doc["text"])  # Jina also takes `{"text": ...}` documents
        else:
            raise BadRequest(f"documents[{i}] must be a string")
    cut_name = "top_k" if wire is VOYAGE else "top_n"
    cut = body.get(cut_name)
    if cut is not None and (isinstance(cut, bool) or not isinstance(cut, int) or cut < 1):
        raise BadRequest(f"{cut_name} must be a positive integer")
    returned = body.get("return_documents", wire is JINA)
    if wire is COHERE and "return_documents" in body:
        raise BadRequest("return_documents is not a v2 rerank parameter")
    if not isinstance(returned, bool):
        raise BadRequest("return_documents must be a boolean")
    return _Rerank(model, query, texts, cut, returned)


def _answer(wire: RerankWire, ask: _Rerank, key: str, tokens: int) -> bytes:
    scored = sorted(
        ((relevance(ask.query, doc), i) for i, doc in enumerate(ask.documents)), key=lambda p: (-p[0], p[1])
    )
    if ask.top_n is not None:
        scored = scored[: ask.top_n]
    if wire is COHERE:
        results = [{"index": i, "relevance_score": score} for score, i in scored]
        units = math.ceil(len(ask.documents) / 100)
        meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": units}}
        return _encode({"id": key, "results": results, "meta": meta})
    entries: list[dict[str, Any]] = []
    for score, i in scored:
        entry: dict[str, Any] = {"index": i, "relevance_score": score}
        if ask.return_documents:
            entry["document"] = ask.documents[i] if wire is VOYAGE else {"text": ask.documents[i]}
        entries.append(entry)
    usage = {"total_tokens": tokens}
    if wire is VOYAGE:
        return _encode({"object": "list", "data": entries, "model": ask.model, "usage": usage})
    return _encode({"model": ask.model, "usage": usage, "results": entries})


async def _reject(app: SimApp, send: Send, wire: RerankWire, kind: ErrKind, **facts: Any) -> None:
    """An error answer in `wire`'s shape, counted as the app counts its own rejections."""
    app.stats.rejected += 1
    facts.setdefault("detail", "")
    facts.setdefault("model", "")
    status, body = wire.error(kind, wire.messages[kind].format(**facts))
    await asgi.respond(send, status, body)


async def handle(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    """One rerank request: authenticate, read, record, admit (faults, rate limit), score, answer."""
    from modelyard.sim.app import _read_headers  # the app imports this module: read at call time

    headers = _read_headers(scope)
    shape = COHERE if scope["path"] == "/v2/rerank" else JINA  # Jina's and Voyage's errors look alike
    if not app._authorised(headers, scope):
        return await _reject(app, send, shape, "auth")
    raw = await asgi.read_body(receive)
    try:
        body = decode_object(raw)
    except BadRequest as exc:
        return await _reject(app, send, shape, "bad_request", detail=str(exc))
    wire = wire_for(scope["path"], body, scope["headers"])
    try:
        ask = _parse(wire, body)
    except BadRequest as exc:
        return await _reject(app, send, wire, "bad_request", detail=str(exc))
    app.received.record(ask.model, scope["path"], scope["headers"], raw)
    model = app.models.get(ask.model)
    if model is None:
        return await _reject(app, send, wire, "not_found", model=ask.model)
    if model.kind != "rerank":
        return await _reject(app, send, wire, "bad_request", detail=f"`{model.name}` is not a rerank model")
    query_tokens = max(1, count_tokens(ask.query))
    tokens = query_tokens * len(ask.documents) + sum(max(1, count_tokens(d)) for d in ask.documents)
    # The admission step reads only a wire's `name`, `messages` and `error` (the chat Wire protocol has more).
    call = await app._admit(wire, model, headers, raw, receive, send, tokens)  # type: ignore[arg-type]
    if call is None:
        return
    payload = _answer(wire, ask, f"{call.rng.getrandbits(128):032x}", tokens)
    await asgi.pause(call.ttft)
    if call.fault in (Fault.RESET, Fault.CUT_STREAM):
        await asgi.abort_midway(send, payload)
    if call.fault is Fault.MALFORMED:
        payload = payload[: len(payload) // 2]
    else:
        app._succeeded(call.stats, tokens, 0)
    await asgi.respond(send, 200, payload)
