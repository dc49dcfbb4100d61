"""OpenAI ingress: /v1/chat/completions (JSON and SSE), /v1/embeddings, /v1/models."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.accounting.tokens import count_text
from modelyard.providers.base import new_id
from modelyard.routing.executor import StreamResult
from modelyard.routing.features import RequestFeatures, chat_features
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, Usage
from modelyard.schema.errors import GatewayError, ProviderError
from modelyard.server.http import (
    JSON_HEADERS,
    SSE_HEADERS,
    Request,
    cancel_quietly,
)
from modelyard.server.validation import decode_body, validate_chat, validate_embeddings

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode
_DONE = b"data: [DONE]\n\n"


async def chat_completions(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raw = decode_body(await request.body(gw.max_body))
    req = validate_chat(raw)
    features = gw.features(req, request, ctx)
    await gw.admit(ctx, req.model, features, req.modelyard)
    insight = await gw.analyse(req, features, ctx)
    if insight is not None and insight.cached is not None:
        await answer_from_cache(gw, request, ctx, insight.cached)
        return
    plan = gw.plan(req, request, features, ctx, insight)
    timeout_s = gw.timeout_override(request)
    if req.stream:
        result = await gw.router.stream(req, raw, features, plan=plan, timeout_s=timeout_s)
        try:
            await stream_chat(gw, request, ctx, req, result)
        finally:
            await result.aclose()  # a no-op after a full answer; else the upstream call and its slot are freed
        return
    success = await gw.router.complete(req, raw, features, plan=plan, timeout_s=timeout_s)
    if insight is not None and insight.vector is not None and req.model in gw.intelligence.cached_models:
        gw.intelligence.remember(
            f"{req.model}\x00{ctx.key_id or ''}",
            insight,
            (success.completion.body, success.deployment, success.completion.usage),
        )
    body = success.completion.body
    cost = success.cost_usd
    usage = body.get("usage")
    if isinstance(usage, dict):
        usage["cost"] = round(cost, 10)
    if ctx.explain is not None:
        body["modelyard"] = {"explain": ctx.explain, "attempts": [_record_dict(r) for r in success.records]}
    headers = JSON_HEADERS + gw.answer_headers(ctx, success.deployment, success.records, cost)
    # The spend record reaches the spool before the answer goes out; the rest of the bookkeeping after it.
    outcome = ctx.success(success.deployment, success.records, success.completion.usage, cost, ttft_ms=None)
    await ctx.end(outcome, request.respond(200, _encode(body), headers))


async def answer_from_cache(gw: Gateway, request: Request, ctx: RequestContext, cached: Any) -> None:
    """A semantic-cache hit: the earlier answer, with a new id, at no cost (nothing was called)."""
    body, dep, _ = cached
    answer = {**body, "id": new_id("chatcmpl-"), "created": int(time.time())}
    answer["usage"] = {**(body.get("usage") or {}), "cost": 0.0}
    headers = JSON_HEADERS + gw.answer_headers(ctx, dep, [], 0.0)
    headers.append((b"x-modelyard-cache", b"hit"))
    await ctx.end(ctx.success(dep, [], Usage(), 0.0, ttft_ms=None), request.respond(200, _encode(answer), headers))


async def stream_chat(
    gw: Gateway, request: Request, ctx: RequestContext, req: ChatRequest, result: StreamResult
) -> None:
    """SSE out: chunks as they come; a failure after the first byte ends with an error event, not [DONE].

    The last batch (the one after which the provider said it was done) is held back a moment and sent with
    the usage chunk and `[DONE]` in one write.
    """
    send = request.send
    await request.start_stream(SSE_HEADERS + gw.answer_headers(ctx, result.deployment, result.records, None))
    last: dict[str, Any] = {}
    held = b""
    batches = 0
    error: ProviderError | None = None
    watcher: asyncio.Future[None] | None = None
    try:
        async for batch in result.batches():
            batches += 1
            if watcher is None:
                # Watch for a client that goes away only once the answer spans more than one read: an answer
                # that arrives at once needs no watcher (and saves a task per request).
                watcher = asyncio.ensure_future(request.wait_disconnect()) if batches > 1 else None
            elif watcher.done():
                await result.aclose()
                ctx.finish_cancelled(result.deployment, result.records, result.usage, result.cost_usd)
                return
            if isinstance(batch[-1], dict):
                last = batch[-1]  # for the id, created and model of the usage chunk
            body = b"".join([b"data: " + _encode(chunk) + b"\n\n" for chunk in batch])
            if result.upstream_done:
                held += body
            else:
                await send({"type": "http.response.body", "body": held + body, "more_body": True})
                held = b""
    except ProviderError as exc:
        error = exc
    finally:
        await cancel_quietly(watcher)
    cost = result.cost_usd
    if error is not None:
        failed = ctx.failure(error, result.records, after_first_byte=True, usage=result.usage, cost=cost)
        await ctx.end(
            failed, send({"type": "http.response.body", "body": held + b"data: " + _encode(error.to_body()) + b"\n\n"})
        )
        return
    if req.wants_usage_in_stream:
        usage = result.usage.to_openai()
        usage["cost"] = round(cost, 10)
        final: dict[str, Any] = {
            "id": last.get("id") or new_id("chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": last.get("created") or int(time.time()),
            "model": last.get("model") or result.model,
            "choices": [],
            "usage": usage,
        }
        held += b"data: " + _encode(final) + b"\n\n"
    # [DONE] is the last byte: the spend record is in the spool before it.
    outcome = ctx.success(result.deployment, result.records, result.usage, cost, ttft_ms=result.ttft_ms)
    await ctx.end(outcome, send({"type": "http.response.body", "body": held + _DONE}))


async def embeddings(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raw = decode_body(await request.body(gw.max_body))
    req: EmbeddingRequest = validate_embeddings(raw)
    texts = [req.input] if isinstance(req.input, str) else [t for t in req.input if isinstance(t, str)]
    features = RequestFeatures(prompt_tokens=sum(count_text(t) for t in texts), kind="embedding", key_name=ctx.key_name)
    await gw.admit(ctx, req.model, features)
    completion, dep, records, _ = await gw.router.embed(req, raw, features)
    cost = sum(r.cost_usd for r in records)
    body = completion.body
    await ctx.end(
        ctx.success(dep, records, completion.usage, cost, ttft_ms=None),
        request.respond(200, _encode(body), JSON_HEADERS + gw.answer_headers(ctx, dep, records, cost)),
    )


async def list_models(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    """The models the caller's key may use (all of them for an unrestricted key or in open mode)."""
    data = [_model_object(gw, name) for name in _visible_models(gw, ctx)]
    await request.respond(200, _encode({"object": "list", "data": data}), list(JSON_HEADERS))


async def retrieve_model(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    """GET /v1/models/{id}: one model the key may use, else a 404 that does not say whether it exists."""
    name = request.path[len("/v1/models/") :]
    if name not in _visible_models(gw, ctx):
        raise GatewayError(
            404,
            f"The model `{name[:64]}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    await request.respond(200, _encode(_model_object(gw, name)), list(JSON_HEADERS))


def _visible_models(gw: Gateway, ctx: RequestContext) -> list[str]:
    public = gw.router.table.public_models
    allowed = ctx.key.models if ctx.key is not None else None
    return public if allowed is None else [name for name in public if name in allowed]


def _model_object(gw: Gateway, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": gw.started_at, "owned_by": "modelyard"}


def features_for(req: ChatRequest, request: Request, key_name: str | None) -> RequestFeatures:
    tags_header = request.header(b"x-modelyard-tags")
    tags = tuple(t.strip() for t in tags_header.split(",") if t.strip()) if tags_header else ()
    return chat_features(req, task=request.header(b"x-modelyard-task"), key_name=key_name, tags=tags)


def _record_dict(record: Any) -> dict[str, Any]:
    return {
        "deployment": record.deployment,
        "provider": record.provider,
        "outcome": record.outcome,
        "latency_ms": round(record.latency_ms, 1),
        "status": record.status,
        "hedge": record.hedge,
        "cost_usd": round(record.cost_usd, 10),
    }
