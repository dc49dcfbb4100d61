"""`POST /v1/embeddings`: the executor's one attempt loop (retry policy, failover, RPM/TPM windows), no
streaming, no hedging."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from modelyard.accounting.tokens import count_text
from modelyard.routing.features import RequestFeatures
from modelyard.server.http import JSON_HEADERS, Request
from modelyard.server.validation import decode_body, validate_embeddings

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode


async def embeddings(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raw = decode_body(await request.body(gw.max_body))
    req = validate_embeddings(raw)
    texts = [req.input] if isinstance(req.input, str) else [t for t in req.input if isinstance(t, str)]
    features = RequestFeatures(prompt_tokens=sum(count_text(t) for t in texts), kind="embedding", key_name=ctx.key_name)
    await gw.admit(ctx, req.model, features)
    success = await gw.router.embed(req, raw, features, timeout_s=gw.timeout_override(request))
    dep, records, cost = success.deployment, success.records, success.cost_usd
    headers = JSON_HEADERS + gw.answer_headers(ctx, dep, records, cost)
    await ctx.end(
        ctx.success(dep, records, success.completion.usage, cost, ttft_ms=None),
        request.respond(200, _encode(success.completion.body), headers),
    )
