"""Anthropic egress, the request side: a canonical (OpenAI-shaped) chat request → a Messages API body.

Anthropic differs from OpenAI in ways that each need a rule here: the system prompt is a top-level field,
turns must alternate (so consecutive same-role messages are merged), tool results travel as `tool_result`
blocks inside a user turn, and `max_tokens` is required. Signed thinking blocks a client returns (the
`thinking_blocks` extension) go back to Anthropic as they came; unsigned ones (reasoning another vendor
produced) are dropped, since Anthropic refuses them. The adapter (providers/anthropic.py) sends the body.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.config.model import Deployment
from modelyard.providers.data_url import parse_data_url
from modelyard.schema.chat import (
    AssistantMessage,
    AudioPart,
    ChatRequest,
    Content,
    ContentPart,
    CustomTool,
    DeveloperMessage,
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
    UserMessage,
)
from modelyard.schema.errors import GatewayError

if TYPE_CHECKING:
    from modelyard.providers.anthropic import AnthropicOptions

#: The API version that removed temperature/top_p/top_k (400 even at default values).
_NO_SAMPLING_VERSION = "2026-10-21"
DEFAULT_MAX_TOKENS = 4096

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
#: How a failed tool result (`is_error: true`) is marked in the text of an OpenAI `tool` message.
TOOL_ERROR_MARKER = "[tool error] "

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


__all__ = ["DEFAULT_MAX_TOKENS", "TOOL_ERROR_MARKER", "build_body", "build_messages", "signed_thinking_blocks"]
