"""Gemini wire format: generateContent, streamGenerateContent, embedContent and batchEmbedContents.

Request fields are read in camelCase or snake_case, as Google's JSON mapping accepts both. A stream with
`alt=sse` is a series of `data:` events, each a GenerateContentResponse fragment; without it the same
fragments form one JSON array sent piece by piece. The last fragment carries `finishReason` and the full
`usageMetadata`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from modelyard.sim.behaviour import IMAGE_TOKENS, count_tokens, text_pieces
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
    decode_object,
)

_encode = msgspec.json.Encoder().encode

#: Words per stream fragment: Gemini sends larger pieces than OpenAI or Anthropic.
_WORDS_PER_CHUNK = 4
_FINISH = {"stop": "STOP", "stop_sequence": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_ERRORS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "INVALID_ARGUMENT"),
    "auth": (401, "UNAUTHENTICATED"),
    "not_found": (404, "NOT_FOUND"),
    "rate_limit": (429, "RESOURCE_EXHAUSTED"),
    "server_error": (500, "INTERNAL"),
    "unavailable": (503, "UNAVAILABLE"),
    "context_length": (400, "INVALID_ARGUMENT"),
}
_MODES: dict[str, ToolMode] = {"AUTO": "auto", "VALIDATED": "auto", "ANY": "required", "NONE": "none"}


def get(data: Any, camel: str, snake: str) -> Any:
    if not isinstance(data, dict):
        return None
    value = data.get(camel)
    return data.get(snake) if value is None else value


class GeminiWire:
    name = "gemini"
    messages = {
        "bad_request": "{detail}",
        "auth": "API key not valid. Please pass a valid API key.",
        "not_found": "models/{model} is not found for API version v1beta, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
        "rate_limit": "Resource has been exhausted (e.g. check quota).",
        "server_error": "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
        "unavailable": "The model is overloaded. Please try again later.",
        "context_length": "The input token count ({prompt}) exceeds the maximum number of tokens allowed ({limit}).",
    }

    # ------------------------------------------------------------------ requests

    def parse_chat(self, body: bytes, model: str | None) -> Ask:
        data = decode_object(body)
        contents = data.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        config = get(data, "generationConfig", "generation_config") or {}
        ask = Ask(model=model or "", prompt_tokens=0)
        system = get(data, "systemInstruction", "system_instruction")
        prompt = _parts_tokens(system)
        ask.system_text = system if isinstance(system, str) else _parts_text(system)
        for content in contents:
            if not isinstance(content, dict):
                raise BadRequest("* GenerateContentRequest.contents: each content must be an object")
            prompt += _parts_tokens(content)
        _read_conversation(contents, ask)
        _read_tools(data, ask)
        if ask.tools:
            prompt += count_tokens(_encode(data.get("tools")).decode())
        ask.prompt_tokens = max(1, prompt)
        ask.prefix = prefix_segments([system, data.get("tools"), get(data, "toolConfig", "tool_config")], contents)
        _read_config(config, ask)
        return ask

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk:
        data = decode_object(body)
        requests = data.get("requests") if batch else [data]
        if not isinstance(requests, list) or not requests:
            raise BadRequest("* BatchEmbedContentsRequest.requests: requests is not specified")
        texts = []
        for request in requests:
            content = get(request, "content", "content")
            if not isinstance(content, dict):
                raise BadRequest("* EmbedContentRequest.content: content is not specified")
            parts = content.get("parts")
            parts = parts if isinstance(parts, list) else []
            texts.append("".join(t for p in parts if isinstance(p, dict) and isinstance(t := p.get("text"), str)))
        dims = get(requests[0], "outputDimensionality", "output_dimensionality")
        return EmbedAsk(model or "", texts, dims if isinstance(dims, int) and dims > 0 else None)

    # ------------------------------------------------------------------ answers

    def completion(self, answer: Answer) -> bytes:
        candidates = [
            {"content": {"parts": _parts(r), "role": "model"}, "finishReason": _FINISH[r.finish], "index": i}
            for i, r in enumerate(answer.replies)
        ]
        return _encode(
            {
                "candidates": candidates,
                "usageMetadata": usage_metadata(answer, final=True),
                "modelVersion": answer.ask.model,
                "responseId": answer.key,
            }
        )

    def stream(self, answer: Answer) -> StreamPlan:
        running = usage_metadata(answer, final=False)
        fragments: list[tuple[dict[str, Any], float]] = []
        cut_limit = -1
        for index, reply in enumerate(answer.replies):
            pieces = _stream_parts(reply)
            for at, (parts, tokens) in enumerate(pieces):
                candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": index}
                if at == len(pieces) - 1:
                    candidate["finishReason"] = _FINISH[reply.finish]
                    cut_limit = len(fragments) if cut_limit < 0 else cut_limit
                fragments.append((candidate, tokens))
        events = []
        for at, (candidate, tokens) in enumerate(fragments):
            meta = usage_metadata(answer, final=True) if at == len(fragments) - 1 else running
            body = {
                "candidates": [candidate],
                "usageMetadata": meta,
                "modelVersion": answer.ask.model,
                "responseId": answer.key,
            }
            events.append(Event(_encode(body), None, tokens))
        return StreamPlan(events, max(cut_limit, 0))

    def frame(self, events: list[Event], ask: Ask, complete: bool) -> list[bytes]:
        if ask.sse:
            return [b"data: " + e.data + b"\r\n\r\n" for e in events]
        frames = [(b"[" if i == 0 else b",\r\n") + e.data for i, e in enumerate(events)]
        if complete:
            frames.append(b"]" if frames else b"[]")
        return frames

    def embeddings(self, ask: EmbedAsk, vectors: list[list[float]], prompt_tokens: int, batch: bool) -> bytes:
        if batch:
            return _encode({"embeddings": [{"values": v} for v in vectors]})
        return _encode({"embedding": {"values": vectors[0]}})

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]:
        status, name = _ERRORS[kind]
        error: dict[str, Any] = {"code": status, "message": message, "status": name}
        if kind == "rate_limit" and retry_after is not None:
            info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after:g}s"}
            error["details"] = [info]
        return status, _encode({"error": error})


def usage_metadata(answer: Answer, final: bool) -> dict[str, Any]:
    prompt = answer.prompt_tokens
    meta: dict[str, Any] = {"promptTokenCount": prompt}
    if final:
        meta["candidatesTokenCount"] = answer.completion_tokens - answer.reasoning_tokens
        meta["totalTokenCount"] = prompt + answer.completion_tokens
    else:
        meta["totalTokenCount"] = prompt
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if answer.cached_tokens:
        meta["cachedContentTokenCount"] = answer.cached_tokens
    if final and answer.reasoning_tokens:
        meta["thoughtsTokenCount"] = answer.reasoning_tokens
    return meta


def _parts(reply: Reply) -> list[dict[str, Any]]:
    if reply.tool_calls:
        return [{"functionCall": {"name": c.name, "args": c.args}} for c in reply.tool_calls]
    return [{"text": reply.text}]


def _stream_parts(reply: Reply) -> list[tuple[list[dict[str, Any]], float]]:
    """Each fragment's parts and the tokens it carries; function calls come whole, in one fragment."""
    if reply.tool_calls:
        return [(_parts(reply), reply.completion_tokens - reply.reasoning_tokens)]
    pieces = text_pieces(reply.text)
    out = []
    for at in range(0, len(pieces), _WORDS_PER_CHUNK):
        text = "".join(pieces[at : at + _WORDS_PER_CHUNK])
        out.append(([{"text": text}], len(text) / 4))
    return out or [([{"text": ""}], 0.0)]


def _parts_tokens(content: Any) -> int:
    parts = content.get("parts") if isinstance(content, dict) else None
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(parts, list):
        return 0
    text: list[str] = []
    images = 0
    for part in parts:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            text.append(part["text"])
        elif get(part, "inlineData", "inline_data") or get(part, "fileData", "file_data"):
            images += 1
        else:
            call = get(part, "functionCall", "function_call")
            call = call if call is not None else get(part, "functionResponse", "function_response")
            if call is not None:
                text.append(_encode(call).decode())
    return count_tokens("".join(text)) + IMAGE_TOKENS * images


def _parts_text(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    return "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def _tool_result_text(response: Any) -> str:
    """A function response as text: its only string field when it has one (`{"result": "22C"}`), else JSON."""
    if isinstance(response, dict) and len(response) == 1:
        (value,) = response.values()
        if isinstance(value, str):
            return value
    return _encode(response).decode()


def _read_conversation(contents: list[Any], ask: Ask) -> None:
    last_parts = contents[-1].get("parts") or []
    responses = [get(p, "functionResponse", "function_response") for p in last_parts if isinstance(p, dict)]
    responses = [r for r in responses if isinstance(r, dict)]
    if responses:
        ask.tool_result = _tool_result_text(responses[-1].get("response"))
    for content in reversed(contents):
        if content.get("role", "user") != "user":
            continue
        text = _parts_text(content)
        if text:
            ask.last_user_text = text
            return


def _read_tools(data: dict[str, Any], ask: Ask) -> None:
    for tool in data.get("tools") or []:
        for decl in get(tool, "functionDeclarations", "function_declarations") or []:
            if not isinstance(decl, dict) or not isinstance(decl.get("name"), str):
                continue
            schema = get(decl, "parametersJsonSchema", "parameters_json_schema") or decl.get("parameters")
            ask.tools.append(ToolSpec(decl["name"], schema if isinstance(schema, dict) else None))
    calling = get(get(data, "toolConfig", "tool_config"), "functionCallingConfig", "function_calling_config")
    mode = str(get(calling, "mode", "mode") or "AUTO").upper()
    ask.tool_mode = _MODES.get(mode, "auto") if ask.tools else "none"
    allowed = get(calling, "allowedFunctionNames", "allowed_function_names")
    if isinstance(allowed, list) and allowed:
        ask.tools = [t for t in ask.tools if t.name in allowed] or ask.tools


def _read_config(config: dict[str, Any], ask: Ask) -> None:
    limit = get(config, "maxOutputTokens", "max_output_tokens")
    ask.max_tokens = limit if isinstance(limit, int) and limit > 0 else None
    stop = get(config, "stopSequences", "stop_sequences")
    ask.stop = [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []
    count = get(config, "candidateCount", "candidate_count")
    ask.n = count if isinstance(count, int) and 1 <= count <= 8 else 1
    mime = get(config, "responseMimeType", "response_mime_type")
    schema = get(config, "responseJsonSchema", "response_json_schema") or get(
        config, "responseSchema", "response_schema"
    )
    if mime == "application/json" or isinstance(schema, dict):
        ask.json_mode = True
        ask.json_schema = schema if isinstance(schema, dict) else None
