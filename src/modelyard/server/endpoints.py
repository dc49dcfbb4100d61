"""The non-chat endpoints: `POST /v1/audio/transcriptions`, `/v1/audio/translations`, `/v1/audio/speech`,
`/v1/images/generations` and `/v1/rerank` (also `/v2/rerank`, Cohere's path).

Each is routed, limited, budgeted and logged like chat: the key is checked from the headers before the
body is read (they are keyed routes, server/app.py), the body is bounded, the request becomes a canonical
`EndpointRequest` (schema/endpoints.py) with the units it will be billed for measured here, and
`Router.call_endpoint` walks the deployments of the right `kind` with the executor's one attempt loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelyard.schema.errors import GatewayError

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext
    from modelyard.server.http import Request


async def transcriptions(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raise GatewayError(501, "not implemented yet")


async def translations(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raise GatewayError(501, "not implemented yet")


async def speech(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raise GatewayError(501, "not implemented yet")


async def image_generations(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raise GatewayError(501, "not implemented yet")


async def rerank(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raise GatewayError(501, "not implemented yet")


#: Path → handler, registered by the gateway as keyed routes (authenticate first).
ROUTES = {
    "/v1/audio/transcriptions": transcriptions,
    "/v1/audio/translations": translations,
    "/v1/audio/speech": speech,
    "/v1/images/generations": image_generations,
    "/v1/rerank": rerank,
    "/v2/rerank": rerank,
}
