"""The Converse request body of a canonical (OpenAI chat) request: the pure half of the Bedrock adapter.

Converse differs from OpenAI's shape in ways that each need a rule: system prompts are a top-level list,
turns alternate `user`/`assistant` (same-role neighbours are merged), tool results travel as `toolResult`
blocks in a user turn, images and documents go as bytes (the base64 of a data URL, which is what the JSON
protocol carries for a blob), sampling knobs live in `inferenceConfig`, and tools in `toolConfig`.

JSON mode: Converse has no `response_format`. By default both `json_object` and `json_schema` are emulated
with a forced tool whose input schema is the wanted schema (`{"type": "object"}` for json_object); the tool
call's input comes back as the message content and `tool_use` as `stop` (providers/bedrock_parse.py). With
`options: {structured_output: true}` a json_schema goes out as Converse's own `outputConfig.textFormat`
instead (structured outputs, for the models that have them). A request that brings its own tools as well
cannot force a tool: the schema then rides in the system prompt as an instruction.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.providers.data_url import parse_data_url
from modelyard.schema.chat import (
    AssistantMessage,
    AudioPart,
    ChatRequest,
    Content,
    DeveloperMessage,
    FilePart,
    FunctionTool,
    ImagePart,
    RefusalPart,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    SystemMessage,
    TextPart,
    ToolChoiceAllowed,
    ToolChoiceFunction,
    ToolMessage,
    UserMessage,
    text_of,
)
from modelyard.schema.errors import GatewayError, bad_request

if TYPE_CHECKING:
    from modelyard.providers.bedrock import BedrockOptions

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

#: The name of the forced tool that carries a JSON answer (json_object / json_schema emulation).
JSON_TOOL = "json_response"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
}
#: What a document's `name` may hold (letters, digits, single spaces, hyphens, parentheses, brackets).
_NAME_DROP = re.compile(r"[^A-Za-z0-9\s\-()\[\]]+")
_JSON_INSTRUCTION = "Respond with a single valid JSON object only: no prose before or after it and no Markdown."
_SCHEMA_INSTRUCTION = "Respond with a single valid JSON object only, conforming to this JSON Schema:\n"


def build_body(opts: BedrockOptions, req: ChatRequest) -> dict[str, Any]:
    """The Converse (or ConverseStream: the same body) request for `req`; GatewayError for what it
    cannot express."""
    if req.n is not None and req.n > 1:
        raise GatewayError(400, "Bedrock Converse returns one choice: n must be 1", param="n")
    messages, system = _messages(req)
    body: dict[str, Any] = {"messages": messages}
    tools = _tools(req)
    json_tool, json_instruction, output_format = _json_mode(opts, req, bool(tools))
    if json_instruction:
        system.append({"text": json_instruction})
    if system:
        body["system"] = system
    if json_tool is not None:
        body["toolConfig"] = {"tools": [json_tool], "toolChoice": {"tool": {"name": JSON_TOOL}}}
    elif tools:
        choice = _tool_choice(req)
        # Converse has no `none`: the tools stay out, unless the history holds tool blocks (Converse then
        # requires a toolConfig, and the tools go out with the default choice).
        if choice != "none" or _has_tool_blocks(messages):
            config: dict[str, Any] = {"tools": tools}
            if isinstance(choice, dict):
                config["toolChoice"] = choice
            body["toolConfig"] = config
    if output_format is not None:
        body["outputConfig"] = {"textFormat": output_format}
    inference = _inference(req)
    if inference:
        body["inferenceConfig"] = inference
    _options_fields(opts, body)
    return body


def json_tool_name(opts: BedrockOptions, req: ChatRequest) -> str | None:
    """The forced tool's name when `req` emulates JSON mode with it (its input is then the answer's
    content, and `tool_use` means `stop`), else None. The same decision as `_json_mode`."""
    fmt = req.response_format
    if req.tools or not isinstance(fmt, ResponseFormatJsonObject | ResponseFormatJsonSchema):
        return None
    if isinstance(fmt, ResponseFormatJsonSchema) and opts.structured_output:
        return None
    return JSON_TOOL


# ----------------------------------------------------------------------------- messages


def _messages(req: ChatRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    messages: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    for i, msg in enumerate(req.messages):
        where = f"messages[{i}]"
        if isinstance(msg, SystemMessage | DeveloperMessage):
            text = text_of(msg.content)
            if text.strip():
                system.append({"text": text})
        elif isinstance(msg, UserMessage):
            _append(messages, "user", _user_blocks(msg.content, where))
        elif isinstance(msg, AssistantMessage):
            _append(messages, "assistant", _assistant_blocks(msg, where))
        elif isinstance(msg, ToolMessage):
            _append(messages, "user", [_tool_result(msg)])
    return messages, system


def _has_tool_blocks(messages: list[dict[str, Any]]) -> bool:
    return any("toolUse" in block or "toolResult" in block for msg in messages for block in msg["content"])


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _text(text: str) -> list[dict[str, Any]]:
    """Converse refuses blank text blocks, so those are dropped."""
    return [{"text": text}] if text.strip() else []


def _user_blocks(content: Content, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return _text(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        if isinstance(part, TextPart):
            blocks.extend(_text(part.text))
        elif isinstance(part, RefusalPart):
            blocks.extend(_text(part.refusal))
        elif isinstance(part, ImagePart):
            blocks.append(_image(part.image_url.url, param))
        elif isinstance(part, FilePart):
            blocks.append(_document(part, j, param))
        elif isinstance(part, AudioPart):
            raise bad_request("input_audio parts are not supported by Bedrock Converse", param=param)
    return blocks


def _image(url: str, param: str) -> dict[str, Any]:
    if not url.startswith("data:"):
        raise bad_request("Bedrock takes images as base64 data URLs only (no http(s) URLs)", param=param)
    mime, data = parse_data_url(url, param)
    fmt = _IMAGE_FORMATS.get(mime)
    if fmt is None:
        raise bad_request(f"image type {mime!r} is not supported by Bedrock (png/jpeg/gif/webp)", param=param)
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _document(part: FilePart, index: int, param: str) -> dict[str, Any]:
    ref = part.file
    if not ref.file_data:
        raise bad_request("file parts need inline file_data for Bedrock deployments", param=param)
    mime, data = parse_data_url(ref.file_data, param)
    fmt = _DOCUMENT_FORMATS.get(mime)
    if fmt is None:
        raise bad_request(f"file type {mime!r} is not supported by Bedrock documents", param=param)
    return {"document": {"format": fmt, "name": document_name(ref.filename, index), "source": {"bytes": data}}}


def document_name(filename: str | None, index: int) -> str:
    """A document `name` Converse accepts: the file's stem with disallowed characters dropped."""
    stem = (filename or "").rsplit(".", 1)[0] if filename and "." in filename else (filename or "")
    name = " ".join(_NAME_DROP.sub(" ", stem).split())[:200]
    return name or f"document-{index + 1}"


def _assistant_blocks(msg: AssistantMessage, where: str) -> list[dict[str, Any]]:
    # Reasoning text is not replayed: Converse wants it signed, and canonical history carries no signature.
    blocks: list[dict[str, Any]] = _text(text_of(msg.content)) if msg.content is not None else []
    for k, call in enumerate(msg.tool_calls or ()):
        try:
            args = _decode(call.function.arguments) if call.function.arguments.strip() else {}
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise bad_request("tool call arguments are not valid JSON", param=f"{where}.tool_calls[{k}]") from None
        if not isinstance(args, dict):
            raise bad_request("tool call arguments must be a JSON object", param=f"{where}.tool_calls[{k}]")
        blocks.append({"toolUse": {"toolUseId": call.id, "name": call.function.name, "input": args}})
    return blocks


def _tool_result(msg: ToolMessage) -> dict[str, Any]:
    text = text_of(msg.content)
    return {"toolResult": {"toolUseId": msg.tool_call_id, "content": [{"text": text if text else "(empty)"}]}}


# ----------------------------------------------------------------------------- tools and JSON mode


def _tools(req: ChatRequest) -> list[dict[str, Any]]:
    tools = []
    for i, tool in enumerate(req.tools or ()):
        if not isinstance(tool, FunctionTool):
            raise bad_request("Bedrock Converse takes function tools only", param=f"tools[{i}]")
        fn = tool.function
        spec: dict[str, Any] = {"name": fn.name, "inputSchema": {"json": fn.parameters or {"type": "object"}}}
        if fn.description:
            spec["description"] = fn.description
        tools.append({"toolSpec": spec})
    return tools


def _tool_choice(req: ChatRequest) -> dict[str, Any] | str | None:
    """`toolChoice` for the request's tool_choice; "none" when the tools must stay out; None: default."""
    choice = req.tool_choice
    if choice is None or choice == "auto":
        return None
    if choice == "none":
        return "none"
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, ToolChoiceFunction):
        return {"tool": {"name": choice.function.name}}
    if isinstance(choice, ToolChoiceAllowed):
        return {"any": {}} if choice.allowed_tools.mode == "required" else None
    raise bad_request("this tool_choice is not supported by Bedrock Converse", param="tool_choice")


def _json_mode(
    opts: BedrockOptions, req: ChatRequest, has_tools: bool
) -> tuple[dict[str, Any] | None, str | None, dict[str, Any] | None]:
    """(forced JSON tool, system instruction, outputConfig.textFormat): at most one of them is set."""
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatJsonSchema):
        schema = fmt.json_schema.schema or {"type": "object"}
        if opts.structured_output:
            structure: dict[str, Any] = {"schema": _encode(schema).decode()}
            if _TOOL_NAME.match(fmt.json_schema.name):
                structure["name"] = fmt.json_schema.name
            if fmt.json_schema.description:
                structure["description"] = fmt.json_schema.description
            return None, None, {"type": "json_schema", "structure": {"jsonSchema": structure}}
        if has_tools:
            return None, _SCHEMA_INSTRUCTION + _encode(schema).decode(), None
        return _json_tool(schema, fmt.json_schema.description), None, None
    if isinstance(fmt, ResponseFormatJsonObject):
        if has_tools:
            return None, _JSON_INSTRUCTION, None
        return _json_tool({"type": "object"}, None), None, None
    return None, None, None


def _json_tool(schema: dict[str, Any], description: str | None) -> dict[str, Any]:
    about = description or "Give the answer as this tool's input: a JSON object."
    return {"toolSpec": {"name": JSON_TOOL, "description": about, "inputSchema": {"json": schema}}}


# ----------------------------------------------------------------------------- inference and extras


def _inference(req: ChatRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if limit is not None:
        config["maxTokens"] = limit
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.top_p is not None:
        config["topP"] = req.top_p
    if req.stop:
        config["stopSequences"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    return config


def _options_fields(opts: BedrockOptions, body: dict[str, Any]) -> None:
    if opts.guardrail_config:
        body["guardrailConfig"] = opts.guardrail_config
    if opts.additional_model_request_fields:
        body["additionalModelRequestFields"] = opts.additional_model_request_fields
    if opts.performance_config:
        body["performanceConfig"] = opts.performance_config


__all__ = ["JSON_TOOL", "build_body", "document_name", "json_tool_name"]
