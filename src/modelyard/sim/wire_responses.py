"""OpenAI Responses API wire format (`POST /v1/responses`, plain and SSE), as api.openai.com writes it.

The request is read into a chat request (the simulator's behaviour speaks chat; `OpenAIWire.parse_chat`
validates it), and the answer is written as a Response object or the Responses streaming events, each with
its `sequence_number`. Like OpenAI, the simulator keeps what it answered (`store` is on by default), so a
later request's `previous_response_id` continues the conversation; an unknown one is OpenAI's 400
`previous_response_not_found`. The store is bounded (oldest forgotten first), as a simulator's must be.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

from modelyard.sim.shapes import Answer, Ask, BadRequest, EmbedAsk, ErrKind, Event, Reply, StreamPlan, decode_object
from modelyard.sim.wire_openai import OpenAIWire

_encode = msgspec.json.Encoder().encode

#: Responses remembered for `previous_response_id`, and requests awaiting their answer (both bounded).
MAX_STORED = 10_000
MAX_PENDING = 1_024
_FRAGMENT = 12
_ITEM_TYPES = (
    "message",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "custom_tool_call_output",
    "reasoning",
    "item_reference",
)
#: What hosted tools left in a conversation: nothing the simulator reads.
_HOSTED_ITEMS = frozenset({"web_search_call", "file_search_call", "code_interpreter_call", "image_generation_call"})


def _text_of(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"Invalid type for '{param}': expected a string or an array of content parts.")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif kind == "input_file":
            parts.append({"type": "text", "text": str(part.get("filename") or "file")})
        else:
            raise BadRequest(
                f"Invalid value: '{kind}'. Supported values are: 'input_text', 'input_image', "
                f"'output_text', 'refusal' and 'input_file'. (param '{param}[{j}].type')"
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def items_to_messages(items: list[Any]) -> list[dict[str, Any]]:
    """Responses input items → chat messages (reasoning items carry nothing the simulator reads)."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"Invalid type for '{param}': expected an object.")
        kind = item.get("type", "message" if "role" in item else None)
        if kind in _HOSTED_ITEMS:
            continue
        if kind not in _ITEM_TYPES:
            raise BadRequest(f"Invalid value: '{kind}'. (param '{param}.type')")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequest(f"Invalid value: '{role}'. (param '{param}.role')")
            content = _text_of(item.get("content"), f"{param}.content")
            if role == "assistant" and not isinstance(content, str):
                content = "".join(p.get("text", "") for p in content)
            messages.append({"role": role, "content": content})
        elif kind in ("function_call", "custom_tool_call"):
            call_id, name = item.get("call_id"), item.get("name")
            arguments = item.get("arguments") if kind == "function_call" else _custom_args(item.get("input"))
            if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
                raise BadRequest(f"Missing required parameter: '{param}.call_id', 'name' or 'arguments'.")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, f"{param}.output")
            if not isinstance(item.get("call_id"), str):
                raise BadRequest(f"Missing required parameter: '{param}.call_id'.")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "item_reference":
            raise BadRequest(f"Item references are not supported by the simulator. (param '{param}')")
    return messages


def _custom_args(text: Any) -> str | None:
    return _encode({"input": text}).decode() if isinstance(text, str) else None


_CUSTOM_PARAMETERS = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def _tools(raw: Any, kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Function tools for the behaviour; `kinds` learns each callable name's kind ("custom" or a namespace)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("Invalid type for 'tools': expected an array.")
    out = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise BadRequest(f"Missing required parameter: 'tools[{i}].type'.")
        if tool["type"] == "function":
            out.append(_function(tool))
        elif tool["type"] == "custom" and isinstance(tool.get("name"), str):
            out.append(_function({**tool, "parameters": _CUSTOM_PARAMETERS}))
            kinds[tool["name"]] = "custom"
        elif tool["type"] == "namespace" and isinstance(tool.get("tools"), list):
            for member in tool["tools"]:
                if (
                    isinstance(member, dict)
                    and member.get("type") == "function"
                    and isinstance(member.get("name"), str)
                ):
                    out.append(_function(member))
                    kinds[member["name"]] = f"ns:{tool.get('name')}"
        # hosted tools (web_search, …) exist upstream; the simulator never calls them
    return out


def _tool_choice(raw: Any) -> Any:
    if isinstance(raw, dict) and raw.get("type") in ("function", "custom"):
        return {"type": "function", "function": {"name": raw.get("name")}}
    if isinstance(raw, dict):
        return "auto"
    return raw


class ResponsesWire(OpenAIWire):
    """`/v1/responses`: OpenAI's errors and embeddings, Responses requests, answers and events."""

    #: Counted with OpenAI's other endpoints in the per-wire stats (it is OpenAI's API).
    name = "openai"

    def __init__(self) -> None:
        self._stored: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        #: The Response objects and input items answered, for GET/DELETE /v1/responses/{id}[/input_items].
        self._objects: OrderedDict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = OrderedDict()
        self._pending: OrderedDict[int, tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]] = OrderedDict()

    def parse_chat(self, body: bytes, model: str | None) -> Ask:
        raw = decode_object(body)
        if not isinstance(raw.get("model"), str):
            raise BadRequest("Missing required parameter: 'model'.")
        messages: list[dict[str, Any]] = []
        if isinstance(raw.get("instructions"), str) and raw["instructions"]:
            messages.append({"role": "system", "content": raw["instructions"]})
        previous = raw.get("previous_response_id")
        if previous is not None:
            history = self._stored.get(str(previous))
            if history is None:
                raise BadRequest(f"Previous response with id '{previous}' not found. (param 'previous_response_id')")
            messages.extend(history)
        given = raw.get("input")
        new = [{"role": "user", "content": given}] if isinstance(given, str) else items_to_messages(given or [])
        messages.extend(new)
        chat: dict[str, Any] = {"model": raw["model"], "messages": messages}
        kinds: dict[str, str] = {}
        tools = _tools(raw.get("tools"), kinds)
        if tools:
            chat["tools"] = tools
            if raw.get("tool_choice") is not None:
                chat["tool_choice"] = _tool_choice(raw["tool_choice"])
            if raw.get("parallel_tool_calls") is not None:
                chat["parallel_tool_calls"] = raw["parallel_tool_calls"]
        if raw.get("max_output_tokens") is not None:
            chat["max_completion_tokens"] = raw["max_output_tokens"]
        fmt = (raw.get("text") or {}).get("format") if isinstance(raw.get("text"), dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            chat["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": fmt.get("name") or "output", "schema": fmt.get("schema") or {}},
            }
        if raw.get("stream") is True:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        ask = super().parse_chat(_encode(chat), model)
        self._pending[id(ask)] = (raw, [m for m in messages if m["role"] != "system"], kinds)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        return ask

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk:
        raise BadRequest("Embeddings are not served on /v1/responses.")

    # ------------------------------------------------------------------ answers

    def _request_of(self, answer: Answer) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
        return self._pending.pop(id(answer.ask), ({"model": answer.ask.model}, [], {}))

    def _remember(
        self,
        response_id: str,
        raw: dict[str, Any],
        messages: list[dict[str, Any]],
        reply: Reply,
        response: dict[str, Any] | None = None,
    ) -> None:
        if raw.get("store") is False:
            return
        if response is not None:
            self._objects[response_id] = (response, _input_items(raw.get("input")))
            while len(self._objects) > MAX_STORED:
                self._objects.popitem(last=False)
        said: dict[str, Any] = {"role": "assistant", "content": reply.text if not reply.tool_calls else None}
        if reply.tool_calls:
            said["tool_calls"] = [
                {"id": "call_" + c.key, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in reply.tool_calls
            ]
        self._stored[response_id] = [*messages, said]
        while len(self._stored) > MAX_STORED:
            self._stored.popitem(last=False)

    def completion(self, answer: Answer) -> bytes:
        raw, messages, kinds = self._request_of(answer)
        reply = answer.replies[0]
        response = _response(answer, raw, "completed", _output(answer.key, reply, "completed", kinds))
        if reply.finish == "length":
            response["status"], response["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
        self._remember(response["id"], raw, messages, reply, response)
        return _encode(response)

    def stream(self, answer: Answer) -> StreamPlan:
        raw, messages, kinds = self._request_of(answer)
        reply = answer.replies[0]
        events = _Events()
        skeleton = _response(answer, raw, "in_progress", [], usage=False)
        events.add("response.created", {"response": skeleton})
        events.add("response.in_progress", {"response": skeleton})
        output = _output(answer.key, reply, "completed", kinds)
        for index, item in enumerate(output):
            if item["type"] == "message":
                _stream_message(events, index, item)
            elif item["type"] == "custom_tool_call":
                _stream_custom(events, index, item)
            else:
                _stream_call(events, index, item)
        cut_limit = len(events.list)
        done = _response(answer, raw, "completed", output)
        if reply.finish == "length":
            done["status"], done["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
        events.add(f"response.{done['status']}", {"response": done})
        self._remember(done["id"], raw, messages, reply, done)
        return StreamPlan(events.list, cut_limit)

    def stored(self, method: str, rest: str, query: dict[str, str]) -> tuple[int, bytes]:
        """GET/DELETE `/v1/responses/{id}` and GET `…/input_items` over what was answered with `store` on."""
        response_id, _, tail = rest.partition("/")
        found = self._objects.get(response_id)
        if found is None or tail not in ("", "input_items") or (tail and method != "GET"):
            return self.error("not_found", f"Response with id '{response_id[:64]}' not found.")
        response, items = found
        if method == "DELETE":
            self._objects.pop(response_id, None)
            self._stored.pop(response_id, None)
            return 200, _encode({"id": response_id, "object": "response", "deleted": True})
        if not tail:
            return 200, _encode(response)
        listed = items if query.get("order") == "asc" else items[::-1]
        limit = query.get("limit") or "20"
        page = listed[: int(limit) if limit.isdigit() else 20]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(listed) > len(page),
        }
        return 200, _encode(body)

    def frame(self, events: list[Event], ask: Ask, complete: bool) -> list[bytes]:
        return [b"event: " + (e.name or "message").encode() + b"\ndata: " + e.data + b"\n\n" for e in events]

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]:
        status, body = super().error(kind, message, retry_after)
        if kind == "bad_request" and "(param '" in message:
            decoded = msgspec.json.decode(body)
            text, _, param = message.rpartition(" (param '")
            decoded["error"]["message"], decoded["error"]["param"] = text, param.rstrip("')")
            if "previous_response_id" in param:
                decoded["error"]["code"] = "previous_response_not_found"
            body = _encode(decoded)
        return status, body


def _input_items(given: Any) -> list[dict[str, Any]]:
    """A request's input as the items OpenAI lists (each with an id)."""
    if isinstance(given, str):
        given = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": given}]}]
    items = []
    for i, item in enumerate(given if isinstance(given, list) else []):
        if not isinstance(item, dict):
            continue
        listed = {"id": f"item_{i}", "type": "message", **item}
        if listed["type"] == "message" and isinstance(listed.get("content"), str):
            part = "output_text" if listed.get("role") == "assistant" else "input_text"
            listed["content"] = [{"type": part, "text": listed["content"]}]
        items.append(listed)
    return items


class _Events:
    def __init__(self) -> None:
        self.list: list[Event] = []

    def add(self, kind: str, data: dict[str, Any], tokens: float = 0.0) -> None:
        payload = {"type": kind, "sequence_number": len(self.list), **data}
        self.list.append(Event(_encode(payload), kind, tokens))


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "input_tokens": answer.prompt_tokens,
        "input_tokens_details": {"cached_tokens": answer.cached_tokens},
        "output_tokens": answer.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _response(
    answer: Answer, raw: dict[str, Any], status: str, output: list[dict[str, Any]], *, usage: bool = True
) -> dict[str, Any]:
    return {
        "id": "resp_" + answer.key,
        "object": "response",
        "created_at": answer.created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": raw.get("instructions"),
        "max_output_tokens": raw.get("max_output_tokens"),
        "model": answer.ask.model,
        "output": output,
        "parallel_tool_calls": raw.get("parallel_tool_calls", True),
        "previous_response_id": raw.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": raw.get("store", True),
        "temperature": raw.get("temperature", 1.0),
        "text": raw.get("text") or {"format": {"type": "text"}},
        "tool_choice": raw.get("tool_choice", "auto"),
        "tools": raw.get("tools") or [],
        "top_p": raw.get("top_p", 1.0),
        "truncation": raw.get("truncation", "disabled"),
        "usage": _usage(answer) if usage else None,
        "user": raw.get("user"),
        "metadata": raw.get("metadata") or {},
    }


def _output(key: str, reply: Reply, status: str, kinds: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if reply.text and not reply.tool_calls:
        part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
        out.append({"id": "msg_" + key, "type": "message", "role": "assistant", "status": status, "content": [part]})
    for call in reply.tool_calls:
        kind = kinds.get(call.name, "")
        item: dict[str, Any] = {"id": "fc_" + call.key, "type": "function_call", "status": status}
        item.update(call_id="call_" + call.key, name=call.name)
        if kind == "custom":
            text = call.args.get("input") if isinstance(call.args, dict) else None
            item.update(id="ctc_" + call.key, type="custom_tool_call", input=text if isinstance(text, str) else "")
        else:
            item["arguments"] = call.arguments
            if kind.startswith("ns:"):
                item["namespace"] = kind[3:]
        out.append(item)
    return out


def _stream_message(events: _Events, index: int, item: dict[str, Any]) -> None:
    text = item["content"][0]["text"]
    ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
    events.add(
        "response.output_item.added", {"output_index": index, "item": {**item, "status": "in_progress", "content": []}}
    )
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    events.add("response.content_part.added", {**ids, "part": empty})
    for at in range(0, len(text), _FRAGMENT):
        piece = text[at : at + _FRAGMENT]
        events.add("response.output_text.delta", {**ids, "delta": piece, "logprobs": []}, len(piece) / 4)
    events.add("response.output_text.done", {**ids, "text": text, "logprobs": []})
    events.add("response.content_part.done", {**ids, "part": item["content"][0]})
    events.add("response.output_item.done", {"output_index": index, "item": item})


def _stream_custom(events: _Events, index: int, item: dict[str, Any]) -> None:
    ids = {"item_id": item["id"], "output_index": index}
    events.add(
        "response.output_item.added", {"output_index": index, "item": {**item, "status": "in_progress", "input": ""}}
    )
    text = item["input"]
    for at in range(0, len(text), _FRAGMENT):
        piece = text[at : at + _FRAGMENT]
        events.add("response.custom_tool_call_input.delta", {**ids, "delta": piece}, len(piece) / 4)
    events.add("response.custom_tool_call_input.done", {**ids, "input": text})
    events.add("response.output_item.done", {"output_index": index, "item": item})


def _stream_call(events: _Events, index: int, item: dict[str, Any]) -> None:
    ids = {"item_id": item["id"], "output_index": index}
    events.add(
        "response.output_item.added",
        {"output_index": index, "item": {**item, "status": "in_progress", "arguments": ""}},
    )
    args = item["arguments"]
    for at in range(0, len(args), _FRAGMENT):
        piece = args[at : at + _FRAGMENT]
        events.add("response.function_call_arguments.delta", {**ids, "delta": piece}, len(piece) / 4)
    events.add("response.function_call_arguments.done", {**ids, "name": item["name"], "arguments": args})
    events.add("response.output_item.done", {"output_index": index, "item": item})


__all__ = ["MAX_STORED", "ResponsesWire", "items_to_messages"]
