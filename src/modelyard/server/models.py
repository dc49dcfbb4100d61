"""`GET /v1/models` and `GET /v1/models/{id}`: the models the caller's key may use, in OpenAI's shape, or in
Anthropic's when the request carries `anthropic-version` (the anthropic SDK's `models.list/retrieve`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.schema.errors import GatewayError
from modelyard.server.anthropic_answer import anthropic_error_body
from modelyard.server.http import JSON_HEADERS, Request, send_json

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

access_log = logging.getLogger("modelyard.access")
_encode = msgspec.json.Encoder().encode
PREFIX = "/v1/models/"


async def list_models(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    """The models the caller's key may use (all of them for an unrestricted key or in open mode)."""
    names = visible_models(gw, ctx)
    if _anthropic(request):
        data = [_anthropic_model(gw, name) for name in names]
        body: dict[str, Any] = {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    else:
        body = {"object": "list", "data": [_openai_model(gw, name) for name in names]}
    await request.respond(200, _encode(body), list(JSON_HEADERS))


async def retrieve_model(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    """One model the key may use, else a 404 that does not say whether it exists."""
    name = request.path[len(PREFIX) :]
    anthropic = _anthropic(request)
    if name not in visible_models(gw, ctx):
        message = f"The model `{name[:64]}` does not exist or you do not have access to it."
        if anthropic:  # in Anthropic's error shape, so its SDK raises NotFoundError
            access_log.info("%s %s model=%s status=404", request.method, request.path[:256], name[:64])
            request.started = True
            await send_json(request.send, 404, anthropic_error_body(404, message))
            return
        raise GatewayError(404, message, param="model", code="model_not_found")
    body = _anthropic_model(gw, name) if anthropic else _openai_model(gw, name)
    await request.respond(200, _encode(body), list(JSON_HEADERS))


def visible_models(gw: Gateway, ctx: RequestContext) -> list[str]:
    public = gw.router.table.public_models
    allowed = ctx.key.models if ctx.key is not None else None
    return public if allowed is None else [name for name in public if name in allowed]


def _anthropic(request: Request) -> bool:
    return request.header(b"anthropic-version") is not None


def _openai_model(gw: Gateway, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": gw.started_at, "owned_by": "modelyard"}


def _anthropic_model(gw: Gateway, name: str) -> dict[str, Any]:
    created = datetime.fromtimestamp(gw.started_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": name, "display_name": name, "created_at": created}
