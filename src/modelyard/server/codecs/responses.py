"""OpenAI Responses API (`POST /v1/responses`), so the `openai` SDK's `client.responses.*`, the Agents SDK and
Codex CLI work against the gateway.

Two paths, chosen per request:
- **pass-through**: when every OpenAI deployment the request may reach speaks the Responses API
  (`options: {responses_api: true}`, and `hosted_tools: true` if the request carries hosted tools such as
  web_search, which the provider bills unpriced) and no history must be added here, the client's body travels as sent
  (only `model` rewritten) and the client gets the upstream's bytes back. Its response id lives upstream: it is
  recorded with the key that made it, and a `previous_response_id` naming it pins the request to that
  deployment (and is a 404 for every other key). Attempts at deployments of other wire formats are
  translated as usual.
- **translated**: the request becomes a canonical chat request (server/responses_request.py), the answer a
  Response object or the Responses event sequence; the conversation (input and output items) is kept in the
  gateway's store when storing is on (state/conversations.py), and `previous_response_id` prepends it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from modelyard.providers.base import new_id
from modelyard.providers.openai import RESPONSES_FORMAT
from modelyard.routing.executor import Chunk, NativeBody, StreamResult, Success, as_dict
from modelyard.routing.reach import request_reach
from modelyard.schema.chat import Usage
from modelyard.schema.errors import GatewayError, ProviderError
from modelyard.server.codecs.base import NO_HEADERS, Inbound, StreamEncoder
from modelyard.server.http import Headers, Request
from modelyard.server.responses_answer import ChunksToResponseEvents, completion_to_response
from modelyard.server.responses_request import (
    InputItem,
    ResponsesRequest,
    Translation,
    input_items,
    item_dicts,
    responses_to_chat,
    validate_responses,
)
from modelyard.server.validation import decode_body, validate_chat
from modelyard.state.conversations import Conversations, not_found

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from modelyard.config.model import ResponsesSettings
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

WIRE = RESPONSES_FORMAT


class ResponsesState:
    """One request's Responses-specific state (`Inbound.state`)."""

    __slots__ = (
        "deployment",
        "input_items",
        "key_id",
        "native",
        "output",
        "req",
        "response",
        "response_id",
        "storing",
        "translation",
        "upstream_id",
    )

    def __init__(self, req: ResponsesRequest, translation: Translation, key_id: str | None) -> None:
        self.req = req
        self.translation = translation
        self.key_id = key_id
        self.response_id = new_id("resp_")
        self.input_items: list[dict[str, Any]] = []
        self.storing = False
        self.native = False
        self.response: dict[str, Any] | None = None
        self.output: list[dict[str, Any]] = []
        self.upstream_id: str | None = None
        self.deployment: str | None = None


class Responses:
    """The `openai-responses` codec (one per gateway; holds the conversation store, or None without one)."""

    wire: ClassVar[str] = WIRE
    semantic_cache: ClassVar[bool] = False

    def __init__(self, conversations: Conversations | None, settings: ResponsesSettings) -> None:
        self.conversations = conversations
        self.settings = settings
        #: (resolved model, hosted) → (the routing table it was computed on, pass-through or not). Only
        #: configured names are kept (a client's made-up model names never grow it); a new table recomputes.
        self._passes: dict[tuple[str, bool], tuple[object, bool]] = {}

    def storing_on(self, ctx: RequestContext) -> bool:
        """Whether responses are kept: the operator's switch, and by default not in open mode."""
        if self.conversations is None or self.settings.store is False:
            return False
        if self.settings.store is True:
            return True
        access = ctx.gateway.access
        return access is not None and not access.open

    async def decode(self, body: bytes, request: Request, ctx: RequestContext) -> Inbound:
        client = decode_body(body)
        req = validate_responses(client)
        items = input_items(req)
        storing = self.storing_on(ctx)
        history: list[InputItem] | None = None
        pinned: str | None = None
        if req.previous_response_id is not None:
            history, pinned = await self._history(req.previous_response_id, storing, ctx)
        if storing and req.store is not False:
            await self._quota(ctx)
        translation = responses_to_chat(req, items, history)
        raw = translation.chat
        if pinned is not None:  # the conversation lives upstream, on that deployment only
            raw["modelyard"] = {**(raw.get("modelyard") or {}), "candidates": [pinned]}
        chat = validate_chat(raw)
        state = ResponsesState(req if storing else msgspec.structs.replace(req, store=False), translation, ctx.key_id)
        state.storing = storing and req.store is not False
        if state.storing:  # the items are kept only with the response
            state.input_items = item_dicts(items)
        hosted = bool(translation.dropped_tools)
        if pinned is not None and hosted and not _speaks(ctx, pinned, hosted):
            raise GatewayError(
                400,
                "This conversation lives on a deployment that does not take hosted tools "
                f"({', '.join(sorted(set(translation.dropped_tools)))}); send it without them.",
                param="tools",
                code="invalid_value",
            )
        native = None
        if pinned is not None or (history is None and self._passes_through(ctx, chat.model, chat.modelyard, hosted)):
            native, state.native = NativeBody(WIRE, client, {}, body), True
        return Inbound(chat, raw, native, state)

    async def _history(
        self, previous_id: str, storing: bool, ctx: RequestContext
    ) -> tuple[list[InputItem] | None, str | None]:
        """(translated history, or the deployment holding it upstream). Unknown, expired or another key's: 404."""
        if self.conversations is None or not storing:
            raise not_found(previous_id, "previous_response_id")
        conversation = await self.conversations.history(ctx.key_id, previous_id)
        if conversation.upstream is not None:
            return None, conversation.upstream
        stored = ResponsesRequest(model="-", input=conversation.items)
        return input_items(stored), None

    async def _quota(self, ctx: RequestContext) -> None:
        if self.conversations is not None:
            await self.conversations.check_quota(ctx.key_id)

    def _passes_through(self, ctx: RequestContext, model: str, overrides: Any, hosted: bool) -> bool:
        """Every OpenAI deployment the request may reach speaks the Responses API (and there is one), and
        takes hosted tools when the request carries some (an operator's choice: they are billed unpriced).
        Without overrides the answer depends on the config alone, so it is computed once per model."""
        table = ctx.gateway.router.table
        target = table.resolve(model)  # keyed by the target: a wildcard alias's names are the client's to invent
        if overrides is None:
            cached = self._passes.get((target, hosted))
            if cached is not None and cached[0] is table:
                return cached[1]
        reach = request_reach(table, target, overrides)
        openai = [n for n in reach if n in table.deployments and _responses_wire(ctx, n)]
        passes = bool(openai) and all(_speaks(ctx, name, hosted) for name in openai)
        if overrides is None and (target in table.groups or target in table.deployments):
            self._passes[(target, hosted)] = (table, passes)
        return passes

    def headers(self, ctx: RequestContext) -> Headers:
        return NO_HEADERS

    def answer(self, inbound: Inbound, success: Success, ctx: RequestContext) -> bytes:
        state: ResponsesState = inbound.state
        completion = success.completion
        state.deployment = success.deployment.name
        if completion.native is not None:
            upstream_id = completion.body.get("id")
            state.upstream_id = upstream_id if isinstance(upstream_id, str) else None
            return completion.native
        response = completion_to_response(
            state.req, state.translation, completion.body, completion.usage, success.cost_usd, state.response_id
        )
        state.response, state.output = response, response["output"]
        return _encode(response)

    def stream(self, inbound: Inbound, result: StreamResult) -> StreamEncoder:
        state: ResponsesState = inbound.state
        state.deployment = result.deployment.name
        if result.native is not None:
            return NativeEvents(state)
        return TranslatedEvents(ChunksToResponseEvents(state.req, state.translation, state.response_id), state)

    def commit(self, inbound: Inbound, ctx: RequestContext) -> Awaitable[None] | None:
        """Store the response before its last byte, so a `previous_response_id` right after finds it."""
        state: ResponsesState = inbound.state
        conversations = self.conversations
        if not state.storing or conversations is None:
            return None
        req = state.req
        if state.upstream_id is not None:  # pass-through: only who owns the id, and where it lives
            return conversations.save(
                state.key_id,
                state.upstream_id,
                model=req.model,
                previous_id=req.previous_response_id,
                input_items=[],
                output_items=[],
                response=None,
                upstream=state.deployment,
            )
        if state.response is None:
            return None
        return conversations.save(
            state.key_id,
            state.response_id,
            model=req.model,
            previous_id=req.previous_response_id,
            input_items=state.input_items,
            output_items=state.output,
            response=state.response,
        )

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return body  # OpenAI's shape already


def _responses_wire(ctx: RequestContext, deployment: str) -> bool:
    """Whether `deployment`'s adapter can forward Responses bodies at all (OpenAI's, and adapters built on it
    such as Azure's): its native formats include the Responses wire."""
    dep = ctx.gateway.router.table.deployments.get(deployment)
    adapter = ctx.gateway.router.adapters.get(dep.provider) if dep is not None else None
    return RESPONSES_FORMAT in getattr(adapter, "native_formats", ())


def _speaks(ctx: RequestContext, deployment: str, hosted: bool) -> bool:
    """Whether `deployment` takes Responses bodies as sent (and their hosted tools, when there are some)."""
    dep = ctx.gateway.router.table.deployments.get(deployment)
    options = dep.options if dep is not None and _responses_wire(ctx, deployment) else None
    if not getattr(options, "responses_api", False):
        return False
    return not hosted or bool(getattr(options, "hosted_tools", False))


class TranslatedEvents:
    """The Responses event sequence built from canonical chunks; `response.completed` is the last byte."""

    __slots__ = ("_events", "_state")

    def __init__(self, events: ChunksToResponseEvents, state: ResponsesState) -> None:
        self._events = events
        self._state = state

    def start(self) -> bytes:
        return b"".join(self._events.start())

    def batch(self, chunks: list[Chunk]) -> bytes:
        feed = self._events.feed
        return b"".join([event for chunk in chunks for event in feed(as_dict(chunk))])

    def finish(self, usage: Usage, cost: float) -> bytes:
        out = b"".join(self._events.finish(usage, cost))
        state = self._state
        state.output = self._events.output
        state.response = self._events.final
        return out

    def error(self, error: ProviderError) -> bytes:
        return b"".join(self._events.fail(error.kind, error.message))


_CREATED = b"event: response.created\n"


class NativeEvents:
    """The upstream's own events, framed by its adapter: passed on byte for byte (the response id is read
    from `response.created`, to record who owns it)."""

    __slots__ = ("_seen", "_state")

    def __init__(self, state: ResponsesState) -> None:
        self._state = state
        self._seen = 0  # events passed on: the sequence number of an error event we add

    def start(self) -> bytes:
        return b""

    def batch(self, chunks: list[Chunk]) -> bytes:
        state = self._state
        self._seen += len(chunks)
        if state.upstream_id is None:
            for chunk in chunks:
                if isinstance(chunk, msgspec.Raw) and bytes(memoryview(chunk)[: len(_CREATED)]) == _CREATED:
                    state.upstream_id = _response_id(bytes(memoryview(chunk)))
                    break
        return b"".join(chunks)  # type: ignore[arg-type]  # msgspec.Raw is a bytes-like buffer

    def finish(self, usage: Usage, cost: float) -> bytes:
        return b""  # response.completed came from the upstream, in the held last batch

    def error(self, error: ProviderError) -> bytes:
        body = {
            "type": "error",
            "code": error.kind.value,
            "message": error.message,
            "param": None,
            "sequence_number": self._seen,
        }
        return b"event: error\ndata: " + _encode(body) + b"\n\n"


def _response_id(frame: bytes) -> str | None:
    _, _, data = frame.partition(b"\ndata: ")
    try:
        payload = _decode(data.strip())
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    response = payload.get("response") if isinstance(payload, dict) else None
    found = response.get("id") if isinstance(response, dict) else None
    return found if isinstance(found, str) else None


__all__ = ["WIRE", "NativeEvents", "Responses", "ResponsesState", "TranslatedEvents"]
