"""Anthropic Messages requests for `/v1/messages`: translated to canonical chat, and the pass-through policy.

The gateway thinks in OpenAI Chat Completions, so an Anthropic Messages request becomes a canonical chat
request dict (validated afterwards with `chat_request_from_dict`); the answer's way back is
server/anthropic_answer.py. No I/O here: the HTTP handler owns the request and the response.

What crosses vendors and what does not:
- signed thinking: an assistant turn's `thinking` / `redacted_thinking` blocks travel as `thinking_blocks` on
  the canonical assistant message; the Anthropic adapter sends the signed ones back as they came, every
  other adapter ignores them (a signature is only meaningful to the vendor that made it). Unsigned ones
  (reasoning another vendor produced, returned with `signature: ""`) are dropped.
- pass-through policy (`passthrough_headers`, `check_server_tools`): forwarded `anthropic-beta` values pass
  an allowlist, the others are dropped, never forwarded; server tools (web search, code execution, ...) are
  refused unless the operator allows them, since their cost is not priced by the gateway.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from typing import Any

import msgspec

from modelyard.providers.anthropic import TOOL_ERROR_MARKER, split_betas
from modelyard.schema.errors import GatewayError

_encode = msgspec.json.Encoder().encode
_log = logging.getLogger("modelyard.anthropic")

#: `anthropic-beta` values forwarded on pass-through when the config names none (`server.anthropic_betas`):
#: features that change how a request is processed but cost nothing extra and reach no stored objects.
#: Left out on purpose: files-api (another tenant's stored files), code-execution / mcp-client / web-fetch /
#: skills (priced server-side work or outbound calls), context-1m (long-context pricing), oauth (credentials).
DEFAULT_ANTHROPIC_BETAS: tuple[str, ...] = (
    "claude-code-20250219",
    "mid-conversation-system-2026-04-07",
    "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
    "token-efficient-tools-2025-02-19",
    "context-management-2025-06-27",
    "prompt-caching-2024-07-31",
    "output-128k-2025-02-19",
    "effort-2025-11-24",
    "structured-outputs-2025-11-13",
)

_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}

#: Blocks Anthropic defines that only its own servers can act on (server tools and their results).
_SERVER_BLOCKS = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
        "search_result",
        "tool_reference",
    }
)


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, f"{param}: {message}", param=param)


# --------------------------------------------------------------------------- request: content blocks


def _source_media(source: dict[str, Any], param: str) -> tuple[str, str]:
    media_type, data = source.get("media_type"), source.get("data")
    if not isinstance(media_type, str) or not isinstance(data, str):
        raise _bad("a base64 source needs string `media_type` and `data`", param)
    return media_type, data


def _image_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad("an image block needs a `source` object", f"{param}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = _source_media(source, f"{param}.source")
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f"image source type {kind!r} is not supported (use base64 or url)", f"{param}.source.type")


def _document_parts(block: dict[str, Any], param: str) -> list[dict[str, Any]]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad("a document block needs a `source` object", f"{param}.source")
    kind = source.get("type")
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if kind == "base64":
        media_type, data = _source_media(source, f"{param}.source")
        url = f"data:{media_type};base64,{data}"
        return [{"type": "file", "file": {"file_data": url, "filename": title or "document.pdf"}}]
    if kind == "text" and isinstance(source.get("data"), str):
        return [{"type": "text", "text": f"{title}\n\n{source['data']}" if title else source["data"]}]
    if kind == "content":
        inner = source.get("content")
        if isinstance(inner, str):
            return [{"type": "text", "text": inner}]
        if isinstance(inner, list):
            return [_user_part(b, f"{param}.source.content.{j}") for j, b in enumerate(inner)]
    raise _bad(f"document source type {kind!r} is not supported (use base64, text or content)", f"{param}.source.type")


def _block_type(block: Any, param: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _bad("each content block must be an object with a string `type`", param)
    return str(block["type"])


def _unsupported(kind: str, param: str) -> GatewayError:
    if kind in _SERVER_BLOCKS:
        return _bad(f"content block type {kind!r} is not supported by this gateway", f"{param}.type")
    return _bad(f"unknown content block type {kind!r}", f"{param}.type")


def _text_of_block(block: dict[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad("a text block needs a string `text`", f"{param}.text")
    return text


def _user_part(block: Any, param: str) -> dict[str, Any]:
    kind = _block_type(block, param)
    if kind == "text":
        return {"type": "text", "text": _text_of_block(block, param)}
    if kind == "image":
        return _image_part(block, param)
    raise _unsupported(kind, param)


def _tool_result(block: dict[str, Any], param: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A `tool` message, plus the images it carried (OpenAI tool messages hold text only)."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise _bad("a tool_result block needs a string `tool_use_id`", f"{param}.tool_use_id")
    content = block.get("content", "")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, inner in enumerate(content):
            part = _user_part(inner, f"{param}.content.{j}")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    else:
        raise _bad("tool_result content must be a string or a list of blocks", f"{param}.content")
    text = "\n".join(texts)
    if block.get("is_error"):
        text = TOOL_ERROR_MARKER + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}, images


def _user_messages(content: list[Any], param: str, server_tools: bool = False) -> list[dict[str, Any]]:
    """One Anthropic user turn → `tool` messages first (they answer the previous turn), then the rest."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{param}.{j}"
        kind = _block_type(block, where)
        if kind == "tool_result":
            message, images = _tool_result(block, where)
            tools.append(message)
            parts.extend(images)
        elif kind == "document":
            parts.extend(_document_parts(block, where))
        elif server_tools and kind in _SERVER_BLOCKS:
            continue
        elif kind not in ("thinking", "redacted_thinking"):
            parts.append(_user_part(block, where))
    if parts:
        tools.append({"role": "user", "content": parts})
    return tools


def _tool_call(block: dict[str, Any], param: str) -> dict[str, Any]:
    call_id, name, args = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise _bad("a tool_use block needs string `id` and `name`", param)
    if not isinstance(args, dict):
        raise _bad("tool_use `input` must be an object", f"{param}.input")
    arguments = _encode(args).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _signed_block(block: dict[str, Any]) -> dict[str, Any] | None:
    """A thinking block as `thinking_blocks` carries it, when it is signed (unsigned ones cannot go back)."""
    if block["type"] == "thinking":
        text, signature = block.get("thinking"), block.get("signature")
        if isinstance(text, str) and isinstance(signature, str) and signature:
            return {"type": "thinking", "thinking": text, "signature": signature}
        return None
    data = block.get("data")
    return {"type": "redacted_thinking", "data": data} if isinstance(data, str) and data else None


def _assistant_message(content: list[Any], param: str, server_tools: bool = False) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{param}.{j}"
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(_text_of_block(block, where))
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind in ("thinking", "redacted_thinking"):
            signed = _signed_block(block)
            if signed is not None:
                thinking.append(signed)
        elif not (server_tools and kind in _SERVER_BLOCKS):  # allowed server blocks exist on pass-through only
            raise _unsupported(kind, where)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking  # only the Anthropic adapter reads (and sends back) these
    return message


def _system_text(system: Any, param: str) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _bad("must be a string or a list of text blocks", param)
    texts = []
    for j, block in enumerate(system):
        if _block_type(block, f"{param}.{j}") != "text":
            raise _bad("only text blocks are allowed", f"{param}.{j}.type")
        texts.append(_text_of_block(block, f"{param}.{j}"))
    return "\n\n".join(texts)


def _message(raw: Any, param: str, server_tools: bool = False) -> list[dict[str, Any]]:
    if not isinstance(raw, dict):
        raise _bad("each message must be an object with `role` and `content`", param)
    role, content = raw.get("role"), raw.get("content")
    if role not in ("user", "assistant", "system"):
        raise _bad(f"role must be 'user' or 'assistant', got {role!r}", f"{param}.role")
    if role == "system":  # MessageParam admits system turns since API version 2026-10-21
        return [{"role": "system", "content": _system_text(content, f"{param}.content")}]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of content blocks", f"{param}.content")
    if role == "user":
        return _user_messages(content, f"{param}.content", server_tools)
    return [_assistant_message(content, f"{param}.content", server_tools)]


# --------------------------------------------------------------------------- request: options


def _tools(raw: Any, server_tools: bool = False) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _bad("must be a list of tool definitions", "tools")
    out = []
    for i, tool in enumerate(raw):
        param = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _bad("each tool must be an object", param)
        if server_tools and tool.get("type") not in (None, "custom"):
            continue  # an allowed server tool: on the pass-through body only
        if tool.get("type") not in (None, "custom"):
            raise _bad(
                f"tool type {tool['type']!r} is not supported by this gateway (only client tools)", f"{param}.type"
            )
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not isinstance(schema, dict):
            raise _bad("a tool needs a string `name` and an `input_schema` object", param)
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        if tool.get("strict") is True:
            fn["strict"] = True
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(raw: Any) -> tuple[Any, bool]:
    """(OpenAI tool_choice, parallel tool calls allowed)."""
    if not isinstance(raw, dict):
        raise _bad("must be an object with a `type`", "tool_choice")
    kind = raw.get("type")
    parallel = not raw.get("disable_parallel_tool_use", False)
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", True
    if kind == "tool" and isinstance(raw.get("name"), str):
        return {"type": "function", "function": {"name": raw["name"]}}, parallel
    raise _bad(f"unsupported tool_choice {raw!r} (auto, any, tool with a name, none)", "tool_choice")


def _apply_tools(body: dict[str, Any], chat: dict[str, Any], server_tools: bool = False) -> None:
    if body.get("tools") is None:
        return
    tools = _tools(body["tools"], server_tools)
    if not tools:
        return
    chat["tools"] = tools
    if body.get("tool_choice") is not None:
        choice, parallel = _tool_choice(body["tool_choice"])
        chat["tool_choice"] = choice
        if not parallel:
            chat["parallel_tool_calls"] = False


def _apply_output_config(body: dict[str, Any], chat: dict[str, Any]) -> None:
    config = body.get("output_config")
    if not isinstance(config, dict):
        return
    fmt = config.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise _bad("json_schema format needs a `schema` object", "output_config.format.schema")
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True},
        }
    effort = config.get("effort")
    if isinstance(effort, str) and effort in _EFFORT:
        chat["reasoning_effort"] = _EFFORT[effort]


#: Anthropic's documented ranges for the sampling numbers (temperature is 0..1 there, not OpenAI's 0..2).
_SAMPLING_BOUNDS: dict[str, tuple[float, float]] = {"temperature": (0.0, 1.0), "top_p": (0.0, 1.0)}
#: The most output tokens a request may ask for (as on /v1/chat/completions: far above any model's).
MAX_OUTPUT_TOKENS = 10_000_000


def _number(value: Any, key: str, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise _bad(f"must be a finite number between {low:g} and {high:g}", key)
    return value


def _apply_sampling(body: dict[str, Any], chat: dict[str, Any]) -> None:
    for key, (low, high) in _SAMPLING_BOUNDS.items():
        value = body.get(key)
        if value is not None:
            chat[key] = _number(value, key, low, high)
    top_k = body.get("top_k")  # no OpenAI equivalent: checked, then dropped
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= 1_000_000):
        raise _bad("must be a non-negative integer", "top_k")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("must be a list of strings", "stop_sequences")
        if stops:
            chat["stop"] = stops


def _required(body: dict[str, Any]) -> tuple[str, int, list[Any]]:
    model, max_tokens, messages = body.get("model"), body.get("max_tokens"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise _bad("field required (a model name)", "model")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 <= max_tokens <= MAX_OUTPUT_TOKENS:
        raise _bad(f"field required (a non-negative integer up to {MAX_OUTPUT_TOKENS})", "max_tokens")
    if not isinstance(messages, list):
        raise _bad("field required (a list of messages)", "messages")
    return model, max_tokens, messages


def messages_request_to_chat(body: dict[str, Any], *, server_tools: bool = False) -> dict[str, Any]:
    """An Anthropic Messages request body → a canonical OpenAI chat request dict.

    `server_tools`: the operator allows Anthropic server tools (see `check_server_tools`); they and their
    result blocks are then left out of the canonical request (they exist on the pass-through body only)
    instead of being refused.
    """
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    model, max_tokens, raw_messages = _required(body)
    messages: list[dict[str, Any]] = []
    if body.get("system") not in (None, "", []):
        messages.append({"role": "system", "content": _system_text(body["system"], "system")})
    for i, raw in enumerate(raw_messages):
        messages.extend(_message(raw, f"messages.{i}", server_tools))
    chat: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    _apply_tools(body, chat, server_tools)
    _apply_sampling(body, chat)
    _apply_output_config(body, chat)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if body.get("stream") is True:
        chat["stream"] = True
    return chat


def wants_thinking(body: dict[str, Any]) -> bool:
    """Whether the caller asked for thinking blocks (only then are they sent back, as Anthropic does)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


# --------------------------------------------------------------------------- pass-through policy


def passthrough_headers(client: Mapping[str, str], allowed_betas: Collection[str]) -> dict[str, str]:
    """The client headers a pass-through forwards: `anthropic-version`, and the `anthropic-beta` values on
    the allowlist (per key, else `server.anthropic_betas`). Other betas are dropped, never forwarded: some
    cost money or reach stored files. Header names are matched case-insensitively."""
    out: dict[str, str] = {}
    beta: str | None = None
    for name, value in client.items():
        lowered = name.lower()
        if lowered == "anthropic-version" and value:
            out["anthropic-version"] = value
        elif lowered == "anthropic-beta":
            beta = value if beta is None else f"{beta},{value}"
    kept: list[str] = []
    for item in split_betas(beta):
        if item in allowed_betas:
            if item not in kept:
                kept.append(item)
        else:
            _log.debug("anthropic-beta %r is not on the allowlist: dropped", item)
    if kept:
        out["anthropic-beta"] = ",".join(kept)
    return out


_DEFAULT_BETA_SET = frozenset(DEFAULT_ANTHROPIC_BETAS)


def allowed_betas(configured: list[str] | None, key_override: frozenset[str] | None) -> Collection[str]:
    """The beta allowlist in force: the key's own (metadata `anthropic_betas`), else `server.anthropic_betas`,
    else the safe default."""
    if key_override is not None:
        return key_override
    return _DEFAULT_BETA_SET if configured is None else frozenset(configured)


def server_tools_allowed(configured: bool, key_override: bool | None) -> bool:
    """Server tools on pass-through: the key's metadata `anthropic_server_tools` decides, else the server's."""
    return configured if key_override is None else key_override


def server_tool_types(body: dict[str, Any]) -> list[tuple[int, str]]:
    """(index, type) of each Anthropic server tool (web search, code execution, ...) in a Messages body.

    A client tool has no `type` or `type: custom`; every typed tool runs (or is billed) at Anthropic,
    including the versioned client-side ones (bash, text_editor, computer), which cost nothing extra but
    are still typed: they are listed too, so an operator's allowlist decides."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        (i, str(tool["type"]))
        for i, tool in enumerate(tools)
        if isinstance(tool, dict) and tool.get("type") not in (None, "custom")
    ]


def check_server_tools(body: dict[str, Any], allowed: bool) -> None:
    """Refuse (400, `param` at the tool) a server tool the operator has not allowed: the gateway does not
    price their use (`usage.server_tool_use`), so none reaches an upstream unpriced without consent."""
    if allowed:
        return
    found = server_tool_types(body)
    if found:
        index, kind = found[0]
        raise _bad(
            f"tool type {kind!r} is not allowed for this key (Anthropic server tools are off unless the "
            "operator sets server.anthropic_server_tools or the key's anthropic_server_tools metadata)",
            f"tools.{index}.type",
        )


__all__ = [
    "DEFAULT_ANTHROPIC_BETAS",
    "allowed_betas",
    "check_server_tools",
    "messages_request_to_chat",
    "passthrough_headers",
    "server_tool_types",
    "server_tools_allowed",
    "wants_thinking",
]
