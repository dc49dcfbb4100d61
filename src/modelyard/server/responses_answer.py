"""Canonical answers → the `/v1/responses` ingress's wire: a Response object, or the typed SSE event sequence.

A canonical completion becomes a Response object (`completion_to_response`) and a canonical chunk stream the
Responses API's events with their `sequence_number` (`ChunksToResponseEvents`), so that the official `openai`
SDK (`client.responses.create` / `.stream`) and the Agents SDK work unchanged; usage is reported in the
Responses shape, with the gateway's cost. Tool calls are mapped back through the request's `Translation`
(namespace and custom tools, server/responses_request.py). No I/O.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from modelyard.providers.base import new_id
from modelyard.providers.sse import encode_event
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind
from modelyard.server.responses_request import ResponsesRequest, Translation

_encode = msgspec.json.Encoder().encode

# --------------------------------------------------------------------------- answers


def responses_usage(usage: Usage, cost: float | None = None) -> dict[str, Any]:
    """Canonical usage → the Responses `usage` object (+ the gateway's `cost` in USD)."""
    out: dict[str, Any] = {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": usage.cache_write},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + usage.completion,
    }
    if cost is not None:
        out["cost"] = round(cost, 10)
    return out


def response_object(
    req: ResponsesRequest,
    response_id: str,
    *,
    status: str,
    output: list[dict[str, Any]],
    created_at: float | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """The Response object around `output`, echoing the request's settings as OpenAI does."""
    fmt: dict[str, Any] = {"type": "text"}
    if req.text is not None and req.text.format is not None:
        fmt = msgspec.to_builtins(req.text.format)
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at if created_at is not None else time.time()),
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": {
            "effort": req.reasoning.effort if req.reasoning else None,
            "summary": req.reasoning.summary if req.reasoning else None,
        },
        "store": req.store if req.store is not None else True,
        "temperature": req.temperature,
        "text": {"format": fmt},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.tools or [],
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": usage,
        "user": req.user,
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _custom_input(arguments: str) -> str:
    """A custom call's input from the function arguments it was carried in (`{"input": ...}`)."""
    try:
        parsed = msgspec.json.decode(arguments)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return arguments
    if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
        return str(parsed["input"])
    return arguments


def _call_item(call: dict[str, Any], translation: Translation, status: str) -> dict[str, Any]:
    fn = call.get("function") or {}
    name = str(fn.get("name") or "")
    arguments = fn.get("arguments")
    if isinstance(arguments, dict):
        arguments = _encode(arguments).decode()
    call_id = call.get("id") or new_id("call_")
    if name in translation.custom:
        return {
            "id": new_id("ctc_"),
            "type": "custom_tool_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "input": _custom_input(arguments or ""),
        }
    item: dict[str, Any] = {
        "id": new_id("fc_"),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments or "",
    }
    if name in translation.namespaced:
        item["namespace"], item["name"] = translation.namespaced[name]
    return item


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id or new_id("rs_"),
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": "completed",
    }


def completion_output(completion: dict[str, Any], translation: Translation) -> tuple[list[dict[str, Any]], str | None]:
    """A canonical chat.completion → (Responses output items, the incomplete reason or None)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(_reasoning_item(str(message["reasoning_content"])))
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append(_text_part(str(message["content"])))
    if message.get("refusal"):
        content.append({"type": "refusal", "refusal": str(message["refusal"])})
    if content:
        output.append(
            {"id": new_id("msg_"), "type": "message", "role": "assistant", "status": "completed", "content": content}
        )
    for call in message.get("tool_calls") or ():
        output.append(_call_item(call, translation, "completed"))
    return output, _INCOMPLETE.get(str(choice.get("finish_reason")))


def completion_to_response(
    req: ResponsesRequest,
    translation: Translation,
    completion: dict[str, Any],
    usage: Usage,
    cost: float,
    response_id: str | None = None,
) -> dict[str, Any]:
    """A canonical chat.completion → a Response object (status `incomplete` when the answer was cut)."""
    output, incomplete = completion_output(completion, translation)
    return response_object(
        req,
        response_id or new_id("resp_"),
        status="incomplete" if incomplete else "completed",
        output=output,
        usage=responses_usage(usage, cost),
        incomplete=incomplete,
    )


def output_text(response: dict[str, Any]) -> str:
    """The text of a Response's message items, joined (what the SDKs call `output_text`)."""
    return "".join(
        part.get("text", "")
        for item in response.get("output") or ()
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if part.get("type") == "output_text"
    )


# --------------------------------------------------------------------------- errors

#: ErrorKind → the Response object's `error.code` (OpenAI's enumeration has no finer codes for these).
KIND_CODES: dict[ErrorKind, str] = {
    ErrorKind.RATE_LIMITED: "rate_limit_exceeded",
    ErrorKind.GUARDRAIL: "guardrail",
    ErrorKind.GUARDRAIL_BLOCKED: "guardrail_blocked",
}


def error_code(kind: ErrorKind) -> str:
    if kind in (ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_FILTER):
        return "invalid_prompt"
    return KIND_CODES.get(kind, "server_error")


# --------------------------------------------------------------------------- streaming


class _OpenItem:
    __slots__ = ("call", "index", "item", "kind", "text")

    def __init__(self, kind: str, index: int, item: dict[str, Any]) -> None:
        self.kind = kind  # "message" | "reasoning" | "function_call"
        self.index = index
        self.item = item
        self.text: list[str] = []
        self.call: int | None = None


class ChunksToResponseEvents:
    """Canonical chunks → the Responses API's SSE events, each with its `sequence_number`, in OpenAI's order:
    response.created, response.in_progress, then per output item output_item.added → (content_part.added →
    output_text.delta… → output_text.done → content_part.done | function_call_arguments.delta… → .done) →
    output_item.done, and response.completed (or .incomplete / .failed) with the whole Response."""

    def __init__(self, req: ResponsesRequest, translation: Translation, response_id: str | None = None) -> None:
        self.req = req
        self.translation = translation
        self.response_id = response_id or new_id("resp_")
        self.created_at = time.time()
        self._seq = 0
        self._started = False
        self._closed = False
        self._output: list[dict[str, Any]] = []
        self._open: _OpenItem | None = None  # the open message or reasoning item
        self._calls: dict[int, _OpenItem] = {}  # chat tool-call index → its open function_call item
        self._finish: str | None = None
        #: The whole Response as `response.completed` (or `.incomplete`) carried it; None before `finish`.
        self.final: dict[str, Any] | None = None

    @property
    def output(self) -> list[dict[str, Any]]:
        """The output items finished so far (all of them after `finish`)."""
        return self._output

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        body = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return encode_event(_encode(body), kind)

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(
            self.req, self.response_id, status=status, output=list(self._output), created_at=self.created_at, **extra
        )

    def start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", {"response": self._response("in_progress")}),
            self._event("response.in_progress", {"response": self._response("in_progress")}),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        if self._closed:
            return []
        out = self.start()
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._delta("reasoning", str(delta["reasoning_content"]))
            if delta.get("content"):
                out += self._delta("message", str(delta["content"]))
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            if choice.get("finish_reason") is not None:
                self._finish = str(choice["finish_reason"])
        return out

    def finish(self, usage: Usage, cost: float | None = None) -> list[bytes]:
        """Close every open item, then response.completed (or response.incomplete) with usage and cost."""
        if self._closed:
            return []
        out = self.start() + self._close_open() + self._close_calls()
        self._closed = True
        incomplete = _INCOMPLETE.get(self._finish or "")
        status = "incomplete" if incomplete else "completed"
        response = self._response(status, usage=responses_usage(usage, cost), incomplete=incomplete)
        self.final = response
        out.append(self._event(f"response.{status}", {"response": response}))
        return out

    def fail(self, kind: ErrorKind, message: str) -> list[bytes]:
        """A failure after the first byte: open items are left as they are and the response is `failed`."""
        if self._closed:
            return []
        out = self.start()
        self._closed = True
        error = {"code": error_code(kind), "message": message}
        out.append(self._event("response.failed", {"response": self._response("failed", error=error)}))
        return out

    # ------------------------------------------------------------------ items

    def _add(self, kind: str, item: dict[str, Any]) -> tuple[_OpenItem, bytes]:
        index = len(self._output) + (1 if self._open is not None else 0) + len(self._calls)
        opened = _OpenItem(kind, index, item)
        return opened, self._event("response.output_item.added", {"output_index": index, "item": item})

    def _delta(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open.kind != kind:
            out += self._close_open() + self._close_calls()
            if kind == "message":
                item = {
                    "id": new_id("msg_"),
                    "type": "message",
                    "role": "assistant",
                    "status": "in_progress",
                    "content": [],
                }
                self._open, added = self._add(kind, item)
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out += [added, self._part_event("response.content_part.added", part)]
            else:
                item = {"id": new_id("rs_"), "type": "reasoning", "summary": [], "status": "in_progress"}
                self._open, added = self._add(kind, item)
                out.append(added)
        opened = self._open
        assert opened is not None
        opened.text.append(text)
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        data: dict[str, Any] = {
            "item_id": opened.item["id"],
            "output_index": opened.index,
            "content_index": 0,
            "delta": text,
        }
        if kind == "message":
            data["logprobs"] = []
        out.append(self._event(name, data))
        return out

    def _part_event(self, kind: str, part: dict[str, Any]) -> bytes:
        opened = self._open
        assert opened is not None
        return self._event(
            kind, {"item_id": opened.item["id"], "output_index": opened.index, "content_index": 0, "part": part}
        )

    def _close_open(self) -> list[bytes]:
        opened = self._open
        if opened is None:
            return []
        text = "".join(opened.text)
        ids = {"item_id": opened.item["id"], "output_index": opened.index, "content_index": 0}
        if opened.kind == "message":
            part = _text_part(text)
            out = [
                self._event("response.output_text.done", {**ids, "text": text, "logprobs": []}),
                self._part_event("response.content_part.done", part),
            ]
            item = {**opened.item, "status": "completed", "content": [part]}
        else:
            out = [self._event("response.reasoning_text.done", {**ids, "text": text})]
            item = _reasoning_item(text, opened.item["id"])
        self._open = None
        self._output.append(item)
        out.append(self._event("response.output_item.done", {"output_index": opened.index, "item": item}))
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        position = int(call.get("index", 0))
        fn = call.get("function") or {}
        out: list[bytes] = []
        opened = self._calls.get(position)
        if opened is None:
            out += self._close_open()
            item = _call_item(
                {"id": call.get("id"), "function": {"name": fn.get("name")}}, self.translation, "in_progress"
            )
            opened, added = self._add("function_call", item)
            self._calls[position] = opened
            out.append(added)
        arguments = fn.get("arguments")
        if isinstance(arguments, dict):
            arguments = _encode(arguments).decode()
        if arguments:
            opened.text.append(str(arguments))
            if opened.item["type"] == "custom_tool_call":
                return out  # its input is known once the arguments are whole (sent at the close)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": opened.item["id"], "output_index": opened.index, "delta": str(arguments)},
                )
            )
        return out

    def _close_calls(self) -> list[bytes]:
        out: list[bytes] = []
        for opened in sorted(self._calls.values(), key=lambda o: o.index):
            arguments = "".join(opened.text)
            if opened.item["type"] == "custom_tool_call":
                out += self._close_custom(opened, _custom_input(arguments))
                continue
            item = {**opened.item, "status": "completed", "arguments": arguments}
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    {"item_id": item["id"], "output_index": opened.index, "name": item["name"], "arguments": arguments},
                )
            )
            self._output.append(item)
            out.append(self._event("response.output_item.done", {"output_index": opened.index, "item": item}))
        self._calls.clear()
        return out

    def _close_custom(self, opened: _OpenItem, text: str) -> list[bytes]:
        item = {**opened.item, "status": "completed", "input": text}
        ids = {"item_id": item["id"], "output_index": opened.index}
        out = []
        if text:
            out.append(self._event("response.custom_tool_call_input.delta", {**ids, "delta": text}))
        out.append(self._event("response.custom_tool_call_input.done", {**ids, "input": text}))
        self._output.append(item)
        out.append(self._event("response.output_item.done", {"output_index": opened.index, "item": item}))
        return out


__all__ = [
    "ChunksToResponseEvents",
    "completion_output",
    "completion_to_response",
    "error_code",
    "output_text",
    "response_object",
    "responses_usage",
]
