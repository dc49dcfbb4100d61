"""OpenAI-compatible egress: OpenAI, vLLM, Ollama, llama.cpp, OpenRouter, DeepSeek, Mistral, Groq, Together.

The request body is the caller's own JSON with the deployment's model name swapped in, so fields we do not
model (vendor extras) pass through unchanged. Answers are normalised: usage always present, ids and
`created` set, tool-call arguments as JSON strings, and the usage chunk of a stream taken out for
accounting (the server re-emits it, priced, when the client asked for it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import msgspec

from modelyard.config.model import Deployment
from modelyard.config.providers import ProviderOptions
from modelyard.providers.base import (
    Completion,
    HttpCall,
    SSEEvent,
    StreamStamp,
    decode_event,
    decode_object,
    kind_from_status,
    mentions_context_length,
    new_id,
    parse_retry_after,
    redact,
    upstream_error,
    with_model,
)
from modelyard.providers.openai_endpoints import OPENAI_ENDPOINTS
from modelyard.providers.openai_endpoints import endpoint_call as _endpoint_call
from modelyard.providers.openai_endpoints import parse_endpoint as _parse_endpoint
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, Usage, token_count
from modelyard.schema.endpoints import EndpointRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

DEFAULT_BASE = "https://api.openai.com/v1"
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_FINISH_ALIASES = {"eos": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


class OpenAIOptions(ProviderOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of an OpenAI-compatible deployment."""

    #: Ask for the usage chunk of a stream (`stream_options.include_usage`); off for servers that reject it.
    stream_usage: bool = True
    #: Send the caller's `max_tokens` under this name (`max_completion_tokens` for OpenAI's reasoning models).
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    #: The server speaks OpenAI's Responses API (`{base_url}/responses`): `/v1/responses` requests reach it
    #: as the client sent them (only `model` rewritten) and its bytes go back unchanged.
    responses_api: bool = False
    #: Let hosted tools (web_search, file_search, code_interpreter, …) through to this Responses deployment:
    #: the provider runs and bills them and the gateway does not price them. Off (the default), a request
    #: carrying one is translated instead and the hosted tools are dropped (server/responses_request.py).
    hosted_tools: bool = False


#: The wire format of `/v1/responses` bodies (NativePassthrough.native_formats).
RESPONSES_FORMAT = "openai-responses"


def _headers(dep: Deployment) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if dep.api_key:
        headers["Authorization"] = f"Bearer {dep.api_key}"
    if dep.headers:
        headers.update(dep.headers)
    return headers


def _base(dep: Deployment) -> str:
    return (dep.api_base or DEFAULT_BASE).rstrip("/")


def _drop_thinking_blocks(body: dict[str, Any]) -> None:
    """Anthropic's signed thinking rides on canonical assistant messages as `thinking_blocks` (from the
    /v1/messages ingress); a signature means nothing to another vendor, which may refuse the unknown field:
    it never goes out from here."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:  # a plain loop: this runs on every chat request (a generator cost ~5 µs)
        if type(message) is dict and "thinking_blocks" in message:
            break
    else:
        return
    body["messages"] = [
        {k: v for k, v in m.items() if k != "thinking_blocks"} if isinstance(m, dict) else m for m in messages
    ]


class OpenAIAdapter:
    """Any server that speaks OpenAI's Chat Completions and Embeddings wire format."""

    name: ClassVar[str] = "openai"
    options_type: ClassVar[type[OpenAIOptions]] = OpenAIOptions
    #: Responses bodies pass through to deployments with `options: {responses_api: true}`.
    native_formats: ClassVar[frozenset[str]] = frozenset({RESPONSES_FORMAT})
    #: Audio, images and rerank (the `Endpoints` capability: providers/openai_endpoints.py).
    endpoints: ClassVar[frozenset[str]] = OPENAI_ENDPOINTS

    # ------------------------------------------------------------------ where and who (a subclass's seam)

    def url(self, dep: Deployment, path: str) -> str:
        """The URL of an OpenAI path (`chat/completions`, `audio/speech`) on this deployment; Azure's adapter
        puts the deployment name and `api-version` in it."""
        return f"{_base(dep)}/{path}"

    def auth_headers(self, dep: Deployment) -> dict[str, str]:
        """JSON content type, the credential and the deployment's own headers (a fresh dict per call)."""
        return _headers(dep)

    # ------------------------------------------------------------------ requests

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        opts: OpenAIOptions = dep.options
        body = dict(raw)
        body.pop("modelyard", None)
        body["model"] = dep.model
        _drop_thinking_blocks(body)
        if stream:
            body["stream"] = True
            if opts.stream_usage:
                options = dict(body.get("stream_options") or {})
                options["include_usage"] = True
                body["stream_options"] = options
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        field = opts.max_tokens_field
        if field and "max_tokens" in body and field != "max_tokens":
            body[field] = body.pop("max_tokens")
        return HttpCall("POST", self.url(dep, "chat/completions"), self.auth_headers(dep), _encode(body))

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        body = dict(raw)
        body.pop("modelyard", None)
        body["model"] = dep.model
        return HttpCall("POST", self.url(dep, "embeddings"), self.auth_headers(dep), _encode(body))

    def endpoint_call(self, dep: Deployment, req: EndpointRequest) -> HttpCall:
        """Audio, images or rerank at this deployment's URL for the path, with its credential (multipart for
        an upload: its own Content-Type with the boundary)."""
        return _endpoint_call(self.url(dep, req.endpoint), self.auth_headers(dep), dep, req)

    def parse_endpoint(
        self, dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]
    ) -> Completion:
        return _parse_endpoint(dep, req, body, headers)

    # ------------------------------------------------------------------ answers

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        data = decode_object(body)
        if not isinstance(data.get("choices"), list):
            raise ProviderError(ErrorKind.SERVER, "malformed response: no choices")
        if "id" not in data:
            data["id"] = new_id("chatcmpl-")
        data["object"] = "chat.completion"
        if "created" not in data:
            data["created"] = int(time.time())
        model = data.get("model") or dep.model
        data["model"] = model
        for choice in data["choices"]:
            message = choice.get("message") or {}
            choice["message"] = message
            message.setdefault("role", "assistant")
            message.setdefault("content", None)
            _normalise_tool_calls(message.get("tool_calls"))
            choice["finish_reason"] = _finish(choice.get("finish_reason"), message)
        raw_usage = data.get("usage")
        usage = Usage.from_openai(raw_usage)
        data["usage"] = _usage_dict(raw_usage, usage)
        return Completion(data, usage, model)

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        data = decode_object(body)
        if not isinstance(data.get("data"), list):
            raise ProviderError(ErrorKind.SERVER, "malformed embeddings response: no data")
        data.setdefault("object", "list")
        model = data.get("model") or dep.model
        data["model"] = model
        raw_usage = data.get("usage") or {}
        prompt = int(raw_usage.get("prompt_tokens") or 0)
        data["usage"] = {"prompt_tokens": prompt, "total_tokens": int(raw_usage.get("total_tokens") or prompt)}
        return Completion(data, Usage(prompt=prompt), model)

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> OpenAIStreamTranslator:
        return OpenAIStreamTranslator(StreamStamp(model=dep.model))

    # ------------------------------------------------------------------ native pass-through (Responses API)

    def native_call(
        self,
        dep: Deployment,
        fmt: str,
        body: dict[str, Any],
        stream: bool,
        headers: Mapping[str, str],
        *,
        raw: bytes = b"",
    ) -> HttpCall:
        """The client's Responses body with only `model` rewritten (and the gateway's `modelyard` options
        taken out), to `{base_url}/responses`. A deployment not marked `responses_api` cannot take it: the
        attempt fails over (the Responses codec only asks for pass-through when every reachable OpenAI
        deployment speaks it, so this is a guard)."""
        _check_format(fmt)
        opts: OpenAIOptions = dep.options
        if not opts.responses_api:
            raise GatewayError(400, f"deployment {dep.name!r} does not speak the Responses API")
        url = self.url(dep, "responses")
        if "modelyard" not in body and bool(body.get("stream")) == stream:
            spliced = with_model(raw, body, dep.model)  # the client's own bytes, only the model changed
            if spliced is not None:
                return HttpCall("POST", url, self.auth_headers(dep), spliced)
        out = dict(body)
        out.pop("modelyard", None)
        out["model"] = dep.model
        if stream and out.get("stream") is not True:
            out["stream"] = True
        elif not stream and out.get("stream"):
            del out["stream"]  # `"stream": false` as the client wrote it stays
        return HttpCall("POST", url, self.auth_headers(dep), _encode(out))

    def parse_native(self, dep: Deployment, fmt: str, body: bytes) -> Completion:
        """The provider's bytes kept as `native` (sent on unchanged); usage and model read for accounting."""
        _check_format(fmt)
        data = decode_object(body)
        if data.get("object") != "response":
            raise ProviderError(ErrorKind.SERVER, "malformed response: not a Response object")
        if data.get("status") == "failed":
            raise _failed(data, after_first_byte=False)
        usage = responses_usage(data.get("usage"), data.get("tool_usage"))
        return Completion(data, usage, str(data.get("model") or dep.model), native=body)

    def native_stream(self, dep: Deployment, fmt: str) -> NativeResponsesStream:
        _check_format(fmt)
        return NativeResponsesStream(dep.model)

    def response_object_call(self, dep: Deployment, method: str, response_id: str, tail: str = "") -> HttpCall:
        """GET/DELETE `{base}/responses/{id}[/input_items?…]` for a response that lives on this deployment
        (`tail` is built by the gateway from checked values, never the client's raw text)."""
        url = self.url(dep, f"responses/{quote(response_id, safe='')}") + tail
        return HttpCall(method, url, self.auth_headers(dep), b"")

    # ------------------------------------------------------------------ errors

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        message, err_type, code = _error_fields(body)
        kind = classify(status, message, err_type, code)
        text = message or f"HTTP {status}"
        return upstream_error(
            kind, f"provider answered {status}", text, status=status, retry_after=parse_retry_after(headers)
        )


def classify(status: int, message: str, err_type: str, code: str) -> ErrorKind:
    """OpenAI-style error → kind, from the status refined by `code`/`type`/message."""
    tags = f"{err_type} {code}".lower()
    if "insufficient_quota" in tags:
        return ErrorKind.AUTH
    if "context_length" in tags or (status in (400, 413, 422) and mentions_context_length(message)):
        return ErrorKind.CONTEXT_LENGTH
    if "content_filter" in tags or "content_policy" in tags or "moderation" in tags:
        return ErrorKind.CONTENT_FILTER
    if status == 200 or status == 0:  # an error event inside a stream
        if "rate_limit" in tags:
            return ErrorKind.RATE_LIMITED
        if "overloaded" in tags or "unavailable" in tags:
            return ErrorKind.OVERLOADED
        if "invalid_request" in tags:
            return ErrorKind.BAD_REQUEST
        return ErrorKind.SERVER
    return kind_from_status(status)


def _error_fields(body: bytes) -> tuple[str, str, str]:
    try:
        data = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip(), "", ""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or ""), str(err.get("type") or ""), str(err.get("code") or "")
    if isinstance(err, str):  # vLLM/Ollama style {"error": "..."}
        return err, "", ""
    if isinstance(data, dict) and "message" in data:
        return str(data["message"]), str(data.get("type") or ""), str(data.get("code") or "")
    return "", "", ""


def _normalise_tool_calls(tool_calls: Any) -> None:
    if not tool_calls:
        return
    for call in tool_calls:
        call.setdefault("type", "function")
        if not call.get("id"):
            call["id"] = new_id("call_")
        function = call.get("function")
        if isinstance(function, dict) and not isinstance(function.get("arguments"), str):
            function["arguments"] = _encode(function.get("arguments") or {}).decode()


def _finish(reason: Any, message: dict[str, Any] | None = None) -> str | None:
    if reason is None:
        return None
    reason = _FINISH_ALIASES.get(reason, reason)
    if message is not None and message.get("tool_calls") and reason == "stop":
        return "tool_calls"  # some servers say "stop" after a tool call; clients branch on "tool_calls"
    return str(reason)


def _usage_dict(raw: Any, usage: Usage) -> dict[str, Any]:
    """The provider's usage object, completed to the canonical shape (totals and the details objects with
    cached, cache-write and reasoning tokens) without dropping its extras (audio, prediction tokens)."""
    if not isinstance(raw, dict) or "prompt_tokens" not in raw or "completion_tokens" not in raw:
        return usage.to_openai()
    if "total_tokens" not in raw:
        raw["total_tokens"] = usage.total
    prompt_details = raw.get("prompt_tokens_details")
    if not isinstance(prompt_details, dict):
        raw["prompt_tokens_details"] = {"cached_tokens": usage.cached, "cache_write_tokens": usage.cache_write}
    else:
        prompt_details.setdefault("cached_tokens", usage.cached)
        prompt_details.setdefault("cache_write_tokens", usage.cache_write)
    completion_details = raw.get("completion_tokens_details")
    if not isinstance(completion_details, dict):
        raw["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning}
    else:
        completion_details.setdefault("reasoning_tokens", usage.reasoning)
    return raw


class OpenAIStreamTranslator:
    """Passes chunks through, normalised; captures usage; detects a stream that ended early."""

    def __init__(self, stamp: StreamStamp) -> None:
        self.stamp = stamp
        self.usage = Usage()
        self.model = stamp.model
        self.saw_usage = False
        self._done = False
        self._finished = False
        #: The first chunk carried id, created and model: later plain content deltas can pass through raw.
        self._shaped = False
        #: The bytes before and after the content string of the first plain content delta (`_delta_shape`):
        #: a later event with the same bytes around a string without quotes is plain too, checked in three
        #: cheap scans instead of `_plain_delta`'s five. `_tail_varies`: the tail ends in OpenAI's random
        #: `obfuscation` value, which only has to be a plain string.
        self._head: bytes | None = None
        self._tail = b""
        self._tail_varies = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[dict[str, Any] | msgspec.Raw]:
        data = event.data
        if data == b"[DONE]":
            self._done = True
            return []
        if event.event is None:
            head = self._head
            if head is not None and _same_shape(data, head, self._tail, self._tail_varies):
                return [msgspec.Raw(data)]
            if self._shaped and _plain_delta(data):
                # A content delta of a well-formed stream needs no change: its bytes go out as they came
                # (no decode, no encode). Anything else (the first chunk, a finish, tool calls, usage,
                # errors) is decoded and normalised below.
                if head is None:
                    self._head, self._tail, self._tail_varies = _delta_shape(data)
                return [msgspec.Raw(data)]
        if not data.strip():
            return []
        chunk = decode_event(data)
        if "error" in chunk or event.event == "error":
            inner = chunk.get("error")
            err: dict[str, Any] = inner if isinstance(inner, dict) else chunk
            message = str(err.get("message") or "error event in stream")
            kind = classify(0, message, str(err.get("type") or ""), str(err.get("code") or ""))
            raise upstream_error(kind, "provider stream error", message)
        usage = chunk.pop("usage", None)
        if usage:
            self.usage = Usage.from_openai(usage)
            self.saw_usage = True
        choices = chunk.get("choices")
        if not choices:
            return []  # the usage-only chunk; the server re-emits usage itself
        if chunk.get("model"):
            self.model = chunk["model"]
        if not self._shaped:
            self._shaped = (
                "id" in chunk
                and "created" in chunk
                and "model" in chunk
                and chunk.get("object") == "chat.completion.chunk"
            )
        chunk.setdefault("id", self.stamp.id)
        chunk["object"] = "chat.completion.chunk"
        chunk.setdefault("created", self.stamp.created)
        chunk.setdefault("model", self.model)
        for choice in choices:
            delta = choice.get("delta")
            if delta is None:
                choice["delta"] = delta = {}
            _normalise_stream_tool_calls(delta.get("tool_calls"))
            reason = choice.get("finish_reason")
            if reason is not None:
                choice["finish_reason"] = _finish(reason)
                self._finished = True
        return [chunk]

    def finish(self) -> list[dict[str, Any]]:
        if not (self._done or self._finished):
            raise ProviderError(ErrorKind.CONNECTION, "stream ended before it was complete", after_first_byte=True)
        return []


def _plain_delta(data: bytes) -> bool:
    """A chunk that cannot need normalising: choices with a delta, not finishing, no tool calls, no usage
    object, no error (compact JSON as OpenAI-compatible servers send it; anything else is decoded)."""
    return (
        b'"finish_reason":null' in data
        and b'"choices":[{' in data
        and b'"tool_calls"' not in data
        and b'"usage":{' not in data
        and b'"error"' not in data
    )


_CONTENT = b'"delta":{"content":"'
#: OpenAI's API ends every chunk with a random-length random string (`"obfuscation":"…"}`, padding against
#: length side channels): a tail that ends in one is learned up to its value.
_OBFUSCATION = b',"obfuscation":"'
_STRING_END = b'"}'


def _delta_shape(plain: bytes) -> tuple[bytes | None, bytes, bool]:
    """The bytes before and after the content string of a plain delta (one `_plain_delta` passed), and
    whether the tail ends in an `obfuscation` value (the tail then stops before it); (None, b"", False) when
    its string has an escape (its closing quote is then not simply the next quote)."""
    start = plain.find(_CONTENT)
    if start < 0:
        return None, b"", False
    head_end = start + len(_CONTENT)
    close = plain.find(b'"', head_end)
    if close < 0 or plain.find(b"\\", head_end, close) >= 0:
        return None, b"", False
    head, tail = plain[:head_end], plain[close:]
    cut = tail.rfind(_OBFUSCATION)
    if cut >= 0 and _plain_string_end(tail, cut + len(_OBFUSCATION)):
        return head, tail[: cut + len(_OBFUSCATION)], True
    return head, tail, False


def _same_shape(data: bytes, head: bytes, tail: bytes, varies: bool = False) -> bool:
    """`data` is the learned plain delta with another content string (and, when the tail `varies`, another
    `obfuscation` value): the same bytes before and after it. Its content string ends at the first quote
    after the head and that quote is not escaped, so the string cannot end early or run on; a varying
    value has neither a quote nor a backslash before the closing `"}`. Such an event is as plain as the one
    the shape was learned from."""
    close = data.find(b'"', len(head))
    if close < 0 or data[close - 1] == 0x5C or not data.startswith(head) or not data.startswith(tail, close):
        return False
    rest = close + len(tail)
    return _plain_string_end(data, rest) if varies else rest == len(data)


def _plain_string_end(data: bytes, start: int) -> bool:
    """From `start` to the end, `data` is a string's value without a quote or a backslash, then `"}`."""
    end = len(data) - len(_STRING_END)
    return (
        end >= start
        and data.endswith(_STRING_END)
        and data.find(b'"', start, end) < 0
        and data.find(b"\\", start, end) < 0
    )


def _normalise_stream_tool_calls(tool_calls: Any) -> None:
    if not tool_calls:
        return
    for call in tool_calls:
        function = call.get("function")
        if isinstance(function, dict) and "arguments" in function and not isinstance(function["arguments"], str):
            function["arguments"] = _encode(function["arguments"]).decode()


# --------------------------------------------------------------------------- Responses API pass-through


def _check_format(fmt: str) -> None:
    if fmt != RESPONSES_FORMAT:
        raise GatewayError(400, f"the OpenAI adapter does not pass {fmt!r} bodies through")


def responses_usage(raw: Any, tool_usage: Any = None) -> Usage:
    """A Responses `usage` object (input/output tokens and their details) as canonical usage, with the web
    searches the Response's `tool_usage` reports (billed per search: Price.web_search)."""
    searches = _obj(_obj(tool_usage).get("web_search")).get("num_requests")
    if not isinstance(raw, dict):
        return Usage(web_searches=token_count(searches))
    inputs, outputs = _obj(raw.get("input_tokens_details")), _obj(raw.get("output_tokens_details"))
    return Usage(
        prompt=token_count(raw.get("input_tokens")),
        completion=token_count(raw.get("output_tokens")),
        cached=token_count(inputs.get("cached_tokens")),
        cache_write=token_count(inputs.get("cache_write_tokens")),
        reasoning=token_count(outputs.get("reasoning_tokens")),
        web_searches=token_count(searches),
    )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _failed(response: dict[str, Any], *, after_first_byte: bool) -> ProviderError:
    error = _obj(response.get("error"))
    message = str(error.get("message") or "the response failed")
    kind = classify(0, message, str(error.get("type") or ""), str(error.get("code") or ""))
    failure = upstream_error(kind, "provider response failed", message)
    failure.after_first_byte = after_first_byte
    return failure


#: Events that carry the answer itself: once one is seen, a failure can no longer fail over invisibly.
_SUBSTANCE = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.output_item.done",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)
_FAST_DELTAS = frozenset({b"response.output_text.delta", b"response.function_call_arguments.delta"})
_ENDS = frozenset({"response.completed", "response.incomplete"})


class NativeResponsesStream:
    """The Responses API's own events, re-framed byte for byte (`event: NAME\ndata: DATA\n\n`) as
    `msgspec.Raw`, parsed only for usage and model (`response.completed` / `.incomplete`), the end, errors
    (`error`, `response.failed`) and `answered`. Text and argument deltas after the first are not decoded."""

    def __init__(self, model: str) -> None:
        self.usage = Usage()
        self.model = model
        self.answered = False
        #: The upstream's response id (`response.created`), recorded key-scoped by the Responses codec.
        self.response_id: str | None = None
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[dict[str, Any] | msgspec.Raw]:
        name = event.event
        data = event.data
        frame = (b"event: " + name.encode() + b"\ndata: " if name else b"data: ") + data + b"\n\n"
        if self.answered and name is not None and name.encode() in _FAST_DELTAS:  # the hot path
            return [msgspec.Raw(frame)]
        if not data.strip() or data == b"[DONE]":
            return [msgspec.Raw(frame)]
        payload = decode_event(data, after_first_byte=self.answered)
        kind = str(payload.get("type") or name or "")
        if kind == "error":
            inner = _obj(payload.get("error")) or payload
            message = str(inner.get("message") or "error event in stream")
            failure = upstream_error(
                classify(0, message, str(inner.get("type") or ""), str(inner.get("code") or "")),
                "provider stream error",
                message,
            )
            failure.after_first_byte = self.answered
            raise failure
        response = _obj(payload.get("response"))
        if response:
            if response.get("model"):
                self.model = str(response["model"])
            if kind == "response.created" and isinstance(response.get("id"), str):
                self.response_id = response["id"]
            if kind == "response.failed":
                raise _failed(response, after_first_byte=self.answered)
            if kind in _ENDS:
                self.usage = responses_usage(response.get("usage"), response.get("tool_usage"))
                self._done = True
                self.answered = True
        if not self.answered and kind in _SUBSTANCE:
            self.answered = True
        return [msgspec.Raw(frame)]

    def finish(self) -> list[dict[str, Any]]:
        if not self._done:
            raise ProviderError(ErrorKind.CONNECTION, "stream ended before response.completed", after_first_byte=True)
        return []


__all__ = [
    "RESPONSES_FORMAT",
    "NativeResponsesStream",
    "OpenAIAdapter",
    "OpenAIStreamTranslator",
    "classify",
    "redact",
    "responses_usage",
]
