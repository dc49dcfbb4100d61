"""The non-chat endpoints: `POST /v1/audio/transcriptions`, `/v1/audio/translations`, `/v1/audio/speech`,
`/v1/images/generations` and `/v1/rerank` (also `/v2/rerank`, Cohere's path).

Each is routed, limited, budgeted and logged like chat: the key is checked from the headers before the
body is read (they are keyed routes, server/app.py), the body is bounded, the request becomes a canonical
`EndpointRequest` (schema/endpoints.py) with the units it will be billed for measured here, and
`Router.call_endpoint` walks the deployments of the right `kind` with the executor's one attempt loop.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.accounting.tokens import count_text
from modelyard.routing.features import RequestFeatures
from modelyard.schema.chat import Usage
from modelyard.schema.endpoints import ENDPOINT_KINDS, Endpoint, EndpointRequest
from modelyard.schema.errors import GatewayError
from modelyard.server.audio_length import audio_seconds
from modelyard.server.endpoint_forms import Form, read_form
from modelyard.server.http import JSON_HEADERS, Headers, Request
from modelyard.server.validation import (
    decode_body,
    endpoint_model,
    validate_image_generation,
    validate_rerank,
    validate_speech,
    validate_transcription_fields,
)

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode

#: An upload's bound (OpenAI's own limit for audio files); a gateway whose `server.max_body_bytes` is larger
#: takes uploads up to that instead.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
#: Speech audio goes to the client in pieces of this size (the SDKs' `iter_bytes` / `stream_to_file`).
AUDIO_CHUNK = 64 * 1024
#: Documents per rerank search unit (Cohere bills one unit per query and up to 100 documents).
DOCUMENTS_PER_UNIT = 100


def upload_limit(gw: Gateway) -> int:
    return max(MAX_UPLOAD_BYTES, gw.max_body)


async def transcriptions(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _audio_upload(gw, request, ctx, "audio/transcriptions")


async def translations(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _audio_upload(gw, request, ctx, "audio/translations")


async def _audio_upload(gw: Gateway, request: Request, ctx: RequestContext, endpoint: Endpoint) -> None:
    form = await read_form(request, file_field="file", file_limit=upload_limit(gw))
    fields = form_fields(form)
    model = endpoint_model(fields)
    upload = form.file
    if upload is None:
        raise GatewayError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    if not upload.data:
        raise GatewayError(400, "`file` is empty", param="file", code="invalid_value")
    validate_transcription_fields(fields)
    seconds = await audio_seconds(upload.data, upload.filename)
    prompt = fields.get("prompt")
    tokens = count_text(prompt) if isinstance(prompt, str) else 0
    req = EndpointRequest(
        endpoint=endpoint, model=model, fields=fields, file=upload, units=Usage(audio_seconds=seconds)
    )
    await _serve(gw, request, ctx, req, tokens)


async def speech(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raw = decode_body(await request.body(gw.max_body))
    model = endpoint_model(raw)
    text = validate_speech(raw)
    req = EndpointRequest(endpoint="audio/speech", model=model, fields=raw, units=Usage(characters=len(text)))
    await _serve(gw, request, ctx, req, count_text(text))


async def image_generations(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raw = decode_body(await request.body(gw.max_body))
    model = endpoint_model(raw)
    n = validate_image_generation(raw)
    req = EndpointRequest(endpoint="images/generations", model=model, fields=raw, units=Usage(images=n))
    await _serve(gw, request, ctx, req, count_text(raw["prompt"]))


async def rerank(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    raw = decode_body(await request.body(gw.max_body))
    model = endpoint_model(raw)
    texts = validate_rerank(raw)
    units = Usage(search_units=search_units(len(texts)))
    # Documents go on as text (an object's `text`, else its fields as lines): every rerank wire takes strings.
    fields = {**raw, "documents": texts}
    req = EndpointRequest(endpoint="rerank", model=model, fields=fields, units=units)
    await _serve(gw, request, ctx, req, count_text(raw["query"]) + sum(count_text(t) for t in texts))


def search_units(documents: int) -> int:
    """Rerank search units of one query over `documents` (at least one)."""
    return max(1, math.ceil(documents / DOCUMENTS_PER_UNIT))


def form_fields(form: Form) -> dict[str, Any]:
    """A form's text fields as `EndpointRequest.fields`: one value as a string, a repeated `name[]` as a list."""
    fields: dict[str, Any] = {}
    for name, values in form.fields.items():
        fields[name] = list(values) if name.endswith("[]") else values[-1]
    return fields


async def _serve(gw: Gateway, request: Request, ctx: RequestContext, req: EndpointRequest, tokens: int) -> None:
    """Admit (authorise every reachable deployment, reserve the units at the dearest price), call, answer,
    and settle like chat."""
    features = RequestFeatures(
        prompt_tokens=tokens, kind=ENDPOINT_KINDS[req.endpoint], key_name=ctx.key_name, units=req.units
    )
    await gw.admit(ctx, req.model, features)
    success = await gw.router.call_endpoint(req, features, timeout_s=gw.timeout_override(request))
    dep, records, cost = success.deployment, success.records, success.cost_usd
    completion = success.completion
    outcome = ctx.success(dep, records, completion.usage, cost, ttft_ms=None)
    answer = gw.answer_headers(ctx, dep, records, cost)
    if completion.native is None or completion.media_type is None:
        body = completion.native if completion.native is not None else _encode(completion.body)
        await ctx.end(outcome, request.respond(200, body, JSON_HEADERS + answer))
        return
    await ctx.end(outcome, _send_media(request, completion.native, completion.media_type, answer))


async def _send_media(request: Request, data: bytes, media_type: str, extra: Headers) -> None:
    """Audio (or text) bytes in pieces, with their length announced: a client reads them as they come."""
    headers: Headers = [(b"content-type", media_type.encode("latin-1")), *extra]
    headers.append((b"content-length", str(len(data)).encode()))
    await request.start_stream(headers)
    view = memoryview(data)
    for start in range(0, len(data), AUDIO_CHUNK):
        piece = bytes(view[start : start + AUDIO_CHUNK])
        more = start + AUDIO_CHUNK < len(data)
        await request.send_body(piece, more)
    if not data:
        await request.send_body(b"")


#: Path → handler, registered by the gateway as keyed routes (authenticate first).
ROUTES = {
    "/v1/audio/transcriptions": transcriptions,
    "/v1/audio/translations": translations,
    "/v1/audio/speech": speech,
    "/v1/images/generations": image_generations,
    "/v1/rerank": rerank,
    "/v2/rerank": rerank,
}
