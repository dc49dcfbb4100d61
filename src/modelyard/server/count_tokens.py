"""`POST /v1/messages/count_tokens`: how many input tokens a Messages request would use (Claude Code asks).

The request is read, validated and authorised exactly as `/v1/messages` is (the same translation, the same
key check of the model and of every deployment the overrides reach, so counting is no way around a key's
model restriction), input guardrails run as they do there (a `block` is the same 422 and nothing goes
upstream; a `redact` counts the redacted request, translated, never the client's bytes), then planned like a
real request. When the deployment a real request would go to first
can count with its provider's own tokenizer (`TokenCounter`: Anthropic), that count is returned; otherwise,
or when the provider's count fails, the gateway's local estimate (accounting/tokens.py, the figure routing
and budgets use). The header `x-modelyard-token-count: provider|estimate` says which.

Counting generates nothing and costs nothing: no spend row, no budget kept reserved (the reservation the
shared admission step makes is given back), and it does not fail over to a second provider.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.providers.base import TokenCounter
from modelyard.schema.chat import ChatRequest
from modelyard.schema.errors import GatewayError, ProviderError
from modelyard.server.codecs.base import Inbound
from modelyard.server.codecs.messages import read_messages
from modelyard.server.guards import HEADER as GUARDRAILS_HEADER
from modelyard.server.http import JSON_HEADERS, Headers, Request
from modelyard.server.pipeline import input_guards

if TYPE_CHECKING:
    from modelyard.config.model import Deployment
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode
_log = logging.getLogger("modelyard.count_tokens")

#: Which count the answer holds: the provider's own tokenizer, or the gateway's estimate.
SOURCE_HEADER = b"x-modelyard-token-count"


async def count_tokens(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    """The handler (route `POST /v1/messages/count_tokens`, keyed, Anthropic's error shape)."""
    body, raw, req, forwarded, _ = read_messages(await request.body(gw.max_body), request, ctx, counting=True)
    features = gw.features(req, request, ctx)
    try:
        await gw.admit(ctx, req.model, features, req.modelyard)
        inbound = Inbound(req, raw)
        input_guards(gw, inbound, ctx)  # as /v1/messages: a block raises before anything goes upstream
        native: dict[str, Any] | None = body
        if inbound.req is not req:  # redacted: counted on the rewritten request, never the client's bytes
            req, native = inbound.req, None
            features = gw.features(req, request, ctx)
        plan = gw.plan(req, request, features, ctx)
        dep = plan.order[0] if plan.order else None
        count = None
        if dep is not None:
            count = await _provider_count(gw, dep, req, native, forwarded)
    finally:
        if gw.access is not None:
            gw.access.release(ctx)  # nothing is generated: no budget stays reserved
    source = b"provider" if count is not None else b"estimate"
    headers: Headers = [*JSON_HEADERS, (SOURCE_HEADER, source), (b"request-id", ctx.request_id.encode())]
    if dep is not None:
        headers.append((b"x-modelyard-model", dep.name.encode()))
    if ctx.guards is not None and (found := ctx.guards.header()) is not None:
        headers.append((GUARDRAILS_HEADER, found))  # what the input checks found (a redaction), as on /v1/messages
    tokens = count if count is not None else features.prompt_tokens
    await request.respond(200, _encode({"input_tokens": tokens}), headers)


async def _provider_count(
    gw: Gateway, dep: Deployment, req: ChatRequest, body: dict[str, Any] | None, headers: dict[str, str]
) -> int | None:
    """The provider's own count for `dep`, or None (no tokenizer endpoint, or it failed: logged). `body`: the
    client's own body, or None when it must not go upstream (an input guardrail rewrote the request)."""
    router = gw.router
    adapter = router.adapters.get(dep.provider)
    if adapter is None or not isinstance(adapter, TokenCounter):
        return None
    native = getattr(adapter, "native_count_tokens_call", None)
    try:
        if (
            native is not None and body is not None
        ):  # the client's own body, only `model` rewritten (nothing lost in translation)
            call = native(dep, {k: v for k, v in body.items() if k not in ("max_tokens", "stream")}, headers)
        else:
            call = adapter.count_tokens_call(dep, req)
        answer, _ = await router.executor.transport.send(call, dep.timeouts, adapter)
        return adapter.parse_count_tokens(dep, answer)
    except (ProviderError, GatewayError) as exc:
        _log.warning("count_tokens at %s failed (%s): answering the local estimate", dep.name, exc)
        return None


__all__ = ["SOURCE_HEADER", "count_tokens"]
