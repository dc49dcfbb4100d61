"""OpenAI's non-chat endpoints as pure translation: audio transcriptions, translations and speech, image
generations, and rerank on OpenAI-compatible servers (vLLM, Jina-compatible: `POST {base}/rerank`).

`OpenAIAdapter` (providers/openai.py) serves them through the `Endpoints` capability with its own `url` and
`auth_headers`, so a subclass that moves those (Azure) serves them too. Answers come back in OpenAI's shapes;
rerank in Cohere's v2 shape (OpenAI has none), which is what the gateway's `/v1/rerank` answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import msgspec
from urllib3 import encode_multipart_formdata

from modelyard.config.model import Deployment
from modelyard.providers.base import Completion, HttpCall, decode_object
from modelyard.providers.rerank import ranked_results, rerank_answer, rerank_ask, total_tokens
from modelyard.schema.chat import Usage, token_count
from modelyard.schema.endpoints import EndpointRequest
from modelyard.schema.errors import ErrorKind, ProviderError

_encode = msgspec.json.Encoder().encode

#: What the OpenAI wire serves (the `Endpoints` capability's `endpoints`).
OPENAI_ENDPOINTS = frozenset(
    {"audio/transcriptions", "audio/translations", "audio/speech", "images/generations", "rerank"}
)
#: Transcription formats answered as plain text rather than JSON.
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})
#: The content type of each speech format, when the provider's answer does not say.
SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


def endpoint_call(url: str, headers: dict[str, str], dep: Deployment, req: EndpointRequest) -> HttpCall:
    """The provider's request at `url` (the adapter's own URL for the path) with `headers` (its credential)."""
    if req.endpoint in ("audio/transcriptions", "audio/translations"):
        return _upload_call(url, headers, dep, req)
    if req.endpoint == "rerank":
        return HttpCall("POST", url, headers, _encode(rerank_body(dep, req)))
    body = {k: v for k, v in req.fields.items() if k != "modelyard"}
    body["model"] = dep.model
    return HttpCall("POST", url, headers, _encode(body))


def _upload_call(url: str, headers: dict[str, str], dep: Deployment, req: EndpointRequest) -> HttpCall:
    """A multipart form: the client's text fields (model swapped) and the file as it came."""
    upload = req.file
    assert upload is not None, "the ingress refuses an upload request without its file"
    parts: list[tuple[str, Any]] = [("model", dep.model)]
    for name, value in req.fields.items():
        if name == "model":
            continue
        for item in value if isinstance(value, list) else [value]:
            parts.append((name, str(item)))
    parts.append(("file", (upload.filename or "audio", upload.data, upload.content_type)))
    body, content_type = encode_multipart_formdata(parts)
    out = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    out["Content-Type"] = content_type  # carries the boundary
    return HttpCall("POST", url, out, body)


def rerank_body(dep: Deployment, req: EndpointRequest) -> dict[str, Any]:
    """`{model, query, documents, top_n}` as vLLM's and Jina's `/rerank` take it."""
    ask = rerank_ask(req)
    body: dict[str, Any] = {"model": dep.model, "query": ask.query, "documents": ask.documents}
    if ask.top_n is not None:
        body["top_n"] = ask.top_n
    return body


def parse_endpoint(dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]) -> Completion:
    if req.endpoint == "audio/speech":
        return _speech(dep, req, body, headers)
    if req.endpoint == "rerank":
        return parse_rerank(dep, req, decode_object(body))
    if req.endpoint == "images/generations":
        return _images(dep, decode_object(body))
    return _transcription(dep, req, body, headers)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _speech(dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]) -> Completion:
    if not body:
        raise ProviderError(ErrorKind.SERVER, "malformed speech response: no audio")
    content_type = (_header(headers, "content-type") or "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.startswith("text/"):
        raise ProviderError(ErrorKind.SERVER, "malformed speech response: not audio")
    if not content_type or content_type == "application/octet-stream":
        content_type = SPEECH_TYPES.get(str(req.fields.get("response_format") or "mp3"), "audio/mpeg")
    size = {"bytes": len(body), "content_type": content_type}
    return Completion(size, req.units, dep.model, native=body, media_type=content_type)


def _transcription(dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]) -> Completion:
    fmt = str(req.fields.get("response_format") or "json")
    if fmt in TEXT_FORMATS:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProviderError(ErrorKind.SERVER, "malformed transcription response (not UTF-8 text)") from None
        media_type = _header(headers, "content-type") or "text/plain; charset=utf-8"
        if media_type.split(";")[0].strip().lower() == "application/json":
            media_type = "text/plain; charset=utf-8"
        return Completion({"text": text}, req.units, dep.model, native=body, media_type=media_type)
    data = decode_object(body)
    if not isinstance(data.get("text"), str):
        raise ProviderError(ErrorKind.SERVER, "malformed transcription response: no text")
    return Completion(data, transcription_usage(data, req.units), dep.model)


def transcription_usage(data: dict[str, Any], units: Usage) -> Usage:
    """OpenAI's `usage` of a transcription: `{type: duration, seconds}` (whisper) or `{type: tokens,
    input_tokens, output_tokens}` (gpt-4o-transcribe, whose tokens are priced by `input`/`output`; the
    measured seconds stay for an `audio_minute` price); else `verbose_json`'s `duration`; else the upload's
    measured seconds."""
    usage = data.get("usage")
    if isinstance(usage, dict):
        if usage.get("type") == "duration" and _finite(usage.get("seconds")):
            return Usage(audio_seconds=float(usage["seconds"]))
        if usage.get("type") == "tokens":
            prompt = token_count(usage.get("input_tokens"))
            completion = token_count(usage.get("output_tokens"))
            return Usage(prompt=prompt, completion=completion, audio_seconds=units.audio_seconds)
    if _finite(data.get("duration")):
        return Usage(audio_seconds=float(data["duration"]))
    return Usage(audio_seconds=units.audio_seconds)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _images(dep: Deployment, data: dict[str, Any]) -> Completion:
    images = data.get("data")
    if not isinstance(images, list) or not images or not all(isinstance(i, dict) for i in images):
        raise ProviderError(ErrorKind.SERVER, "malformed image response: no data")
    data.setdefault("created", int(time.time()))
    raw = data.get("usage")
    tokens = raw if isinstance(raw, dict) else {}
    usage = Usage(
        prompt=token_count(tokens.get("input_tokens")),
        completion=token_count(tokens.get("output_tokens")),
        images=len(images),
    )
    return Completion(data, usage, dep.model)


def parse_rerank(dep: Deployment, req: EndpointRequest, data: dict[str, Any]) -> Completion:
    """A Jina/vLLM rerank answer (`results: [{index, relevance_score}]`, `usage.total_tokens`) in Cohere's v2
    shape, read as the Jina adapter reads it (providers/rerank.py)."""
    results = ranked_results(data.get("results"), rerank_ask(req), "results")
    model = str(data.get("model") or dep.model)
    return rerank_answer(model, data.get("id"), results, req.units.search_units, total_tokens(data))
