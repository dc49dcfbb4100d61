"""`/v1/responses` routes: POST (the pipeline with the Responses codec), and the stored objects:
GET /v1/responses/{id}, DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items.

Every route is keyed (the key is checked from the headers before anything else) and every lookup is scoped
by that key: another key's response id is a 404, exactly like an unknown one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

import msgspec

from modelyard.schema.errors import GatewayError
from modelyard.server.codecs.responses import Responses
from modelyard.server.http import JSON_HEADERS, Request
from modelyard.server.pipeline import CodecRoute
from modelyard.state.conversations import Conversations, ResponseStore, not_found

if TYPE_CHECKING:
    from modelyard.config.model import Config
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext
    from modelyard.server.services import Services

_encode = msgspec.json.Encoder().encode

PREFIX = "/v1/responses/"
#: `limit` of GET …/input_items (OpenAI's range and default).
MAX_LIST = 100
DEFAULT_LIST = 20


def build_conversations(config: Config, services: Services | None) -> Conversations | None:
    """The conversation store on the gateway's store (None without one: nothing is kept)."""
    store = services.store if services is not None else None
    if store is None or not hasattr(store, "response_chain"):
        return None
    settings = config.server.responses
    return Conversations(cast(ResponseStore, store), ttl_s=settings.ttl_s, max_per_key=settings.max_per_key)


class ResponseObjects:
    """GET/DELETE `/v1/responses/{id}` and GET `/v1/responses/{id}/input_items` (one handler: the path
    carries the id)."""

    __slots__ = ("codec",)

    def __init__(self, codec: Responses) -> None:
        self.codec = codec

    async def __call__(self, gw: Gateway, request: Request, ctx: RequestContext) -> None:
        rest = request.path[len(PREFIX) :]
        response_id, _, tail = rest.partition("/")
        conversations = self.codec.conversations
        if not response_id or tail not in ("", "input_items") or len(response_id) > 256:
            raise GatewayError(404, f"Unknown path {request.path[:300]}", code="not_found")
        if conversations is None or not self.codec.storing_on(ctx):
            raise not_found(response_id)
        method = request.method
        if tail == "input_items" and method == "GET":
            await self._input_items(gw, request, conversations, ctx, response_id)
        elif tail == "" and method == "GET":
            stored = await conversations.get(ctx.key_id, response_id)
            if stored.upstream is not None:  # a pass-through response: the upstream holds its body
                await request.respond(200, await _upstream(gw, stored.upstream, "GET", response_id), list(JSON_HEADERS))
                return
            if stored.response is None:
                raise not_found(response_id)
            await request.respond(200, _encode(stored.response), list(JSON_HEADERS))
        elif tail == "" and method == "DELETE":
            stored = await conversations.get(ctx.key_id, response_id)
            if stored.upstream is not None:  # deleted upstream too, so nothing of it is left anywhere
                await _upstream(gw, stored.upstream, "DELETE", response_id)
            await conversations.delete(ctx.key_id, response_id)
            body = {"id": response_id, "object": "response", "deleted": True}
            await request.respond(200, _encode(body), list(JSON_HEADERS))
        else:
            raise GatewayError(405, f"Method {method} not allowed on {request.path[:300]}", code="method_not_allowed")

    async def _input_items(
        self, gw: Gateway, request: Request, conversations: Conversations, ctx: RequestContext, response_id: str
    ) -> None:
        query = request.query
        limit = _limit(query.get("limit"))
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise GatewayError(400, "'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
        stored = await conversations.get(ctx.key_id, response_id)
        if stored.upstream is not None:
            after = query.get("after")
            params = {"limit": str(limit), "order": order, **({"after": after[:256]} if after else {})}
            tail = "/input_items?" + urlencode(params)
            await request.respond(
                200, await _upstream(gw, stored.upstream, "GET", response_id, tail), list(JSON_HEADERS)
            )
            return
        items: list[dict[str, Any]] = list(stored.input_items)
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after is not None:
            ids = [item.get("id") for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
        await request.respond(200, _encode(body), list(JSON_HEADERS))


async def _upstream(gw: Gateway, deployment: str, method: str, response_id: str, tail: str = "") -> bytes:
    """The upstream's answer for a response it holds (the deployment that served it, with its credentials);
    an upstream error becomes the gateway's error for it, like any provider error."""
    dep = gw.config.deployment(deployment)
    adapter = gw.router.adapters.get(dep.provider) if dep is not None else None
    build = getattr(adapter, "response_object_call", None)
    if dep is None or adapter is None or build is None:  # the deployment left the config since
        raise not_found(response_id)
    body, _ = await gw.router.executor.transport.send(build(dep, method, response_id, tail), dep.timeouts, adapter)
    return body


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIST
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST:
        raise GatewayError(
            400, f"'limit' must be an integer from 1 to {MAX_LIST}.", param="limit", code="invalid_value"
        )
    return limit


def responses_routes(config: Config, services: Services | None) -> tuple[CodecRoute, ResponseObjects]:
    """The POST handler (the pipeline with the Responses codec) and the stored-object handler."""
    codec = Responses(build_conversations(config, services), config.server.responses)
    return CodecRoute(codec), ResponseObjects(codec)


__all__ = ["PREFIX", "ResponseObjects", "build_conversations", "responses_routes"]
