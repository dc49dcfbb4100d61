"""The one request pipeline every model ingress runs on (chat completions, messages, responses).

body (the key was checked before it was read) → `codec.decode` → features → admit → analyse → plan →
execute → `codec.answer`, or the stream pump: batches as they arrive, the last batch held back and sent
with the codec's tail in one write, one disconnect watcher (only once an answer spans more than one read),
the error tail after a break, and the spend record in the spool before the last byte.

A wire format is a codec (server/codecs/); nothing here knows one from another.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from modelyard.routing.executor import StreamResult
from modelyard.routing.features import RequestFeatures, chat_features
from modelyard.routing.reach import request_reach
from modelyard.routing.sticky import SESSION_HEADER, explicit_session, session_key
from modelyard.schema.chat import ChatRequest, Usage
from modelyard.schema.errors import ProviderError
from modelyard.server.codecs.base import Codec, Inbound, StreamEncoder
from modelyard.server.codecs.chat_completions import cached_answer
from modelyard.server.http import JSON_HEADERS, SSE_HEADERS, Headers, Request, Send, always, cancel_quietly, send_json
from modelyard.server.response_cache import (
    HIT,
    MISS,
    SSE_OVERHEAD,
    ResponseCache,
    Ticket,
    answer_body,
    replay_stream,
    usable_body,
)
from modelyard.server.semantic_scope import semantic_namespace

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import ErrorWriter, RequestContext
    from modelyard.server.guards import RequestGuards


class CodecRoute:
    """A route's handler: the pipeline, run with one codec (`Gateway.routes` maps paths to these)."""

    __slots__ = ("codec", "write_error")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        #: This ingress's error writer (its own error shape), for the app's error mapping.
        self.write_error: ErrorWriter = self._write_error

    async def __call__(self, gw: Gateway, request: Request, ctx: RequestContext) -> None:
        codec = self.codec
        inbound = await codec.decode(await request.body(gw.max_body), request, ctx)
        req = inbound.req
        features = inbound.features = gw.features(req, request, ctx)
        await gw.admit(ctx, req.model, features, req.modelyard)
        table = gw.router.table
        guards = input_guards(gw, inbound, ctx)
        req = inbound.req
        if table.sticky(req.model):  # the session is looked for, and hashed, only for a model that sticks
            source = inbound.native.body if inbound.native is not None else inbound.raw
            explicit = explicit_session(request.header(SESSION_HEADER), source)
            features.session = session_key(ctx.key_id, explicit, req)
        ticket: Ticket | None = None
        cache = gw.response_cache
        if cache is not None:
            ticket = cache.ticket(gw, codec.wire, inbound, request, ctx, guards)
            if (
                ticket is not None
                and ticket.lookup
                and await _answer_from_response_cache(gw, request, ctx, codec, inbound, cache, ticket)
            ):
                return
        intelligence = gw.intelligence
        cache_ns = (
            semantic_namespace(req.model, ctx.key_id, inbound.raw)
            if codec.semantic_cache and not req.stream and req.model in intelligence.cached_models
            else None
        )
        # A cached answer was never checked against this request's output guardrails: not served then.
        use_cache = guards is None or not guards.has_output
        insight = await gw.analyse(req, features, ctx, cache_ns=cache_ns if use_cache else None)
        if insight is not None and insight.cached is not None:
            await _answer_from_cache(gw, request, ctx, insight.cached)
            return
        plan = gw.plan(req, request, features, ctx, insight)
        timeout_s = gw.timeout_override(request)
        router = gw.router
        queue = gw.queue_policy.ticket(request, ctx.key, req.modelyard, timeout_s)
        if req.stream:
            vet_chunks = guards.vet_chunks if guards is not None and guards.buffers_stream else None
            result = await router.stream(
                req,
                inbound.raw,
                features,
                plan=plan,
                timeout_s=timeout_s,
                native=inbound.native,
                vet_chunks=vet_chunks,
                queue=queue,
            )
            ctx.queue_ms = result.queue_ms
            # result.aclose: a no-op after a full answer; else the upstream call and its slot are freed.
            await always(pump(gw, request, ctx, codec, inbound, result, ticket), result.aclose)
            return
        vet = guards.vet if guards is not None and guards.has_output else None
        success = await router.complete(
            req, inbound.raw, features, plan=plan, timeout_s=timeout_s, native=inbound.native, vet=vet, queue=queue
        )
        ctx.queue_ms = success.queue_ms
        completion = success.completion
        if cache_ns is not None and insight is not None and insight.vector is not None and completion.native is None:
            intelligence.remember(cache_ns, insight, (completion.body, success.deployment, completion.usage))
        body = codec.answer(inbound, success, ctx)
        cost = success.cost_usd
        headers = JSON_HEADERS + gw.answer_headers(ctx, success.deployment, success.records, cost)
        extra = codec.headers(ctx)
        if extra:
            headers.extend(extra)
        if ticket is not None:
            headers.append(MISS)
            # A local put (and, with Redis, a queued background write): nothing waits on Redis here. The next
            # request on this replica finds it at once, on the others about one Redis round trip later.
            if ticket.store and cache is not None:
                await cache.keep(ticket, body, completion, success.deployment.name, explained=ctx.explain is not None)
        # The spend record (and the codec's own record) before the answer goes out; the rest after it.
        outcome = ctx.success(success.deployment, success.records, completion.usage, cost, ttft_ms=None)
        pending = codec.commit(inbound, ctx)
        if pending is not None:
            await pending
        await ctx.end(outcome, request.respond(200, body, headers))

    async def _write_error(self, send: Send, status: int, body: dict[str, Any], headers: Headers) -> None:
        await send_json(send, status, self.codec.error_body(status, body), headers)


def input_guards(gw: Gateway, inbound: Inbound, ctx: RequestContext) -> RequestGuards | None:
    """The request's guardrails (model group's, key's, its own), with its input checks run: a block raises
    (nothing was sent upstream), a redaction rewrites `inbound` (its `req`, `raw`, and no native bytes).
    Every route that reads a model request runs this one step (the pipeline, `/v1/messages/count_tokens`),
    so no route is a way around them. None when no guardrails apply (not even looked for without any)."""
    req = inbound.req
    key = ctx.key
    if not (gw.guards.models or req.modelyard is not None or (key is not None and key.guardrails)):
        return None
    guards = gw.guards.for_request(req, ctx, gw.router.table.resolve(req.model))
    if guards is not None:
        ctx.guards = guards
        guards.check_input(inbound)
    return guards


async def pump(
    gw: Gateway,
    request: Request,
    ctx: RequestContext,
    codec: Codec,
    inbound: Inbound,
    result: StreamResult,
    ticket: Ticket | None = None,
) -> None:
    """SSE out: batches as they come; a failure after the first byte ends with the codec's error event,
    never a silent clean end. The batch after which the provider said it was done is held back and sent with
    the codec's tail (usage, `[DONE]`, `message_stop`) in one write; that write is the last byte, and the
    spend record is in the spool before it. With a response-cache `ticket` that may store, what was sent is
    kept (up to a bound) and stored as the answer before the last byte (a local put; Redis is written in the
    background)."""
    encoder = codec.stream(inbound, result)
    headers = SSE_HEADERS + gw.answer_headers(ctx, result.deployment, result.records, None)
    extra = codec.headers(ctx)
    if extra:
        headers.extend(extra)
    sent = _Sent.for_ticket(gw.response_cache, ticket, headers)
    try:
        # A stream that ended before its first byte still answers with its headers.
        await always(_stream_out(gw, request, ctx, codec, inbound, result, encoder, headers, sent), request.flush_start)
    finally:
        sent.release()  # the bytes kept for the cache go back to its recording budget, however the stream ended


async def _stream_out(
    gw: Gateway,
    request: Request,
    ctx: RequestContext,
    codec: Codec,
    inbound: Inbound,
    result: StreamResult,
    encoder: StreamEncoder,
    headers: Headers,
    sent: _Sent,
) -> None:
    """`pump`'s stream: the start, each batch (`_forward`), then the last write, the error event or the tail
    (usage, cost, the end marker) with the held-back batch; the spend record (and the cache's copy) first."""
    send = request.send_body
    await request.start_stream(headers)
    start = encoder.start()
    if start:
        sent.add(start)
        await send(start, True)
    forwarded = await _forward(request, ctx, result, encoder, sent)
    if forwarded is None:
        return  # the client went away: its spend row is written
    held, error = forwarded
    cost = result.cost_usd
    if error is not None:
        failed = ctx.failure(error, result.records, after_first_byte=True, usage=result.usage, cost=cost)
        await ctx.end(failed, send(held + encoder.error(error)))
        return
    tail = held + encoder.finish(result.usage, cost)
    outcome = ctx.success(result.deployment, result.records, result.usage, cost, ttft_ms=result.ttft_ms)
    if sent.wanted:
        await sent.store(gw, tail, result)
    pending = codec.commit(inbound, ctx)
    if pending is not None:
        await pending
    await ctx.end(outcome, send(tail))


async def _forward(
    request: Request, ctx: RequestContext, result: StreamResult, encoder: StreamEncoder, sent: _Sent
) -> tuple[bytes, ProviderError | None] | None:
    """The batches as they come (through the stream filter when guardrails screen the output), the one after
    which the provider said it was done held back: what is left to send and the error that ended the stream
    (a provider's, or the filter's block), or None when the client went away. Cleanup that awaits runs after
    the `except` blocks, not in them (hot_path: the compiled build)."""
    send = request.send_body
    held = b""
    batches = 0
    error: ProviderError | None = None
    stopped: BaseException | None = None
    gone = False
    watcher: asyncio.Future[None] | None = None
    guards = ctx.guards
    screen = guards.stream_filter() if guards is not None else None
    source = result.batches() if screen is None else screen.batches(result.batches())
    try:
        async for batch in source:
            batches += 1
            if watcher is None:
                # Watch for a client that goes away only once the answer spans more than one read: an answer
                # that arrives at once needs no watcher (and saves a task per request).
                watcher = asyncio.ensure_future(request.wait_disconnect()) if batches > 1 else None
            elif watcher.done():
                gone = True
                break
            body = encoder.batch(batch)
            if result.upstream_done:
                held += body
            elif body:
                sent.add(held + body)
                await send(held + body, True)
                held = b""
    except ProviderError as exc:
        error = exc
    except BaseException as exc:
        stopped = exc  # the server stopping, a write to a client gone: cleaned up below, then raised
    if gone or isinstance(stopped, asyncio.CancelledError):
        # The client went away, or the server is stopping and this stream outlived the drain deadline: what was
        # streamed was used upstream, so its spend row (estimated from the text when the provider sent no
        # usage) is written.
        await result.aclose()
        reason = "client_disconnected" if stopped is None else "server_stopping"
        ctx.finish_cancelled(result.deployment, result.records, result.usage, result.cost_usd, reason)
    await cancel_quietly(watcher)
    if screen is not None:
        await source.aclose()  # a client gone mid-stream: the filter reports what it found so far
    if stopped is not None:
        try:
            raise stopped
        finally:
            stopped = None  # no cycle through its traceback to this frame
    if gone:
        return None
    if screen is not None and screen.blocked is not None:
        error = screen.error()  # the stream ends with the error event; no byte of the blocked text was sent
        result.records[-1].outcome = error.kind.value
    return held, error


async def _answer_from_cache(gw: Gateway, request: Request, ctx: RequestContext, cached: Any) -> None:
    """A semantic-cache hit (chat only: `Codec.semantic_cache`): the earlier answer, at no cost."""
    body, dep, _ = cached
    headers = JSON_HEADERS + gw.answer_headers(ctx, dep, [], 0.0)
    headers.append((b"x-modelyard-cache", b"hit"))
    await ctx.end(ctx.success(dep, [], Usage(), 0.0, ttft_ms=None), request.respond(200, cached_answer(body), headers))


async def _answer_from_response_cache(
    gw: Gateway,
    request: Request,
    ctx: RequestContext,
    codec: Codec,
    inbound: Inbound,
    cache: ResponseCache,
    ticket: Ticket,
) -> bool:
    """A response-cache hit, JSON or replayed as a stream, in one write: usage as it was, cost 0, no
    attempts; the spend row names the original deployment with no tokens (nothing was processed). False
    (a miss) when nothing is stored or its deployment is no longer configured."""
    entry = await cache.lookup(ticket)
    if entry is None:
        return False
    table = gw.router.table
    req = inbound.req
    dep = table.deployments.get(entry.deployment)
    answer = usable_body(ticket.wire, entry)
    # Served only by a deployment this request could reach now (a reload may have taken it out of the model),
    # and only an answer that reads as one (an entry in Redis is not ours to trust blindly).
    if dep is None or answer is None or entry.deployment not in request_reach(table, req.model, req.modelyard):
        cache.missed()
        return False
    stream = bool(req.stream)
    if stream:
        body = replay_stream(ticket.wire, answer, entry, inbound)
    else:
        body = answer_body(ticket.wire, answer, entry, inbound)
    headers = (SSE_HEADERS if stream else JSON_HEADERS) + gw.answer_headers(ctx, dep, [], None if stream else 0.0)
    headers.extend(codec.headers(ctx))
    headers.append(HIT)
    pending = codec.commit(inbound, ctx)  # the Responses API stores this response under its own id
    if pending is not None:
        await pending
    if not stream:
        outcome = ctx.success(dep, [], Usage(), 0.0, ttft_ms=None)
        await ctx.end(outcome, request.respond(200, body, headers))
        return True
    await request.start_stream(headers)
    outcome = ctx.success(dep, [], Usage(), 0.0, ttft_ms=ctx.elapsed_ms)
    await ctx.end(outcome, request.send_body(body))
    return True


class _Sent:
    """A streamed answer's bytes as sent, kept for the response cache while `keeping` (a ticket that may store,
    within `limit`, and within the cache's recording budget shared by all streams: past either the answer is
    not stored and nothing more is kept). `release` gives the bytes back to the budget."""

    __slots__ = ("cache", "keeping", "limit", "parts", "size", "ticket", "wanted")

    def __init__(self, cache: ResponseCache | None, ticket: Ticket | None, limit: int) -> None:
        self.cache = cache
        self.ticket = ticket
        #: The request may be stored; `keeping` turns False once the answer is over a bound.
        self.wanted = self.keeping = cache is not None and ticket is not None and ticket.store
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    @classmethod
    def for_ticket(cls, cache: ResponseCache | None, ticket: Ticket | None, headers: Headers) -> _Sent:
        """The recorder for a stream; the cache's `miss` header added when the request is cacheable."""
        if ticket is None:
            return cls(None, None, 0)
        headers.append(MISS)
        return cls(cache, ticket, ticket.max_bytes * SSE_OVERHEAD)

    def add(self, data: bytes) -> None:
        if not self.keeping:
            return
        assert self.cache is not None
        self.size += len(data)
        if self.size > self.limit or not self.cache.reserve_recording(len(data)):
            self.keeping = False  # counted as too large when the stream ends
            self.release()
        else:
            self.parts.append(data)

    def release(self) -> None:
        if self.parts and self.cache is not None:
            self.cache.release_recording(sum(len(part) for part in self.parts))
        self.parts = []

    async def store(self, gw: Gateway, tail: bytes, result: StreamResult) -> None:
        """The whole stream (with its `tail`) read back into an answer and stored, when it fits."""
        self.add(tail)
        cache, ticket = gw.response_cache, self.ticket
        if cache is None or ticket is None:
            return
        if self.keeping:
            await cache.keep_stream(ticket, b"".join(self.parts), result.usage, result.deployment.name)
        else:
            cache.stats.too_large += 1


def features_for(req: ChatRequest, request: Request, key_name: str | None) -> RequestFeatures:
    """The routing features of a canonical request, with the task and tags the client's headers name."""
    tags_header = request.header(b"x-modelyard-tags")
    tags = tuple(t.strip() for t in tags_header.split(",") if t.strip()) if tags_header else ()
    return chat_features(req, task=request.header(b"x-modelyard-task"), key_name=key_name, tags=tags)
