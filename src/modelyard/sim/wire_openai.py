"""OpenAI wire format: Chat Completions (plain and SSE) and Embeddings, as api.openai.com writes them.

Requests are decoded into the project's canonical `ChatRequest` (which *is* OpenAI's shape), so the
simulator validates bodies exactly as strictly as the gateway does.
"""

from __future__ import annotations

from typing import Any

import msgspec

from modelyard.schema.chat import (
    AssistantMessage,
    ChatRequest,
    DeveloperMessage,
    EmbeddingRequest,
    FunctionTool,
    ImagePart,
    Message,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    SystemMessage,
    ToolChoiceAllowed,
    ToolChoiceCustom,
    ToolChoiceFunction,
    ToolMessage,
    UserMessage,
    text_of,
)
from modelyard.sim.behaviour import IMAGE_TOKENS, count_tokens, text_pieces
from modelyard.sim.embedding import to_base64
from modelyard.sim.prompt_cache import prefix_segments
from modelyard.sim.shapes import (
    Answer,
    Ask,
    BadRequest,
    EmbedAsk,
    ErrKind,
    Event,
    Reply,
    StreamPlan,
    ToolMode,
    ToolSpec,
)

_encode = msgspec.json.Encoder().encode
_chat_decoder = msgspec.json.Decoder(ChatRequest)
_embed_decoder = msgspec.json.Decoder(EmbeddingRequest)

FINGERPRINT = "fp_modelyard_sim"
MAX_CHOICES = 16
_ARG_FRAGMENT = 12
_FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length", "tool_calls": "tool_calls"}
_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "bad_request": (400, "invalid_request_error", None),
    "auth": (401, "invalid_request_error", "invalid_api_key"),
    "not_found": (404, "invalid_request_error", "model_not_found"),
    "rate_limit": (429, "requests", "rate_limit_exceeded"),
    "server_error": (500, "server_error", None),
    "unavailable": (503, "server_error", "service_unavailable"),
    "context_length": (400, "invalid_request_error", "context_length_exceeded"),
}


class OpenAIWire:
    name = "openai"
    messages = {
        "bad_request": "{detail}",
        "auth": "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        "not_found": "The model `{model}` does not exist or you do not have access to it.",
        "rate_limit": "Rate limit reached for {model} (simulated). Please try again in {retry}s.",
        "server_error": "The server had an error while processing your request. Sorry about that!",
        "unavailable": "The server is overloaded or not ready yet.",
        "context_length": "This model's maximum context length is {limit} tokens. However, your messages "
        "resulted in {prompt} tokens. Please reduce the length of the messages.",
    }

    # ------------------------------------------------------------------ requests

    def parse_chat(self, body: bytes, model: str | None) -> Ask:
        req = _decode(_chat_decoder, body)
        if not req.messages:
            raise BadRequest("[] is too short - 'messages'")
        n = req.n or 1
        if not 1 <= n <= MAX_CHOICES:
            raise BadRequest(f"n must be between 1 and {MAX_CHOICES}")
        tools = [
            ToolSpec(t.function.name, t.function.parameters) for t in req.tools or [] if isinstance(t, FunctionTool)
        ]
        mode, name, tools = _tool_choice(req, tools)
        prompt = sum(_message_tokens(m) for m in req.messages)
        if req.tools:
            prompt += count_tokens(_encode(req.tools).decode())
        ask = Ask(
            model=req.model,
            prompt_tokens=max(1, prompt),
            tools=tools,
            tool_mode=mode,
            tool_name=name,
            parallel_tools=req.parallel_tool_calls is not False,
            max_tokens=req.output_limit,
            stop=req.stop_list,
            n=n,
            stream=bool(req.stream),
            include_usage=req.wants_usage_in_stream,
            seed=req.seed,
            prefix=prefix_segments(req.tools, req.messages),
        )
        _read_conversation(req.messages, ask)
        fmt = req.response_format
        if isinstance(fmt, ResponseFormatJsonObject):
            ask.json_mode = True
        elif isinstance(fmt, ResponseFormatJsonSchema):
            ask.json_mode, ask.json_schema = True, fmt.json_schema.schema or {"type": "object"}
        return ask

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk:
        req = _decode(_embed_decoder, body)
        raw = req.input
        if isinstance(raw, str):
            texts = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            texts = [" ".join(str(x) for x in raw)]
        elif all(isinstance(x, str) for x in raw) or all(isinstance(x, list) for x in raw):
            texts = [x if isinstance(x, str) else " ".join(str(t) for t in x) for x in raw]
        else:  # OpenAI refuses a list that mixes strings, token ids and token-id lists
            raise BadRequest(
                "'input' must be a string, a list of strings, a list of token ids or a list of token-id lists"
            )
        if not texts:
            raise BadRequest("'input' must not be empty")
        return EmbedAsk(req.model, texts, req.dimensions, req.encoding_format == "base64")

    # ------------------------------------------------------------------ answers

    def completion(self, answer: Answer) -> bytes:
        body = {
            "id": "chatcmpl-" + answer.key,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.ask.model,
            "choices": [_choice(i, r) for i, r in enumerate(answer.replies)],
            "usage": usage(answer),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        return _encode(body)

    def stream(self, answer: Answer) -> StreamPlan:
        ask = answer.ask
        head = (
            _encode(
                {
                    "id": "chatcmpl-" + answer.key,
                    "object": "chat.completion.chunk",
                    "created": answer.created,
                    "model": ask.model,
                    "service_tier": "default",
                    "system_fingerprint": FINGERPRINT,
                }
            )[:-1]
            + b',"choices":['
        )
        tail = b'],"usage":null}' if ask.include_usage else b"]}"
        events: list[Event] = []
        cut_limit = -1
        for index, reply in enumerate(answer.replies):
            for choice, tokens in _choice_chunks(index, reply):
                if choice["finish_reason"] is not None and cut_limit < 0:
                    cut_limit = len(events)
                events.append(Event(head + _encode(choice) + tail, None, tokens))
        if ask.include_usage:
            events.append(Event(head + b'],"usage":' + _encode(usage(answer)) + b"}"))
        events.append(Event(b"[DONE]"))
        return StreamPlan(events, cut_limit)

    def frame(self, events: list[Event], ask: Ask, complete: bool) -> list[bytes]:
        return [b"data: " + e.data + b"\n\n" for e in events]

    def embeddings(self, ask: EmbedAsk, vectors: list[list[float]], prompt_tokens: int, batch: bool) -> bytes:
        data = [
            {"object": "embedding", "index": i, "embedding": to_base64(v) if ask.base64 else v}
            for i, v in enumerate(vectors)
        ]
        return _encode(
            {
                "object": "list",
                "data": data,
                "model": ask.model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }
        )

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]:
        status, err_type, code = _ERRORS[kind]
        param = "messages" if kind == "context_length" else None
        error = {"message": message, "type": err_type, "param": param, "code": code}
        return status, _encode({"error": error})


def usage(answer: Answer) -> dict[str, Any]:
    prompt, completion = answer.prompt_tokens, answer.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": answer.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": answer.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request: {exc}") from None
    except msgspec.DecodeError:
        raise BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)"
        ) from None


def _message_tokens(message: Message) -> int:
    content = message.content
    tokens = count_tokens(text_of(content))
    if isinstance(content, list):
        tokens += IMAGE_TOKENS * sum(1 for p in content if isinstance(p, ImagePart))
    if isinstance(message, AssistantMessage) and message.tool_calls:
        tokens += sum(count_tokens(c.function.name + c.function.arguments) for c in message.tool_calls)
    return tokens


def _read_conversation(messages: list[Message], ask: Ask) -> None:
    ask.system_text = "\n".join(text_of(m.content) for m in messages if isinstance(m, SystemMessage | DeveloperMessage))
    last = messages[-1]
    if isinstance(last, ToolMessage):
        ask.tool_result = text_of(last.content)
    for message in reversed(messages):
        if isinstance(message, UserMessage):
            ask.last_user_text = text_of(message.content)
            return


def _tool_choice(req: ChatRequest, tools: list[ToolSpec]) -> tuple[ToolMode, str | None, list[ToolSpec]]:
    choice = req.tool_choice
    if choice is None:
        return ("auto" if tools else "none"), None, tools
    if isinstance(choice, str):
        return choice, None, tools
    if isinstance(choice, ToolChoiceFunction):
        return "required", choice.function.name, tools
    if isinstance(choice, ToolChoiceCustom):
        return "required", choice.custom.name, tools
    if isinstance(choice, ToolChoiceAllowed):
        allowed = {(t.get("function") or {}).get("name") for t in choice.allowed_tools.tools}
        return choice.allowed_tools.mode, None, [t for t in tools if t.name in allowed]
    return "auto", None, tools


def _choice(index: int, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if reply.tool_calls else reply.text,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": "call_" + c.key, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ]
    return {"index": index, "message": message, "logprobs": None, "finish_reason": _FINISH[reply.finish]}


def _choice_chunks(index: int, reply: Reply) -> list[tuple[dict[str, Any], float]]:
    """The `choices[0]` of each chunk for one reply, with the tokens each carries."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    role = {"role": "assistant", "content": None if reply.tool_calls else "", "refusal": None}
    out = [(chunk(role), 0.0)]
    for piece in text_pieces(reply.text):
        out.append((chunk({"content": piece}), len(piece) / 4))
    for j, call in enumerate(reply.tool_calls):
        opening = {
            "index": j,
            "id": "call_" + call.key,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        out.append((chunk({"tool_calls": [opening]}), len(call.name) / 4))
        args = call.arguments
        for at in range(0, len(args), _ARG_FRAGMENT):
            fragment = args[at : at + _ARG_FRAGMENT]
            delta = {"tool_calls": [{"index": j, "function": {"arguments": fragment}}]}
            out.append((chunk(delta), len(fragment) / 4))
    out.append((chunk({}, _FINISH[reply.finish]), 0.0))
    return out
