"""Anthropic Messages API egress: canonical (OpenAI-shaped) requests out, Anthropic answers back.

Anthropic differs from OpenAI in ways that each need a rule here: the system prompt is a top-level field,
turns must alternate (so consecutive same-role messages are merged), tool results travel as `tool_result`
blocks inside a user turn, `max_tokens` is required, and streams are typed events (message_start,
content_block_*, message_delta, message_stop) instead of chunks. Usage counts input tokens without the
cached ones, so the prompt count is rebuilt as OpenAI counts it (input + cache read + cache write).

Two paths. Translated (any ingress): thinking blocks keep their `signature` in a `thinking_blocks` extension
on the canonical assistant message and delta (the shape LiteLLM and others use), and signed blocks a client
returns go back to Anthropic as they came; unsigned ones (reasoning another vendor produced) are dropped,
since Anthropic refuses them. Native pass-through (`/v1/messages` to an Anthropic deployment,
`NativePassthrough`): the client's body goes out with only `model` rewritten and the provider's bytes come
back unchanged, parsed only for usage, the model and the first-byte failover decision. `TokenCounter`: the
provider's own `/v1/messages/count_tokens`.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import msgspec

from modelyard.config.model import Deployment
from modelyard.config.providers import ProviderOptions
from modelyard.providers.base import (
    Completion,
    HttpCall,
    SSEEvent,
    StreamStamp,
    kind_from_status,
    mentions_context_length,
    new_id,
    parse_retry_after,
    upstream_error,
    with_model,
)
from modelyard.providers.data_url import parse_data_url
from modelyard.schema.chat import (
    AssistantMessage,
    AudioPart,
    ChatRequest,
    Content,
    ContentPart,
    CustomTool,
    DeveloperMessage,
    EmbeddingRequest,
    FilePart,
    ImagePart,
    Message,
    RefusalPart,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    SystemMessage,
    TextPart,
    ToolChoiceAllowed,
    ToolChoiceCustom,
    ToolChoiceFunction,
    ToolMessage,
    Usage,
    UserMessage,
)
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

DEFAULT_BASE = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
#: The API version that removed temperature/top_p/top_k (400 even at default values).
_NO_SAMPLING_VERSION = "2026-10-21"
DEFAULT_MAX_TOKENS = 4096

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_SECRET = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")
#: How a failed tool result (`is_error: true`) is marked in the text of an OpenAI `tool` message.
TOOL_ERROR_MARKER = "[tool error] "

STOP_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: Anthropic `error.type` → kind; the status decides what is not listed.
_ERROR_TYPES: dict[str, ErrorKind] = {
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "overloaded_error": ErrorKind.OVERLOADED,
    "api_error": ErrorKind.SERVER,
    "timeout_error": ErrorKind.TIMEOUT,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "billing_error": ErrorKind.AUTH,
    "request_too_large": ErrorKind.CONTEXT_LENGTH,
    "not_found_error": ErrorKind.BAD_REQUEST,
    "invalid_request_error": ErrorKind.BAD_REQUEST,
}

_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object only: no prose before or after it and no Markdown code fences."
)
_JSON_SCHEMA_INSTRUCTION = (
    "Respond with a single valid JSON object only, conforming to this JSON Schema "
    "(no prose before or after it, no Markdown code fences):\n"
)

_EFFORTS = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "max",
}

#: Anthropic-native fields a caller may send as OpenAI extra body; forwarded as given.
_NATIVE_EXTRAS = ("thinking", "top_k", "cache_control")


class AnthropicOptions(ProviderOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of an Anthropic deployment."""

    #: The `anthropic-version` header (quote it in YAML: an unquoted date is not a string).
    api_version: Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")] = DEFAULT_VERSION
    #: False for models that reject temperature/top_p/top_k (versions from 2026-10-21 reject them anyway).
    sampling: bool = True
    #: The `anthropic-beta` header: one feature name or a list of them.
    beta: str | list[str] | None = None


# --------------------------------------------------------------------------- request: messages


def _fail(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param)


def _image_block(part: ImagePart, param: str) -> dict[str, Any]:
    url = part.image_url.url
    if url.startswith("data:"):
        media_type, data = parse_data_url(url, param)
        if media_type not in _IMAGE_TYPES:
            raise _fail(f"image type {media_type!r} is not supported by Anthropic (jpeg/png/gif/webp)", param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _fail("image_url must be an http(s) URL or a base64 data URL", param)


def _file_block(part: FilePart, param: str) -> dict[str, Any]:
    """OpenAI `file` parts with inline data become Anthropic `document` blocks (PDF or plain text)."""
    ref = part.file
    if not ref.file_data:
        raise _fail("file parts need inline file_data for Anthropic deployments (file_id is OpenAI's)", param)
    media_type, data = parse_data_url(ref.file_data, param)
    block: dict[str, Any]
    if media_type == "application/pdf":
        block = {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _fail("text/plain file_data is not valid base64 UTF-8", param) from None
        block = {"type": "document", "source": {"type": "text", "media_type": media_type, "data": text}}
    else:
        raise _fail(f"file type {media_type!r} is not supported by Anthropic (PDF or plain text)", param)
    if ref.filename:
        block["title"] = ref.filename
    return block


def _text_block(text: str) -> dict[str, Any] | None:
    """Anthropic rejects empty and whitespace-only text blocks, so those are dropped."""
    return {"type": "text", "text": text} if text.strip() else None


def _part_block(part: ContentPart, param: str) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return _text_block(part.text)
    if isinstance(part, RefusalPart):
        return _text_block(part.refusal)
    if isinstance(part, ImagePart):
        return _image_block(part, param)
    if isinstance(part, FilePart):
        return _file_block(part, param)
    if isinstance(part, AudioPart):
        raise _fail("input_audio parts are not supported by Anthropic deployments", param)
    raise _fail(f"content part {type(part).__name__} is not supported by Anthropic deployments", param)


def _content_blocks(content: Content | None, param: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        block = _text_block(content)
        return [block] if block else []
    blocks = []
    for j, part in enumerate(content):
        block = _part_block(part, f"{param}[{j}]")
        if block is not None:
            blocks.append(block)
    return blocks


def _tool_use_blocks(msg: AssistantMessage, param: str) -> list[dict[str, Any]]:
    blocks = []
    for j, call in enumerate(msg.tool_calls or ()):
        raw_args = call.function.arguments
        try:
            args = _decode(raw_args) if raw_args.strip() else {}
        except (msgspec.DecodeError, UnicodeDecodeError):
            args = None
        if not isinstance(args, dict):
            raise _fail(
                "tool call arguments must be a JSON object for Anthropic deployments",
                f"{param}.tool_calls[{j}].function.arguments",
            )
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": args})
    return blocks


def _tool_result_block(msg: ToolMessage, param: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.tool_call_id}
    if isinstance(msg.content, str):
        text = msg.content
        if text.startswith(TOOL_ERROR_MARKER):
            text = text[len(TOOL_ERROR_MARKER) :]
            block["is_error"] = True
        if text:
            block["content"] = text
    else:
        inner = _content_blocks(msg.content, f"{param}.content")
        if inner:
            block["content"] = inner
    return block


def signed_thinking_blocks(raw_message: Any) -> list[dict[str, Any]]:
    """The thinking blocks of a canonical assistant message (`thinking_blocks`) that Anthropic will accept.

    Only blocks Anthropic signed survive: a `thinking` block with a non-empty `signature`, a
    `redacted_thinking` block with its `data`. Reasoning without a signature (another vendor's) is dropped,
    since Anthropic refuses a thinking block it did not sign.
    """
    blocks = raw_message.get("thinking_blocks") if isinstance(raw_message, dict) else None
    if not isinstance(blocks, list):
        return []
    out: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "thinking" and isinstance(block.get("thinking"), str) and block.get("signature"):
            if isinstance(block["signature"], str):
                out.append({"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]})
        elif kind == "redacted_thinking" and isinstance(block.get("data"), str) and block["data"]:
            out.append({"type": "redacted_thinking", "data": block["data"]})
    return out


def _turn(msg: Message, param: str, raw_message: Any = None) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and blocks of one non-system message."""
    if isinstance(msg, UserMessage):
        return "user", _content_blocks(msg.content, f"{param}.content")
    if isinstance(msg, AssistantMessage):
        thinking = signed_thinking_blocks(raw_message) if raw_message is not None else []
        return "assistant", thinking + _content_blocks(msg.content, f"{param}.content") + _tool_use_blocks(msg, param)
    if isinstance(msg, ToolMessage):
        return "user", [_tool_result_block(msg, param)]
    raise _fail(f"message role {type(msg).__name__} is not supported", param)


def _system_blocks(msg: SystemMessage | DeveloperMessage, param: str) -> list[dict[str, Any]]:
    blocks = _content_blocks(msg.content, f"{param}.content")
    if any(block["type"] != "text" for block in blocks):
        raise _fail("system messages may only contain text for Anthropic deployments", param)
    return blocks


def _finalise_turn(role: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    if role == "user":  # tool results must open the user turn that answers a tool_use
        blocks.sort(key=lambda block: block["type"] != "tool_result")
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": role, "content": blocks[0]["text"]}
    return {"role": role, "content": blocks}


def _strip_final_assistant(turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Anthropic rejects a final (prefill) assistant turn that ends with whitespace."""
    if not turns or turns[-1][0] != "assistant":
        return
    blocks = turns[-1][1]
    if blocks and blocks[-1]["type"] == "text":
        text = blocks[-1]["text"].rstrip()
        if text:
            blocks[-1] = {"type": "text", "text": text}
        else:
            blocks.pop()
    if not blocks:
        turns.pop()


def build_messages(
    messages: list[Message], raw_messages: Any = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating Anthropic messages) from canonical messages.

    `raw_messages`: the caller's message dicts (same order), read only for signed `thinking_blocks`.
    """
    system: list[dict[str, Any]] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    raw_list = raw_messages if isinstance(raw_messages, list) and len(raw_messages) == len(messages) else None
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if isinstance(msg, SystemMessage | DeveloperMessage):
            system.extend(_system_blocks(msg, param))
            continue
        role, blocks = _turn(msg, param, raw_list[i] if raw_list is not None else None)
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    _strip_final_assistant(turns)
    return system, [_finalise_turn(role, blocks) for role, blocks in turns]


# --------------------------------------------------------------------------- request: tools and options


def _tools(req: ChatRequest, dep: Deployment) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(req.tools or ()):
        if isinstance(tool, CustomTool):
            raise _fail("custom (grammar) tools are not supported by Anthropic deployments", f"tools[{i}]")
        fn = tool.function
        spec: dict[str, Any] = {
            "name": fn.name,
            "input_schema": fn.parameters or {"type": "object", "properties": {}},
        }
        if fn.description:
            spec["description"] = fn.description
        if fn.strict and dep.has("json_schema"):
            spec["strict"] = True
        out.append(spec)
    return out


def _tool_choice(req: ChatRequest) -> tuple[dict[str, Any] | None, set[str] | None]:
    """Anthropic's tool_choice, and the tool names an `allowed_tools` choice restricts to."""
    choice = req.tool_choice
    allowed: set[str] | None = None
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif isinstance(choice, str):
        out = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif isinstance(choice, ToolChoiceFunction):
        out = {"type": "tool", "name": choice.function.name}
    elif isinstance(choice, ToolChoiceCustom):
        out = {"type": "tool", "name": choice.custom.name}
    elif isinstance(choice, ToolChoiceAllowed):
        out = {"type": "auto" if choice.allowed_tools.mode == "auto" else "any"}
        allowed = {_allowed_name(t) for t in choice.allowed_tools.tools}
    if req.parallel_tool_calls is False and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out, allowed


def _allowed_name(tool: dict[str, Any]) -> str:
    inner = tool.get("function") or tool.get("custom") or tool
    return str(inner.get("name", ""))


def _apply_tools(body: dict[str, Any], req: ChatRequest, dep: Deployment) -> None:
    tools = _tools(req, dep)
    if not tools:
        return
    choice, allowed = _tool_choice(req)
    if allowed is not None:
        tools = [tool for tool in tools if tool["name"] in allowed]
        if not tools:
            return
    body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice


def _apply_response_format(
    body: dict[str, Any], system: list[dict[str, Any]], req: ChatRequest, dep: Deployment
) -> None:
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatJsonSchema):
        schema = fmt.json_schema.schema or {"type": "object"}
        if dep.has("json_schema"):
            config = body.setdefault("output_config", {})
            config["format"] = {"type": "json_schema", "schema": schema}
        else:
            system.append({"type": "text", "text": _JSON_SCHEMA_INSTRUCTION + _encode(schema).decode()})
    elif isinstance(fmt, ResponseFormatJsonObject):
        system.append({"type": "text", "text": _JSON_OBJECT_INSTRUCTION})


def _sampling_allowed(dep: Deployment, version: str) -> bool:
    """Version 2026-10-21 rejects sampling fields outright; `sampling: false` marks models that do too."""
    opts: AnthropicOptions = dep.options
    return version < _NO_SAMPLING_VERSION and opts.sampling


def _apply_sampling(body: dict[str, Any], req: ChatRequest, raw: dict[str, Any], dep: Deployment, version: str) -> None:
    """Sampling fields where the API version and model take them, and Anthropic-native extra-body fields."""
    for key in _NATIVE_EXTRAS:
        if key in raw:
            body[key] = raw[key]
    if not _sampling_allowed(dep, version):
        body.pop("top_k", None)
        return
    if req.temperature is not None:
        body["temperature"] = req.temperature
    elif req.top_p is not None:  # recent models reject both together; temperature wins
        body["top_p"] = req.top_p


def _system_field(system: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    return system[0]["text"] if len(system) == 1 else system


def build_body(dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The Anthropic Messages request body for a canonical request."""
    if req.n is not None and req.n > 1:
        raise _fail("n > 1 is not supported by Anthropic deployments", "n")
    system, messages = build_messages(req.messages, raw.get("messages"))
    limit = req.output_limit
    if limit is None:
        limit = dep.max_output_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": dep.model, "max_tokens": limit, "messages": messages}
    _apply_tools(body, req, dep)
    _apply_response_format(body, system, req, dep)
    if system:
        body["system"] = _system_field(system)
    stops = [s for s in req.stop_list if s.strip()]  # whitespace-only stop sequences are rejected
    if stops:
        body["stop_sequences"] = stops
    _apply_sampling(body, req, raw, dep, _version(dep))
    if req.user:
        body["metadata"] = {"user_id": req.user}
    if req.reasoning_effort and dep.has("reasoning") and req.reasoning_effort in _EFFORTS:
        body.setdefault("output_config", {})["effort"] = _EFFORTS[req.reasoning_effort]
    if stream:
        body["stream"] = True
    return body


def _version(dep: Deployment) -> str:
    opts: AnthropicOptions = dep.options
    return opts.api_version


def _headers(dep: Deployment) -> dict[str, str]:
    opts: AnthropicOptions = dep.options
    headers = {"content-type": "application/json", "anthropic-version": opts.api_version}
    if dep.api_key:
        headers["x-api-key"] = dep.api_key
    beta = opts.beta
    if beta:
        headers["anthropic-beta"] = beta if isinstance(beta, str) else ",".join(beta)
    if dep.headers:
        headers.update(dep.headers)
    return headers


def _url(dep: Deployment, endpoint: str = "/messages") -> str:
    base = (dep.api_base or DEFAULT_BASE).rstrip("/")
    return base + (endpoint if base.endswith("/v1") else "/v1" + endpoint)


def split_betas(value: str | list[str] | None) -> list[str]:
    """`anthropic-beta` values: a comma-separated header or a list, trimmed, empty ones dropped."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def _native_headers(dep: Deployment, client: Mapping[str, str]) -> dict[str, str]:
    """The deployment's headers, with the client's `anthropic-version` and its betas added to the deployment's.

    `client` holds only what the gateway let through (the ingress filters `anthropic-beta` by its
    allowlist before this point); the credential is always the deployment's.
    """
    headers = _headers(dep)
    version = client.get("anthropic-version")
    if version:
        headers["anthropic-version"] = version
    betas = split_betas(headers.get("anthropic-beta"))
    for beta in split_betas(client.get("anthropic-beta")):
        if beta not in betas:
            betas.append(beta)
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    return headers


# --------------------------------------------------------------------------- answers


def usage_from(raw: Any, base: Usage | None = None) -> Usage:
    """Anthropic usage → canonical; fields absent from `raw` keep their value in `base` (stream deltas)."""
    usage = Usage() if base is None else msgspec.structs.replace(base)
    if not isinstance(raw, dict):
        return usage
    fresh = usage.prompt - usage.cached - usage.cache_write
    if raw.get("input_tokens") is not None:
        fresh = int(raw["input_tokens"])
    if raw.get("cache_read_input_tokens") is not None:
        usage.cached = int(raw["cache_read_input_tokens"])
    if raw.get("cache_creation_input_tokens") is not None:
        usage.cache_write = int(raw["cache_creation_input_tokens"])
    usage.prompt = fresh + usage.cached + usage.cache_write
    if raw.get("output_tokens") is not None:
        usage.completion = int(raw["output_tokens"])
    details = raw.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        usage.reasoning = int(details["thinking_tokens"])
    server = raw.get("server_tool_use")
    if isinstance(server, dict) and isinstance(server.get("web_search_requests"), int):
        usage.web_searches = int(server["web_search_requests"])  # billed per search (Price.web_search)
    return usage


def finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return STOP_REASONS.get(str(stop_reason), "stop")


def _message_from_blocks(content: list[Any]) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    signed: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking") or ""))
            signed.append(
                {"type": "thinking", "thinking": thinking[-1], "signature": str(block.get("signature") or "")}
            )
        elif kind == "redacted_thinking":
            signed.append({"type": "redacted_thinking", "data": str(block.get("data") or "")})
        elif kind == "tool_use":
            arguments = _encode(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id") or new_id("toolu_"),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": arguments},
                }
            )
        # server_tool_use and *_tool_result ran at Anthropic: nothing for the client.
    text = "".join(texts) if texts else None
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if signed:
        message["thinking_blocks"] = signed  # extension: the signed blocks, for a client that returns them
    return message


def parse_message(data: dict[str, Any], default_model: str) -> Completion:
    """An Anthropic Message object → canonical chat.completion."""
    content = data.get("content")
    if not isinstance(content, list):
        raise ProviderError(ErrorKind.SERVER, "malformed response: no content")
    model = str(data.get("model") or default_model)
    stop_reason = data.get("stop_reason")
    choice: dict[str, Any] = {
        "index": 0,
        "message": _message_from_blocks(content),
        "finish_reason": finish_reason(stop_reason) or "stop",
        "logprobs": None,
    }
    if stop_reason == "stop_sequence" and data.get("stop_sequence"):
        choice["stop_sequence"] = data["stop_sequence"]  # extension: lets /v1/messages report it back
    usage = usage_from(data.get("usage"))
    body = {
        "id": str(data.get("id") or new_id("msg_")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage.to_openai(),
    }
    return Completion(body, usage, model)


# --------------------------------------------------------------------------- errors


def classify(status: int, err_type: str, message: str) -> ErrorKind:
    """Anthropic error → kind: the error type first, then the status; 0 means an in-stream event."""
    kind = _ERROR_TYPES.get(err_type)
    if kind is ErrorKind.BAD_REQUEST or (kind is None and status in (0, 400, 413, 422)):
        lowered = message.lower()
        if mentions_context_length(message) or "context limit" in lowered:
            return ErrorKind.CONTEXT_LENGTH
    if kind is not None:
        return kind
    if status == 0:
        return ErrorKind.SERVER
    return kind_from_status(status)


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        data = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "", body[:200].decode("utf-8", "replace").strip()
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("type") or ""), str(err.get("message") or "")
    if isinstance(err, str):
        return "", err
    return "", ""


def _scrub(text: str) -> str:
    return _SECRET.sub("[redacted]", text) if "sk-ant-" in text else text


def error_from_event(data: dict[str, Any], after_first_byte: bool) -> ProviderError:
    err = data.get("error")
    if not isinstance(err, dict):
        err = {}
    err_type = str(err.get("type") or "")
    message = _scrub(str(err.get("message") or "error event in stream"))
    return upstream_error(
        classify(0, err_type, message),
        f"provider stream error ({err_type or 'unknown'})",
        message,
        after_first_byte=after_first_byte,
    )


def _no_embeddings(dep: Deployment) -> GatewayError:
    return GatewayError(400, f"deployment {dep.name!r} (Anthropic) does not serve embeddings", param="model")


# --------------------------------------------------------------------------- adapter


#: The wire format `/v1/messages` bodies are in (NativePassthrough.native_formats).
NATIVE_FORMAT = "anthropic-messages"


class AnthropicAdapter:
    """Anthropic's Messages API (api.anthropic.com or a compatible endpoint).

    Besides the contract: `NativePassthrough` for `anthropic-messages` bodies and `TokenCounter`.
    """

    name: ClassVar[str] = "anthropic"
    options_type: ClassVar[type[AnthropicOptions]] = AnthropicOptions
    native_formats: ClassVar[frozenset[str]] = frozenset({NATIVE_FORMAT})

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        body = build_body(dep, req, raw, stream)
        return HttpCall("POST", _url(dep), _headers(dep), _encode(body))

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        try:
            data = _decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise ProviderError(ErrorKind.SERVER, "malformed response body (not JSON)") from None
        if not isinstance(data, dict):
            raise ProviderError(ErrorKind.SERVER, "malformed response body (not an object)")
        if data.get("type") == "error":
            raise error_from_event(data, after_first_byte=False)
        return parse_message(data, dep.model)

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(StreamStamp(model=dep.model))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        err_type, message = _error_fields(body)
        message = _scrub(message)
        kind = classify(status, err_type, message)
        text = message or f"HTTP {status}"
        label = f" {err_type}" if err_type else ""
        return upstream_error(
            kind, f"provider answered {status}{label}", text, status=status, retry_after=parse_retry_after(headers)
        )

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        raise _no_embeddings(dep)

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        raise _no_embeddings(dep)

    # ------------------------------------------------------------------ native pass-through

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
        """The client's Messages body with only `model` rewritten: its own bytes where the model can be spliced
        in (`with_model`), else re-encoded with the key order kept; everything else (thinking and its
        signatures, cache_control, citations, documents, server tools, metadata, context_management) goes out
        as the client sent it."""
        _check_format(fmt)
        url, sent_headers = _url(dep), _native_headers(dep, headers)
        if bool(body.get("stream")) == stream:
            spliced = with_model(raw, body, dep.model)
            if spliced is not None:
                return HttpCall("POST", url, sent_headers, spliced)
        out = dict(body)
        out["model"] = dep.model
        if stream and out.get("stream") is not True:
            out["stream"] = True
        elif not stream and "stream" in out:
            del out["stream"]
        return HttpCall("POST", url, sent_headers, _encode(out))

    def parse_native(self, dep: Deployment, fmt: str, body: bytes) -> Completion:
        """The provider's bytes kept as `native` (sent on unchanged); usage and model read for accounting."""
        _check_format(fmt)
        data = _decode_object(body)
        if data.get("type") == "error":
            raise error_from_event(data, after_first_byte=False)
        if not isinstance(data.get("content"), list):
            raise ProviderError(ErrorKind.SERVER, "malformed response: no content")
        return Completion(data, usage_from(data.get("usage")), str(data.get("model") or dep.model), native=body)

    def native_stream(self, dep: Deployment, fmt: str) -> NativeAnthropicStream:
        _check_format(fmt)
        return NativeAnthropicStream(dep.model)

    # ------------------------------------------------------------------ token counting

    def count_tokens_call(self, dep: Deployment, req: ChatRequest) -> HttpCall:
        """`/v1/messages/count_tokens` for a canonical request (the Messages body without max_tokens)."""
        body = build_body(dep, req, {}, stream=False)
        for key in ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata"):
            body.pop(key, None)
        return HttpCall("POST", _url(dep, "/messages/count_tokens"), _headers(dep), _encode(body))

    def native_count_tokens_call(self, dep: Deployment, body: dict[str, Any], headers: Mapping[str, str]) -> HttpCall:
        """`/v1/messages/count_tokens` for the client's own count_tokens body (only `model` rewritten)."""
        out = dict(body)
        out["model"] = dep.model
        return HttpCall("POST", _url(dep, "/messages/count_tokens"), _native_headers(dep, headers), _encode(out))

    def parse_count_tokens(self, dep: Deployment, body: bytes) -> int:
        data = _decode_object(body)
        count = data.get("input_tokens")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ProviderError(ErrorKind.SERVER, "malformed count_tokens answer: no input_tokens")
        return count


def _check_format(fmt: str) -> None:
    if fmt != NATIVE_FORMAT:
        raise GatewayError(400, f"the Anthropic adapter does not pass {fmt!r} bodies through")


def _decode_object(body: bytes) -> dict[str, Any]:
    try:
        data = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ProviderError(ErrorKind.SERVER, "malformed response body (not JSON)") from None
    if not isinstance(data, dict):
        raise ProviderError(ErrorKind.SERVER, "malformed response body (not an object)")
    return data


class NativeAnthropicStream:
    """Anthropic's own events, re-framed byte for byte (`event: NAME\ndata: DATA\n\n`) as `msgspec.Raw`.

    Parsed only for what the gateway needs: usage (message_start, message_delta), the model, the end
    (message_stop), in-stream errors, and `answered`: a content block with substance was seen. Until then
    the executor may still fail over invisibly (message_start, ping and an empty block opening carry none).
    Content deltas after the first are not decoded at all.
    """

    def __init__(self, model: str) -> None:
        self.usage = Usage()
        self.model = model
        self.answered = False
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[dict[str, Any] | msgspec.Raw]:
        name = event.event
        data = event.data
        if name == "content_block_delta" and self.answered:  # the hot path: no decoding
            return [msgspec.Raw(b"event: content_block_delta\ndata: " + data + b"\n\n")]
        if not data.strip():
            return [msgspec.Raw(_frame(name, data))]
        try:
            payload = _decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise ProviderError(
                ErrorKind.SERVER, "malformed stream event (not JSON)", after_first_byte=self.answered
            ) from None
        if not isinstance(payload, dict):
            raise ProviderError(
                ErrorKind.SERVER, "malformed stream event (not an object)", after_first_byte=self.answered
            )
        kind = payload.get("type") or name
        if kind == "error":
            raise error_from_event(payload, after_first_byte=self.answered)
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                if message.get("model"):
                    self.model = str(message["model"])
                self.usage = usage_from(message.get("usage"), self.usage)
        elif kind == "message_delta":
            self.usage = usage_from(payload.get("usage"), self.usage)
        elif kind == "message_stop":
            self._done = True
        elif not self.answered and kind in ("content_block_start", "content_block_delta"):
            self.answered = _has_substance(payload)
        return [msgspec.Raw(_frame(name, data))]

    def finish(self) -> list[dict[str, Any]]:
        if not self._done:
            raise ProviderError(ErrorKind.CONNECTION, "stream ended before message_stop", after_first_byte=True)
        return []


def _frame(name: str | None, data: bytes) -> bytes:
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _has_substance(payload: dict[str, Any]) -> bool:
    """A block opening or delta that carries something a client would show or act on."""
    if payload.get("type") == "content_block_start":
        block = payload.get("content_block")
        if not isinstance(block, dict):
            return False
        if block.get("type") in ("text", "thinking"):
            return bool(block.get("text") or block.get("thinking"))
        return True  # tool_use, server_tool_use, redacted_thinking, results: substance from the start
    delta = payload.get("delta")
    if not isinstance(delta, dict):
        return False
    return any(delta.get(k) for k in ("text", "thinking", "partial_json", "signature", "citation"))


# --------------------------------------------------------------------------- streaming


class AnthropicStreamTranslator:
    """Anthropic stream events → canonical chunks; usage kept in `self.usage`, never emitted."""

    def __init__(self, stamp: StreamStamp) -> None:
        self.stamp = stamp
        self.usage = Usage()
        self.model = stamp.model
        self._done = False
        self._emitted = False
        self._tool_count = 0
        #: Anthropic block index → ("text" | "thinking" | "tool", tool-call index or -1); others ignored.
        self._blocks: dict[int, tuple[str, int]] = {}

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if not event.data.strip():
            return []
        try:
            data = _decode(event.data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise ProviderError(
                ErrorKind.SERVER, "malformed stream event (not JSON)", after_first_byte=self._emitted
            ) from None
        if not isinstance(data, dict):
            raise ProviderError(
                ErrorKind.SERVER, "malformed stream event (not an object)", after_first_byte=self._emitted
            )
        kind = data.get("type") or event.event
        if kind == "content_block_delta":  # the hot path first
            return self._on_delta(data)
        if kind == "content_block_start":
            return self._on_block_start(data)
        if kind == "message_start":
            return self._on_message_start(data)
        if kind == "message_delta":
            return self._on_message_delta(data)
        if kind == "message_stop":
            self._done = True
        elif kind == "error":
            raise error_from_event(data, after_first_byte=self._emitted)
        return []  # content_block_stop, ping, and event types added after this was written

    def finish(self) -> list[dict[str, Any]]:
        if not self._done:
            raise ProviderError(ErrorKind.CONNECTION, "stream ended before message_stop", after_first_byte=True)
        return []

    # ------------------------------------------------------------------ events

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, *, content: bool = True) -> dict[str, Any]:
        self._emitted = self._emitted or content
        return {
            "id": self.stamp.id,
            "object": "chat.completion.chunk",
            "created": self.stamp.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def _on_message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        message = data.get("message") or {}
        if message.get("model"):
            self.model = str(message["model"])
        if message.get("id"):
            self.stamp.id = str(message["id"])
        self.usage = usage_from(message.get("usage"), self.usage)
        # The role chunk carries no content, so an error right after it still allows a clean retry.
        return [self._chunk({"role": "assistant", "content": ""}, content=False)]

    def _on_block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        index = int(data.get("index", 0))
        block = data.get("content_block") or {}
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = ("text", -1)
            return [self._chunk({"content": block["text"]})] if block.get("text") else []
        if kind == "thinking":
            self._blocks[index] = ("thinking", -1)
            return [self._chunk({"reasoning_content": block["thinking"]})] if block.get("thinking") else []
        if kind == "redacted_thinking" and block.get("data"):
            return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": str(block["data"])}]})]
        if kind != "tool_use":
            return []  # server_tool_use and server tool results stay at Anthropic
        call_index = self._tool_count
        self._tool_count += 1
        self._blocks[index] = ("tool", call_index)
        call = {
            "index": call_index,
            "id": block.get("id") or new_id("toolu_"),
            "type": "function",
            "function": {"name": block.get("name", ""), "arguments": ""},
        }
        chunks = [self._chunk({"tool_calls": [call]})]
        if block.get("input"):  # the input normally streams as input_json_delta; keep one given up front
            chunks.append(self._args_chunk(call_index, _encode(block["input"]).decode()))
        return chunks

    def _args_chunk(self, call_index: int, fragment: str) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]})

    def _on_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        known = self._blocks.get(int(data.get("index", 0)))
        delta = data.get("delta") or {}
        if known is None:
            return []
        kind, call_index = known
        dtype = delta.get("type")
        if dtype == "text_delta" and kind == "text":
            text = delta.get("text") or ""
            return [self._chunk({"content": text})] if text else []
        if dtype == "input_json_delta" and kind == "tool":
            fragment = delta.get("partial_json") or ""
            return [self._args_chunk(call_index, fragment)] if fragment else []
        if dtype == "thinking_delta" and kind == "thinking":
            thinking = delta.get("thinking") or ""
            return [self._chunk({"reasoning_content": thinking})] if thinking else []
        if dtype == "signature_delta" and kind == "thinking" and delta.get("signature"):
            # The signature closes the thinking block streamed so far (the `thinking_blocks` extension).
            block = {"type": "thinking", "thinking": "", "signature": str(delta["signature"])}
            return [self._chunk({"thinking_blocks": [block]})]
        return []  # citations_delta: nothing in the OpenAI shape carries it

    def _on_message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.usage = usage_from(data.get("usage"), self.usage)  # cumulative counts: overwrite
        delta = data.get("delta") or {}
        reason = finish_reason(delta.get("stop_reason"))
        if reason is None:
            return []
        chunk = self._chunk({}, reason)
        if delta.get("stop_reason") == "stop_sequence" and delta.get("stop_sequence"):
            chunk["choices"][0]["stop_sequence"] = delta["stop_sequence"]
        return [chunk]


__all__ = [
    "NATIVE_FORMAT",
    "TOOL_ERROR_MARKER",
    "AnthropicAdapter",
    "AnthropicStreamTranslator",
    "NativeAnthropicStream",
    "build_body",
    "build_messages",
    "classify",
    "finish_reason",
    "parse_message",
    "signed_thinking_blocks",
    "split_betas",
    "usage_from",
]
