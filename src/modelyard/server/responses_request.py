"""OpenAI Responses requests for the `/v1/responses` ingress: checked, then translated to a canonical chat request.

The gateway thinks in OpenAI Chat Completions, so a Responses request (its `input` items, after the stored
conversation a `previous_response_id` names) is checked field by field (a 400 with `param` on a bad one) and
becomes a canonical chat request dict; `Translation` keeps what the answer's translation needs to map back
(server/responses_answer.py). No I/O.

Documented losses across wire formats (translated deployments only; a Responses-speaking deployment gets the
client's body as sent):
- `reasoning` input items are dropped: their `encrypted_content` belongs to the vendor that made it and is
  never sent to another; a translated answer's reasoning item carries plain `reasoning_text`, never
  `encrypted_content`.
- hosted tools (`web_search`, `file_search`, `code_interpreter`, `mcp`, `image_generation`, computer and shell
  tools, …) are dropped: a chat deployment cannot run them. Naming one in `tool_choice` is a 400.
- `namespace` tools are flattened to functions named `{namespace}__{name}` and mapped back on the way out.
- `custom` (freeform) tools become functions taking one string, `{"input": ...}`, so that every egress can
  carry them; their calls come back as `custom_tool_call` items (a grammar `format` is described to the
  model, not enforced).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Struct

from modelyard.providers.base import new_id
from modelyard.schema.chat import MAX_OUTPUT_TOKENS
from modelyard.schema.errors import GatewayError
from modelyard.server.validation import validation_error

_encode = msgspec.json.Encoder().encode

#: Most input items one request may carry (with its stored history): far above any agent's turn.
MAX_INPUT_ITEMS = 10_000
#: The separator of a flattened namespace tool's name (`.` is not allowed in chat function names).
NAMESPACE_SEP = "__"

#: Tool types only the vendor's servers can run; dropped when the request is translated to chat.
HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer",
        "computer_use",
        "computer_use_preview",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
    }
)

# --------------------------------------------------------------------------- request structs

OutputTokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_OUTPUT_TOKENS)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
MetaKey = Annotated[str, msgspec.Meta(max_length=64)]
MetaValue = Annotated[str, msgspec.Meta(max_length=512)]


class InputText(Struct, tag_field="type", tag="input_text", kw_only=True):
    text: str


class OutputText(Struct, tag_field="type", tag="output_text", kw_only=True):
    text: str


class Refusal(Struct, tag_field="type", tag="refusal", kw_only=True):
    refusal: str


class InputImage(Struct, tag_field="type", tag="input_image", kw_only=True, omit_defaults=True):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(Struct, tag_field="type", tag="input_file", kw_only=True, omit_defaults=True):
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


Part = InputText | OutputText | Refusal | InputImage | InputFile


class MessageItem(Struct, tag_field="type", tag="message", kw_only=True, omit_defaults=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]
    id: str | None = None
    status: str | None = None
    phase: str | None = None


class FunctionCallItem(Struct, tag_field="type", tag="function_call", kw_only=True, omit_defaults=True):
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None
    namespace: str | None = None


class FunctionCallOutputItem(Struct, tag_field="type", tag="function_call_output", kw_only=True, omit_defaults=True):
    call_id: str
    output: str | list[Part]
    id: str | None = None
    status: str | None = None


class CustomToolCallItem(Struct, tag_field="type", tag="custom_tool_call", kw_only=True, omit_defaults=True):
    call_id: str
    name: str
    input: str
    id: str | None = None
    status: str | None = None


class CustomToolCallOutputItem(
    Struct, tag_field="type", tag="custom_tool_call_output", kw_only=True, omit_defaults=True
):
    call_id: str
    output: str | list[Part]
    id: str | None = None
    status: str | None = None


class ReasoningItem(Struct, tag_field="type", tag="reasoning", kw_only=True, omit_defaults=True):
    id: str | None = None
    summary: list[dict[str, Any]] | None = None
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None
    status: str | None = None


InputItem = (
    MessageItem
    | FunctionCallItem
    | FunctionCallOutputItem
    | CustomToolCallItem
    | CustomToolCallOutputItem
    | ReasoningItem
)
_ITEM_TYPES = (
    "message",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "custom_tool_call_output",
    "reasoning",
)


class TextFormat(Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(Struct, kw_only=True, omit_defaults=True):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(Struct, kw_only=True, omit_defaults=True):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(Struct, kw_only=True, omit_defaults=True):
    """The top-level fields of a Responses request the gateway reads (others are kept in the raw body for
    pass-through and ignored in translation). `input` items are checked one by one (`input_items`)."""

    model: str
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: OutputTokens | None = None
    reasoning: ReasoningConfig | None = None
    metadata: dict[MetaKey, MetaValue] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    modelyard: dict[str, Any] | None = None


def validate_responses(raw: dict[str, Any]) -> ResponsesRequest:
    """A decoded body → a checked request; a bad field is an OpenAI 400 whose `param` is its path."""
    try:
        req = msgspec.convert(raw, ResponsesRequest)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    if not req.model:
        raise GatewayError(400, "'model' must be a non-empty string.", param="model", code="invalid_value")
    if req.input is None and req.previous_response_id is None:
        raise GatewayError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if isinstance(req.input, list) and len(req.input) > MAX_INPUT_ITEMS:
        raise GatewayError(
            400, f"'input' holds more than {MAX_INPUT_ITEMS} items.", param="input", code="invalid_value"
        )
    return req


#: Items recording what a hosted tool did upstream (a search, a code run): nothing a translated deployment can
#: use, and nothing it may be shown as if it had made it. Dropped in translation, like the tools themselves.
HOSTED_ITEMS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "computer_call",
        "computer_call_output",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "tool_search_call",
        "tool_search_output",
    }
)


def input_items(req: ResponsesRequest) -> list[InputItem]:
    """The request's `input` as typed items (a string is one user message); 400 with `param` on a bad one.
    Items of hosted tools are left out (HOSTED_ITEMS)."""
    if req.input is None:
        return []
    if isinstance(req.input, str):
        return [MessageItem(role="user", content=req.input)]
    items: list[InputItem] = []
    for i, raw in enumerate(req.input):
        kind = raw.get("type")
        if isinstance(kind, str) and kind in HOSTED_ITEMS:  # a list or an object is no hashable name
            continue
        items.append(_item(raw, f"input[{i}]"))
    return items


_ITEM_CLASSES: dict[str, type[InputItem]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "custom_tool_call": CustomToolCallItem,
    "custom_tool_call_output": CustomToolCallOutputItem,
    "reasoning": ReasoningItem,
}


def _item(raw: dict[str, Any], param: str) -> InputItem:
    kind = raw.get("type")
    if kind is None and "role" in raw:
        raw = {**raw, "type": "message"}  # EasyInputMessage: `type` is optional
    elif not isinstance(kind, str) or kind not in _ITEM_TYPES:
        shown = str(kind)[:64] if kind is not None else "(missing)"
        raise GatewayError(
            400,
            f"Unsupported input item type '{shown}' at '{param}.type' (supported: {', '.join(_ITEM_TYPES)}).",
            param=f"{param}.type",
            code="invalid_value",
        )
    try:
        # Straight to the item's class: converting to the union re-reads its type information on every call
        # (about 18 us an item, against 1).
        item: InputItem = msgspec.convert(raw, _ITEM_CLASSES[raw["type"]])
    except msgspec.ValidationError as exc:
        error = validation_error(exc)
        inner = error.param
        error.param = f"{param}.{inner}" if inner else param
        error.message = error.message.replace(f"'{inner}'", f"'{error.param}'") if inner else error.message
        raise error from None
    return item


def item_dicts(items: list[InputItem]) -> list[dict[str, Any]]:
    """Typed items → the JSON objects stored and listed by `input_items` (each with an id)."""
    out: list[dict[str, Any]] = []
    for item in items:
        data: dict[str, Any] = msgspec.to_builtins(item)
        if isinstance(item, MessageItem):
            data.setdefault("id", new_id("msg_"))
            if isinstance(item.content, str):
                part = "output_text" if item.role == "assistant" else "input_text"
                data["content"] = [{"type": part, "text": item.content}]
        elif isinstance(item, FunctionCallItem):
            data.setdefault("id", new_id("fc_"))
        elif isinstance(item, FunctionCallOutputItem | CustomToolCallOutputItem):
            data.setdefault("id", new_id("fco_"))
        elif isinstance(item, CustomToolCallItem):
            data.setdefault("id", new_id("ctc_"))
        else:
            data.setdefault("id", new_id("rs_"))
        out.append(data)
    return out


# --------------------------------------------------------------------------- request → chat


class Translation(Struct, kw_only=True):
    """A translated request: the chat body, plus what the answer's translation needs to map back."""

    chat: dict[str, Any]
    #: Flattened function name → (namespace, name) for namespace tools.
    namespaced: dict[str, tuple[str, str]]
    #: Hosted tool types dropped (reported in logs, never silently turned into something else).
    dropped_tools: list[str]
    #: Names of custom (freeform) tools, carried as one-string functions.
    custom: frozenset[str] = frozenset()


def _part_to_chat(part: Part, param: str) -> dict[str, Any]:
    if isinstance(part, InputText | OutputText):
        return {"type": "text", "text": part.text}
    if isinstance(part, Refusal):
        return {"type": "text", "text": part.refusal}
    if isinstance(part, InputImage):
        if part.image_url is None:
            raise GatewayError(
                400,
                "Only `image_url` images can be translated for this deployment (file ids live upstream).",
                param=f"{param}.image_url",
                code="invalid_value",
            )
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail is not None and part.detail != "original":
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if part.file_data is None:
        raise GatewayError(
            400,
            "Only inline `file_data` files can be translated for this deployment.",
            param=f"{param}.file_data",
            code="invalid_value",
        )
    file: dict[str, Any] = {"file_data": part.file_data}
    if part.filename is not None:
        file["filename"] = part.filename
    return {"type": "file", "file": file}


def _content_to_chat(content: str | list[Part], param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = [_part_to_chat(p, f"{param}[{j}]") for j, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _text_only(content: str | list[Part]) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, InputText | OutputText):
            texts.append(part.text)
        elif isinstance(part, Refusal):
            texts.append(part.refusal)
    return "".join(texts)


def _flat_name(item: FunctionCallItem) -> str:
    return f"{item.namespace}{NAMESPACE_SEP}{item.name}" if item.namespace else item.name


def items_to_messages(items: list[InputItem], *, param: str = "input") -> list[dict[str, Any]]:
    """Input items → chat messages. Consecutive function calls join one assistant turn (with any assistant
    text just before them); reasoning items are dropped (see the module's documented losses)."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if isinstance(item, MessageItem):
            if item.role == "assistant":
                messages.append({"role": "assistant", "content": _text_only(item.content)})
            else:
                messages.append({"role": item.role, "content": _content_to_chat(item.content, f"{where}.content")})
        elif isinstance(item, FunctionCallItem | CustomToolCallItem):
            if isinstance(item, FunctionCallItem):
                fn = {"name": _flat_name(item), "arguments": item.arguments}
            else:
                fn = {"name": item.name, "arguments": _encode({"input": item.input}).decode()}
            call = {"id": item.call_id, "type": "function", "function": fn}
            last = messages[-1] if messages else None
            if (
                last is not None
                and last["role"] == "assistant"
                and (last.get("tool_calls") or last.get("content") is not None)
            ):
                last.setdefault("tool_calls", []).append(call)
                if last.get("content") == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem | CustomToolCallOutputItem):
            output = item.output if isinstance(item.output, str) else _text_only(item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
    return messages


def _function(tool: dict[str, Any], param: str, name: str | None = None) -> dict[str, Any]:
    raw_name = tool.get("name")
    if not isinstance(raw_name, str) or not raw_name:
        raise GatewayError(400, "A function tool needs a string `name`.", param=f"{param}.name", code="invalid_value")
    fn: dict[str, Any] = {"name": name or raw_name}
    if isinstance(tool.get("description"), str):
        fn["description"] = tool["description"]
    parameters = tool.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise GatewayError(
                400, "`parameters` must be an object.", param=f"{param}.parameters", code="invalid_value"
            )
        fn["parameters"] = parameters
    if isinstance(tool.get("strict"), bool):
        fn["strict"] = tool["strict"]
    return {"type": "function", "function": fn}


def _custom(tool: dict[str, Any], param: str) -> dict[str, Any]:
    """A freeform tool as a function of one string (its grammar, if any, described to the model)."""
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise GatewayError(400, "A custom tool needs a string `name`.", param=f"{param}.name", code="invalid_value")
    about = "The tool's whole input, as free text."
    fmt = tool.get("format")
    if isinstance(fmt, dict) and isinstance(fmt.get("definition"), str):
        about += f" It must follow this {fmt.get('syntax') or 'grammar'}:\n{fmt['definition'][:20_000]}"
    fn: dict[str, Any] = {
        "name": tool["name"],
        "parameters": {
            "type": "object",
            "properties": {"input": {"type": "string", "description": about}},
            "required": ["input"],
        },
    }
    if isinstance(tool.get("description"), str):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


def tools_to_chat(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]], list[str]]:
    """(chat tools, flattened namespace names, dropped hosted tool types)."""
    out: list[dict[str, Any]] = []
    namespaced: dict[str, tuple[str, str]] = {}
    dropped: list[str] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        kind = tool.get("type")
        if kind == "function":
            out.append(_function(tool, param))
        elif kind == "custom":
            out.append(_custom(tool, param))
        elif kind == "namespace":
            space, inner = tool.get("name"), tool.get("tools")
            if not isinstance(space, str) or not isinstance(inner, list):
                raise GatewayError(
                    400, "A namespace tool needs a `name` and a list of `tools`.", param=param, code="invalid_value"
                )
            for j, member in enumerate(inner):
                where = f"{param}.tools[{j}]"
                if not isinstance(member, dict) or member.get("type") != "function":
                    raise GatewayError(
                        400,
                        "Only function tools can be translated inside a namespace.",
                        param=f"{where}.type",
                        code="invalid_value",
                    )
                flat = f"{space}{NAMESPACE_SEP}{member.get('name')}"
                namespaced[flat] = (space, str(member.get("name")))
                out.append(_function(member, where, flat))
        elif isinstance(kind, str) and kind in HOSTED_TOOLS:
            dropped.append(kind)
        else:
            shown = str(kind)[:64]
            raise GatewayError(400, f"Unsupported tool type '{shown}'.", param=f"{param}.type", code="invalid_value")
    return out, namespaced, dropped


def tool_choice_to_chat(choice: str | dict[str, Any], dropped: list[str]) -> Any:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise GatewayError(
                400,
                f"Invalid tool_choice '{choice[:64]}' (none, auto, required).",
                param="tool_choice",
                code="invalid_value",
            )
        return choice
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "custom" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}  # carried as a function
    if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
        return choice["mode"]  # the subset is not expressible on every egress: the mode is kept
    if isinstance(kind, str) and (kind in HOSTED_TOOLS or kind in dropped):
        raise GatewayError(
            400,
            f"tool_choice '{kind[:64]}' names a hosted tool this deployment cannot run.",
            param="tool_choice.type",
            code="invalid_value",
        )
    raise GatewayError(400, "Unsupported tool_choice.", param="tool_choice", code="invalid_value")


def _format_to_chat(fmt: TextFormat) -> dict[str, Any] | None:
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema is None or not fmt.name:
        raise GatewayError(
            400, "A json_schema format needs a `name` and a `schema`.", param="text.format", code="invalid_value"
        )
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _apply_tools(req: ResponsesRequest, chat: dict[str, Any]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    namespaced: dict[str, tuple[str, str]] = {}
    dropped: list[str] = []
    if req.tools:
        tools, namespaced, dropped = tools_to_chat(req.tools)
        if tools:
            chat["tools"] = tools
            if req.tool_choice is not None:
                chat["tool_choice"] = tool_choice_to_chat(req.tool_choice, dropped)
            if req.parallel_tool_calls is not None:
                chat["parallel_tool_calls"] = req.parallel_tool_calls
    if "tools" not in chat and req.tool_choice not in (None, "none", "auto"):
        tool_choice_to_chat(req.tool_choice, dropped)  # a hosted tool named: say so
        raise GatewayError(
            400, "tool_choice needs at least one function tool.", param="tool_choice", code="invalid_value"
        )
    return namespaced, dropped


def responses_to_chat(
    req: ResponsesRequest, items: list[InputItem], history: list[InputItem] | None = None
) -> Translation:
    """A checked request (its items after the stored `history`) → a canonical chat request dict."""
    messages: list[dict[str, Any]] = []
    if req.instructions:  # instructions are not carried over from a previous response (OpenAI's rule)
        messages.append({"role": "system", "content": req.instructions})
    if history:
        messages.extend(items_to_messages(history, param="previous_response_id"))
    messages.extend(items_to_messages(items))
    if not any(m["role"] != "system" for m in messages):
        raise GatewayError(400, "'input' must contain at least one message.", param="input", code="invalid_value")
    chat: dict[str, Any] = {"model": req.model, "messages": messages}
    namespaced, dropped = _apply_tools(req, chat)
    custom = frozenset(
        t["name"] for t in req.tools or () if t.get("type") == "custom" and isinstance(t.get("name"), str)
    )
    if req.text is not None and req.text.format is not None:
        fmt = _format_to_chat(req.text.format)
        if fmt is not None:
            chat["response_format"] = fmt
    # `metadata` tags the Response object (echoed, stored), not the upstream call: OpenAI's chat API refuses
    # it unless the upstream stores the completion. `include` and `prompt_cache_key` have no chat meaning.
    for key in ("max_output_tokens", "temperature", "top_p", "user"):
        value = getattr(req, key)
        if value is not None:
            chat["max_completion_tokens" if key == "max_output_tokens" else key] = value
    if req.reasoning is not None and req.reasoning.effort is not None:
        chat["reasoning_effort"] = req.reasoning.effort
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if req.modelyard is not None:
        chat["modelyard"] = req.modelyard
    return Translation(chat=chat, namespaced=namespaced, dropped_tools=dropped, custom=custom)


__all__ = [
    "HOSTED_ITEMS",
    "HOSTED_TOOLS",
    "InputItem",
    "ResponsesRequest",
    "Translation",
    "input_items",
    "item_dicts",
    "items_to_messages",
    "responses_to_chat",
    "tools_to_chat",
    "validate_responses",
]
