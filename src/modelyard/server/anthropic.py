"""Anthropic ingress: POST /v1/messages, so the official `anthropic` SDK works against the gateway.

The body is translated into the canonical OpenAI shape, routed like any request (to any provider), and
the answer translated back: a Message object, or the Messages streaming event sequence.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.routing.executor import StreamResult, as_dict
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ProviderError
from modelyard.server.anthropic_translate import (
    KIND_ERROR_TYPES,
    ChunksToAnthropicEvents,
    anthropic_error_body,
    chat_completion_to_message,
    messages_request_to_chat,
    wants_thinking,
)
from modelyard.server.http import JSON_HEADERS, SSE_HEADERS, Headers, Request, Send, cancel_quietly, send_json
from modelyard.server.validation import decode_body, validate_chat

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode


async def messages(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    body = decode_body(await request.body(gw.max_body))
    raw = messages_request_to_chat(body)
    req = validate_chat(raw)
    features = gw.features(req, request, ctx)
    await gw.admit(ctx, req.model, features, req.modelyard)
    insight = await gw.analyse(req, features, ctx, use_cache=False)  # the semantic cache serves /v1/chat only
    plan = gw.plan(req, request, features, ctx, insight)
    timeout_s = gw.timeout_override(request)
    thinking = wants_thinking(body)
    if req.stream:
        await _stream(gw, request, ctx, req, raw, features, plan, timeout_s, thinking)
        return
    success = await gw.router.complete(req, raw, features, plan=plan, timeout_s=timeout_s)
    message = chat_completion_to_message(success.completion.body, success.completion.model, thinking=thinking)
    cost = success.cost_usd
    headers = JSON_HEADERS + gw.answer_headers(ctx, success.deployment, success.records, cost)
    outcome = ctx.success(success.deployment, success.records, success.completion.usage, cost, ttft_ms=None)
    await ctx.end(outcome, request.respond(200, _encode(message), headers))  # spend spooled before the answer


async def _stream(
    gw: Gateway,
    request: Request,
    ctx: RequestContext,
    req: Any,
    raw: dict[str, Any],
    features: Any,
    plan: Any,
    timeout_s: float | None,
    thinking: bool,
) -> None:
    result = await gw.router.stream(req, raw, features, plan=plan, timeout_s=timeout_s)
    try:
        await _relay(gw, request, ctx, result, features, thinking)
    finally:
        await result.aclose()  # a no-op after a full answer; else the upstream call and its slot are freed


async def _relay(
    gw: Gateway, request: Request, ctx: RequestContext, result: StreamResult, features: Any, thinking: bool
) -> None:
    """The Messages event sequence out of the canonical stream; message_stop is the last byte."""
    send = request.send
    events = ChunksToAnthropicEvents(result.model, thinking=thinking)
    await request.start_stream(SSE_HEADERS + gw.answer_headers(ctx, result.deployment, result.records, None))
    start = events.start(Usage(prompt=features.prompt_tokens))
    await send({"type": "http.response.body", "body": b"".join(start), "more_body": True})
    error: ProviderError | None = None
    watcher: asyncio.Future[None] | None = None
    batches = 0
    held: list[bytes] = []
    try:
        async for batch in result.batches():
            batches += 1
            if batches == 2:  # a multi-read answer: now watch for a client that goes away
                watcher = asyncio.ensure_future(request.wait_disconnect())
            elif watcher is not None and watcher.done():
                await result.aclose()
                ctx.finish_cancelled(result.deployment, result.records, result.usage, result.cost_usd)
                return
            out = [event for chunk in batch for event in events.feed(as_dict(chunk))]
            if result.upstream_done:
                held.extend(out)  # sent with message_stop in one write
            elif out:
                await send({"type": "http.response.body", "body": b"".join(held + out), "more_body": True})
                held.clear()
    except ProviderError as exc:
        error = exc
    finally:
        await cancel_quietly(watcher)
    if error is not None:
        kind = KIND_ERROR_TYPES.get(error.kind, "api_error")
        failed = ctx.failure(error, result.records, after_first_byte=True, usage=result.usage, cost=result.cost_usd)
        await ctx.end(
            failed, send({"type": "http.response.body", "body": b"".join(held) + events.error(kind, error.message)})
        )
        return
    # message_stop is the last byte: the spend record is in the spool before it.
    outcome = ctx.success(result.deployment, result.records, result.usage, result.cost_usd, ttft_ms=result.ttft_ms)
    await ctx.end(outcome, send({"type": "http.response.body", "body": b"".join(held + events.finish(result.usage))}))


async def write_error(send: Send, status: int, body: dict[str, Any], headers: Headers) -> None:
    """Errors on /v1/messages in Anthropic's shape, so the anthropic SDK raises its own typed errors."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = str(error.get("message") or "error") if isinstance(error, dict) else "error"
    await send_json(send, status, anthropic_error_body(status, message), headers)
