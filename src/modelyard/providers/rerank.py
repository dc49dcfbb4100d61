"""Rerank egress: Cohere (`/v2/rerank`), Jina (`/v1/rerank`) and Voyage (`/v1/rerank`).

The client always speaks Cohere's v2 shape (server/endpoints.py reads it into an `EndpointRequest` with
`query`, `documents`, `top_n`, `return_documents`), and always gets it back: `results` sorted by
`relevance_score`, each with the `index` of its document and, when asked, `document: {text}`, and
`meta.billed_units`. Each adapter only translates the request and reads its provider's answer; the three
differ in the name of the cut-off (`top_n`, Voyage's `top_k`), where results live (`results`, Voyage's
`data`), and what they bill (Cohere search units, Jina and Voyage tokens).

Documents go out as plain strings and `return_documents` as false: the gateway holds the documents and
fills `document.text` from them by index, so the provider need not send every document back (Jina returns
them by default).

Usage: the provider's search units when it reports them (Cohere), else the ones measured at the edge
(`req.units`); Jina's and Voyage's token counts go in `Usage.prompt`, so a deployment priced per token
(`price.input`) is billed as those vendors bill.

Jina and Voyage also serve embeddings (`kind: embedding` deployments: `POST {base}/v1/embeddings`, answers
in OpenAI's shape, as both nearly send them). Chat is not served, nor Cohere's embeddings: a call that
reaches one anyway is a 400 naming the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from modelyard.config.model import Deployment
from modelyard.config.providers import ProviderOptions
from modelyard.providers.base import (
    Completion,
    HttpCall,
    StreamTranslator,
    decode_object,
    embeddings_answer,
    kind_from_status,
    mentions_context_length,
    new_id,
    parse_retry_after,
    upstream_error,
)
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, Usage
from modelyard.schema.endpoints import EndpointRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError, bad_request

__all__ = [
    "CohereAdapter",
    "CohereOptions",
    "JinaAdapter",
    "JinaOptions",
    "RerankOptions",
    "VoyageAdapter",
    "VoyageOptions",
    "rerank_error",
]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_RERANK = "rerank"

#: Statuses that mean our credential or account is refused: Cohere answers 402 when billing is missing and
#: 498 for an invalid token.
_AUTH_STATUSES = frozenset({401, 402, 403, 498})


class RerankOptions(ProviderOptions, kw_only=True, forbid_unknown_fields=True):
    """What the rerank providers' options share (nothing beyond every adapter's)."""


class JinaOptions(RerankOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of a Jina deployment."""

    #: Embeddings: Jina's `task` (`retrieval.query`, `retrieval.passage`, `text-matching`, ...).
    task: str | None = None


class CohereOptions(RerankOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of a Cohere rerank deployment."""

    #: `max_tokens_per_doc` when the request sets none (Cohere's default is 4096; longer documents are cut).
    max_tokens_per_doc: Annotated[int, msgspec.Meta(gt=0)] | None = None


class VoyageOptions(RerankOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of a Voyage rerank deployment."""

    #: `truncation`, always sent (Voyage's own default is true): false makes Voyage refuse over-long inputs
    #: instead of cutting them.
    truncation: bool = True
    #: Embeddings: Voyage's `input_type` (it prepends a retrieval prompt for `query` and `document`).
    input_type: Literal["query", "document"] | None = None


# ============================================================================ the request, read once


class RerankAsk(msgspec.Struct, frozen=True):
    """The rerank fields every provider needs, checked (the ingress checked them too; an adapter called
    another way must not send garbage)."""

    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


def rerank_ask(req: EndpointRequest) -> RerankAsk:
    fields = req.fields
    query = fields.get("query")
    if not isinstance(query, str) or not query:
        raise bad_request("query must be a non-empty string", param="query")
    documents = fields.get("documents")
    if not isinstance(documents, list) or not documents:
        raise bad_request("documents must be a non-empty list", param="documents")
    texts = [_document_text(doc, f"documents[{i}]") for i, doc in enumerate(documents)]
    top_n = fields.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise bad_request("top_n must be a positive integer", param="top_n")
    returned = fields.get("return_documents", False)
    if not isinstance(returned, bool):
        raise bad_request("return_documents must be a boolean", param="return_documents")
    return RerankAsk(query, texts, top_n, returned)


def _document_text(doc: Any, param: str) -> str:
    """A document as text: a string, or Cohere v1's `{"text": ...}` object."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return str(doc["text"])
    raise bad_request("each document must be a string or an object with a `text` string", param=param)


def _url(dep: Deployment, default_base: str, version: str, path: str = _RERANK) -> str:
    """`{base}/{version}/{path}`; an `api_base` that already ends in a version (`.../v1`) is used as is."""
    base = (dep.api_base or default_base).rstrip("/")
    last = base.rsplit("/", 1)[-1]
    if not (last.startswith("v") and last[1:].isdigit()):
        base = f"{base}/{version}"
    return f"{base}/{path}"


def _headers(dep: Deployment) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if dep.api_key:
        headers["Authorization"] = f"Bearer {dep.api_key}"
    if dep.headers:
        headers.update(dep.headers)
    return headers


# ============================================================================ the answer, in Cohere's v2 shape


def ranked_results(entries: Any, ask: RerankAsk, where: str) -> list[dict[str, Any]]:
    """The provider's `[{index, relevance_score}]` as Cohere's results: sorted by score (highest first),
    cut to `top_n`, each with its document's text when asked. Malformed entries are a server failure."""
    if not isinstance(entries, list):
        raise ProviderError(ErrorKind.SERVER, f"malformed rerank response: no {where} list")
    results: list[dict[str, Any]] = []
    count = len(ask.documents)
    for entry in entries:
        index = entry.get("index") if isinstance(entry, dict) else None
        score = entry.get("relevance_score") if isinstance(entry, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ProviderError(ErrorKind.SERVER, "malformed rerank response: a result's index is out of range")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise ProviderError(ErrorKind.SERVER, "malformed rerank response: a result has no relevance_score")
        result: dict[str, Any] = {"index": index, "relevance_score": float(score)}
        spans = entry.get("relevant_spans")
        if isinstance(spans, list):  # Cohere's rerank v5 models, when the request enabled them
            result["relevant_spans"] = spans
        if ask.return_documents:
            result["document"] = {"text": ask.documents[index]}
        results.append(result)
    results.sort(key=lambda r: (-r["relevance_score"], r["index"]))
    return results[: ask.top_n] if ask.top_n is not None else results


def rerank_answer(
    model: str, rid: Any, results: list[dict[str, Any]], search_units: int, tokens: int | None
) -> Completion:
    """Cohere's v2 answer around `results`, billed by `search_units` and, where the provider counts them, its
    input `tokens` (Jina, Voyage and OpenAI-compatible rerankers bill per token)."""
    billed: dict[str, Any] = {"search_units": search_units}
    meta: dict[str, Any] = {"api_version": {"version": "2"}, "billed_units": billed}
    if tokens is not None:
        billed["input_tokens"] = tokens
        meta["tokens"] = {"input_tokens": tokens, "output_tokens": 0}
    body = {"id": rid if isinstance(rid, str) and rid else new_id("rerank-"), "results": results, "meta": meta}
    return Completion(body, Usage(prompt=tokens or 0, search_units=search_units), model)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


# ============================================================================ embeddings (Jina, Voyage)


def _embedding_texts(req: EmbeddingRequest) -> list[str]:
    value = req.input
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(item, str) for item in value):
        return [str(item) for item in value]
    raise bad_request("this provider embeds text only: `input` must be a string or a list of strings", param="input")


def _parse_embeddings(dep: Deployment, body: bytes) -> Completion:
    """Jina's and Voyage's answers are OpenAI's shape but for the details: normalised to it, usage from
    `usage.total_tokens` (both bill the input tokens)."""
    data = decode_object(body)
    entries = data.get("data")
    if not isinstance(entries, list):
        raise ProviderError(ErrorKind.SERVER, "malformed embeddings response: no data")
    items = []
    for position, entry in enumerate(entries):
        vector = entry.get("embedding") if isinstance(entry, dict) else None
        if not isinstance(vector, list | str):
            raise ProviderError(ErrorKind.SERVER, "malformed embeddings response: an entry has no embedding")
        index = entry.get("index", position)
        items.append(
            {"object": "embedding", "index": index if isinstance(index, int) else position, "embedding": vector}
        )
    prompt = total_tokens(data) or 0
    return embeddings_answer(items, dep.model, prompt)


# ============================================================================ errors


def _error_text(body: bytes) -> str:
    """The message of an error body: Cohere's `{"message"}`, Jina's and Voyage's `{"detail"}` (a string, or
    FastAPI's list of `{msg}`), or an `{"error"}` string or object; the raw text otherwise."""
    try:
        data = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip()
    if not isinstance(data, dict):
        return ""
    for key in ("message", "detail", "error"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return str(value["message"])
        if isinstance(value, list):
            msgs = [str(item.get("msg")) for item in value if isinstance(item, dict) and item.get("msg")]
            if msgs:
                return "; ".join(msgs)
    return ""


def rerank_error(status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """A non-2xx answer of any of the three as a typed error: 401/402/403/498 auth, 429 rate limited (with
    `retry-after`), 400/404/422 a bad request (context length when the text says so), 499 the connection,
    503 overloaded, other 5xx server."""
    text = _error_text(body) or f"HTTP {status}"
    if status in _AUTH_STATUSES:
        kind = ErrorKind.AUTH
    elif status == 499:  # Cohere: the request was cancelled before it finished
        kind = ErrorKind.CONNECTION
    elif status in (400, 413, 422) and mentions_context_length(text):
        kind = ErrorKind.CONTEXT_LENGTH
    else:
        kind = kind_from_status(status)
    return upstream_error(
        kind, f"provider answered {status}", text, status=status, retry_after=parse_retry_after(headers)
    )


# ============================================================================ the adapters


class _RerankOnly:
    """The chat and embeddings half of the contract for a provider served for rerank (Jina and Voyage
    override the embeddings half)."""

    name: ClassVar[str]
    #: What the Endpoints capability serves.
    endpoints: ClassVar[frozenset[str]] = frozenset({_RERANK})
    #: Whether the provider can return each result's relevant spans (Cohere's `relevant_spans`).
    returns_spans: ClassVar[bool] = False
    #: What it serves, for the 400 a chat request gets.
    serves: ClassVar[str] = "rerank only (POST /v1/rerank)"

    def _refuse(self) -> GatewayError:
        return GatewayError(400, f"provider {self.name!r} serves {self.serves}")

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        raise self._refuse()

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        raise ProviderError(ErrorKind.SERVER, f"provider {self.name!r} has no chat answers")

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> StreamTranslator:
        raise self._refuse()

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        raise self._refuse()

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        raise ProviderError(ErrorKind.SERVER, f"provider {self.name!r} has no embeddings answers")

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        return rerank_error(status, headers, body)

    def _check(self, req: EndpointRequest) -> RerankAsk:
        if req.endpoint != _RERANK:
            raise GatewayError(400, f"rerank providers do not serve /v1/{req.endpoint}")
        spans = req.fields.get("relevant_spans")
        if not self.returns_spans and isinstance(spans, dict) and spans.get("mode") == "enabled":
            raise bad_request(f"provider {self.name!r} does not return relevant spans", param="relevant_spans")
        return rerank_ask(req)


class CohereAdapter(_RerankOnly):
    """Cohere's v2 rerank: `POST {base}/v2/rerank` with `model, query, documents, top_n,
    max_tokens_per_doc` (and `relevant_spans`, `priority` when the client sends them) → `{id, results: [{index,
    relevance_score, relevant_spans?}], meta: {billed_units: {search_units}}}`."""

    name: ClassVar[str] = "cohere"
    returns_spans: ClassVar[bool] = True
    options_type: ClassVar[type[CohereOptions]] = CohereOptions
    default_base: ClassVar[str] = "https://api.cohere.com"

    def endpoint_call(self, dep: Deployment, req: EndpointRequest) -> HttpCall:
        ask = self._check(req)
        opts: CohereOptions = dep.options
        body: dict[str, Any] = {"model": dep.model, "query": ask.query, "documents": ask.documents}
        if ask.top_n is not None:
            body["top_n"] = ask.top_n
        per_doc = req.fields.get("max_tokens_per_doc", opts.max_tokens_per_doc)
        if per_doc is not None:
            if isinstance(per_doc, bool) or not isinstance(per_doc, int) or per_doc < 1:
                raise bad_request("max_tokens_per_doc must be a positive integer", param="max_tokens_per_doc")
            body["max_tokens_per_doc"] = per_doc
        spans = req.fields.get("relevant_spans")
        if spans is not None:
            if not isinstance(spans, dict):
                raise bad_request("relevant_spans must be an object", param="relevant_spans")
            body["relevant_spans"] = spans
        priority = req.fields.get("priority")
        if priority is not None:
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise bad_request("priority must be an integer", param="priority")
            body["priority"] = priority
        return HttpCall("POST", _url(dep, self.default_base, "v2"), _headers(dep), _encode(body))

    def parse_endpoint(
        self, dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]
    ) -> Completion:
        ask = self._check(req)
        data = decode_object(body)
        results = ranked_results(data.get("results"), ask, "results")
        meta = data.get("meta")
        billed = meta.get("billed_units") if isinstance(meta, dict) else None
        reported = _int(billed.get("search_units")) if isinstance(billed, dict) else None
        units = reported if reported is not None else req.units.search_units
        return rerank_answer(dep.model, data.get("id"), results, units, None)


class JinaAdapter(_RerankOnly):
    """Jina's rerank: `POST {base}/v1/rerank` with `model, query, documents, top_n, return_documents` →
    `{model, results: [{index, relevance_score, document?}], usage: {total_tokens}}`."""

    name: ClassVar[str] = "jina"
    serves: ClassVar[str] = "rerank and embeddings only (POST /v1/rerank, /v1/embeddings)"
    options_type: ClassVar[type[JinaOptions]] = JinaOptions
    default_base: ClassVar[str] = "https://api.jina.ai"

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        """`POST {base}/v1/embeddings` with `model, input` and `dimensions`, `embedding_type: base64`, `task`
        when asked."""
        opts: JinaOptions = dep.options
        body: dict[str, Any] = {"model": dep.model, "input": _embedding_texts(req)}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        if req.encoding_format == "base64":
            body["embedding_type"] = "base64"
        if opts.task:
            body["task"] = opts.task
        return HttpCall("POST", _url(dep, self.default_base, "v1", "embeddings"), _headers(dep), _encode(body))

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        return _parse_embeddings(dep, body)

    def endpoint_call(self, dep: Deployment, req: EndpointRequest) -> HttpCall:
        ask = self._check(req)
        body: dict[str, Any] = {
            "model": dep.model,
            "query": ask.query,
            "documents": ask.documents,
            "return_documents": False,  # Jina's default is true: the gateway has the texts already
        }
        if ask.top_n is not None:
            body["top_n"] = ask.top_n
        return HttpCall("POST", _url(dep, self.default_base, "v1"), _headers(dep), _encode(body))

    def parse_endpoint(
        self, dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]
    ) -> Completion:
        ask = self._check(req)
        data = decode_object(body)
        results = ranked_results(data.get("results"), ask, "results")
        return rerank_answer(dep.model, data.get("id"), results, req.units.search_units, total_tokens(data))


class VoyageAdapter(_RerankOnly):
    """Voyage's rerank: `POST {base}/v1/rerank` with `query, documents, model, top_k, return_documents,
    truncation` → `{object: "list", data: [{index, relevance_score, document?}], usage: {total_tokens}}`."""

    name: ClassVar[str] = "voyage"
    serves: ClassVar[str] = "rerank and embeddings only (POST /v1/rerank, /v1/embeddings)"
    options_type: ClassVar[type[VoyageOptions]] = VoyageOptions
    default_base: ClassVar[str] = "https://api.voyageai.com"

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        """`POST {base}/v1/embeddings` with `input, model, truncation` and `output_dimension`,
        `encoding_format: base64`, `input_type` when asked."""
        opts: VoyageOptions = dep.options
        body: dict[str, Any] = {"input": _embedding_texts(req), "model": dep.model, "truncation": opts.truncation}
        if req.dimensions is not None:
            body["output_dimension"] = req.dimensions
        if req.encoding_format == "base64":
            body["encoding_format"] = "base64"
        if opts.input_type:
            body["input_type"] = opts.input_type
        return HttpCall("POST", _url(dep, self.default_base, "v1", "embeddings"), _headers(dep), _encode(body))

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        return _parse_embeddings(dep, body)

    def endpoint_call(self, dep: Deployment, req: EndpointRequest) -> HttpCall:
        ask = self._check(req)
        opts: VoyageOptions = dep.options
        body: dict[str, Any] = {
            "query": ask.query,
            "documents": ask.documents,
            "model": dep.model,
            "return_documents": False,
            "truncation": opts.truncation,
        }
        if ask.top_n is not None:
            body["top_k"] = ask.top_n
        return HttpCall("POST", _url(dep, self.default_base, "v1"), _headers(dep), _encode(body))

    def parse_endpoint(
        self, dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]
    ) -> Completion:
        ask = self._check(req)
        data = decode_object(body)
        results = ranked_results(data.get("data"), ask, "data")
        return rerank_answer(dep.model, data.get("id"), results, req.units.search_units, total_tokens(data))


def total_tokens(data: dict[str, Any]) -> int | None:
    """`usage.total_tokens` of a Jina-shaped answer (Jina, Voyage, vLLM), or None when not reported."""
    usage = data.get("usage")
    return _int(usage.get("total_tokens")) if isinstance(usage, dict) else None
