"""Anthropic wire format: the Messages API (plain and SSE) and count_tokens, as api.anthropic.com writes them.

A stream is the documented event sequence: message_start, then per content block content_block_start
(a `ping` after the first), content_block_delta (thinking_delta / signature_delta / text_delta /
input_json_delta), content_block_stop, then message_delta with the stop reason and usage, and message_stop.

Extended thinking (`thinking: {"type": "enabled" | "adaptive"}`) opens the answer with a `thinking` block
whose `signature` is an HMAC (the simulator's secret) over the thinking text, streamed as a
`signature_delta` just before the block closes. As Anthropic does, a request whose assistant turn returns a
thinking block with a missing or altered signature is refused with a 400 `invalid_request_error`, and so is
a tool-use continuation with thinking on whose last assistant turn does not open with its thinking block:
a gateway that drops or rewrites signed thinking fails here exactly as it would against Anthropic. The
magic string Anthropic documents for testing makes the answer open with a `redacted_thinking` block instead
(its opaque `data` is verified the same way when it comes back).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
from dataclasses import dataclass
from typing import Any

import msgspec

from modelyard.sim.behaviour import IMAGE_TOKENS, compose, count_tokens, text_pieces
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

_ARG_FRAGMENT = 12
_STOP_REASON = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}
_ERRORS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "invalid_request_error"),
    "auth": (401, "authentication_error"),
    "not_found": (404, "not_found_error"),
    "rate_limit": (429, "rate_limit_error"),
    "server_error": (500, "api_error"),
    "unavailable": (529, "overloaded_error"),
    "context_length": (400, "invalid_request_error"),
}
_MODES: dict[str, ToolMode] = {"auto": "auto", "any": "required", "tool": "required", "none": "none"}

#: Anthropic's documented test string: a request containing it is answered with a redacted_thinking block.
REDACTED_TRIGGER = "ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_46C9A13E193C177646C7398A98432ECCCE4C1253"
#: Thinking tokens when the model's own `reasoning_tokens` draw is 0 (thinking on always thinks a little).
DEFAULT_THINKING_TOKENS = 24
_REDACTED_PREFIX = b"sim-redacted:"
_THINKING_TYPES = ("enabled", "adaptive")


@dataclass(slots=True)
class AnthropicAsk(Ask):
    """An Ask with what only the Anthropic wire reads: extended thinking."""

    thinking: bool = False
    #: The conversation holds the redacted-thinking test string.
    redacted: bool = False


class ThinkingSigner:
    """Signs thinking text and redacted-thinking payloads with the simulator's secret, and checks them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def sign(self, thinking: str) -> str:
        return base64.b64encode(self._mac(b"thinking|" + thinking.encode())).decode()

    def valid(self, thinking: str, signature: str) -> bool:
        return hmac.compare_digest(signature.encode(), self.sign(thinking).encode())

    def redacted_data(self, key: str) -> str:
        """Opaque, verifiable data for a redacted_thinking block (a nonce and its MAC)."""
        nonce = key.encode()
        return base64.b64encode(_REDACTED_PREFIX + nonce + b":" + self._mac(b"redacted|" + nonce)).decode()

    def valid_redacted(self, data: str) -> bool:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return False
        if not raw.startswith(_REDACTED_PREFIX) or b":" not in raw[len(_REDACTED_PREFIX) :]:
            return False
        nonce, _, mac = raw[len(_REDACTED_PREFIX) :].partition(b":")
        return hmac.compare_digest(mac, self._mac(b"redacted|" + nonce))


def secret_for_seed(seed: int) -> bytes:
    """The signing secret of a simulator run: fixed by its seed, so a replay signs alike."""
    return hashlib.blake2b(b"modelyard-sim-thinking|%d" % seed, digest_size=32).digest()


class AnthropicWire:
    name = "anthropic"

    def __init__(self, secret: bytes | None = None) -> None:
        self.signer = ThinkingSigner(secret if secret is not None else secret_for_seed(0))

    messages = {
        "bad_request": "{detail}",
        "auth": "invalid x-api-key",
        "not_found": "model: {model}",
        "rate_limit": "This request would exceed the rate limit for your organization (simulated). "
        "Please retry after {retry} seconds.",
        "server_error": "Internal server error",
        "unavailable": "Overloaded",
        "context_length": "prompt is too long: {prompt} tokens > {limit} maximum",
    }

    # ------------------------------------------------------------------ requests

    def parse_chat(self, body: bytes, model: str | None) -> Ask:
        return self._parse(decode_object(body), require_max_tokens=True)

    def parse_count(self, body: bytes) -> Ask:
        """A `/v1/messages/count_tokens` body: a Messages request without `max_tokens`."""
        return self._parse(decode_object(body), require_max_tokens=False)

    def _parse(self, data: dict[str, Any], *, require_max_tokens: bool) -> AnthropicAsk:
        name = data.get("model")
        messages = data.get("messages")
        max_tokens = data.get("max_tokens")
        if not isinstance(name, str) or not name:
            raise BadRequest("model: Field required")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: at least one message is required")
        if require_max_tokens and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise BadRequest("max_tokens: Field required (an integer >= 1)")
        stop = data.get("stop_sequences") or []
        thinking = data.get("thinking")
        ask = AnthropicAsk(
            model=name,
            prompt_tokens=0,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            stream=bool(data.get("stream")),
            stop=[s for s in stop if isinstance(s, str)] if isinstance(stop, list) else [],
            thinking=isinstance(thinking, dict) and thinking.get("type") in _THINKING_TYPES,
        )
        ask.system_text, _ = _text_and_images(data.get("system"))
        prompt = count_tokens(ask.system_text)
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
                raise BadRequest("messages: each message needs a role of 'user', 'assistant' or 'system'")
            if message["role"] == "system":  # mid-conversation system turns (API 2026-10-21, or its beta)
                text, _ = _text_and_images(message.get("content"))
                ask.system_text = f"{ask.system_text}\n\n{text}" if ask.system_text else text
            if message["role"] == "assistant":
                self._check_thinking(message.get("content"), f"messages.{i}.content")
            prompt += _content_tokens(message.get("content"))
        if ask.thinking:
            _check_thinking_leads(messages)
        _read_conversation(messages, ask)
        ask.redacted = REDACTED_TRIGGER in ask.last_user_text
        _read_tools(data, ask)
        prompt += count_tokens(_encode(data["tools"]).decode()) if ask.tools else 0
        ask.prompt_tokens = max(1, prompt)
        _read_output_format(data, ask)
        ask.prefix = cache_prefix(data, messages)
        return ask

    def _check_thinking(self, content: Any, param: str) -> None:
        """Every thinking block an assistant turn returns must carry the signature this simulator made."""
        if not isinstance(content, list):
            return
        for j, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            where = f"{param}.{j}"
            if block.get("type") == "thinking":
                signature, text = block.get("signature"), block.get("thinking")
                if not isinstance(signature, str):
                    raise BadRequest(f"{where}.thinking.signature: Field required")
                if not isinstance(text, str) or not self.signer.valid(text, signature):
                    raise BadRequest(f"{where}: Invalid `signature` in `thinking` block")
            elif block.get("type") == "redacted_thinking":
                data = block.get("data")
                if not isinstance(data, str):
                    raise BadRequest(f"{where}.redacted_thinking.data: Field required")
                if not self.signer.valid_redacted(data):
                    raise BadRequest(f"{where}: Invalid `data` in `redacted_thinking` block")

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk:
        raise BadRequest("the Anthropic API has no embeddings endpoint")

    # ------------------------------------------------------------------ answers

    def completion(self, answer: Answer) -> bytes:
        reply = answer.replies[0]
        lead, thinking_tokens = self._lead_block(answer)
        body = {
            "id": "msg_" + answer.key,
            "type": "message",
            "role": "assistant",
            "model": answer.ask.model,
            "content": ([lead] if lead else []) + _blocks(reply),
            "stop_reason": _STOP_REASON[reply.finish],
            "stop_sequence": reply.stop_sequence,
            "usage": usage(answer, _output_tokens(answer, thinking_tokens), thinking_tokens),
        }
        return _encode(body)

    def stream(self, answer: Answer) -> StreamPlan:
        reply = answer.replies[0]
        lead, thinking_tokens = self._lead_block(answer)
        start_usage = usage(answer, 1, 0)
        message: dict[str, Any] = {
            "id": "msg_" + answer.key,
            "type": "message",
            "role": "assistant",
            "model": answer.ask.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        events = [Event(_encode({"type": "message_start", "message": message}), "message_start")]
        cut_limit = 0
        blocks = _stream_blocks(reply)
        if lead is not None:
            blocks.insert(0, _stream_lead(lead))
        for index, (block, deltas) in enumerate(blocks):
            events.append(_event("content_block_start", {"index": index, "content_block": block}))
            if index == 0:
                events.append(_event("ping", {}))
            for delta, tokens in deltas:
                events.append(_event("content_block_delta", {"index": index, "delta": delta}, tokens))
            cut_limit = len(events)
            events.append(_event("content_block_stop", {"index": index}))
        final_usage = usage(answer, _output_tokens(answer, thinking_tokens), thinking_tokens)
        final_usage.pop("service_tier", None)
        delta = {"stop_reason": _STOP_REASON[reply.finish], "stop_sequence": reply.stop_sequence}
        events.append(_event("message_delta", {"delta": delta, "usage": final_usage}))
        events.append(_event("message_stop", {}))
        return StreamPlan(events, cut_limit)

    def _lead_block(self, answer: Answer) -> tuple[dict[str, Any] | None, int]:
        """The thinking (or redacted_thinking) block that opens an answer with thinking on, and its tokens."""
        ask = answer.ask
        if not isinstance(ask, AnthropicAsk) or not ask.thinking:
            return None, 0
        tokens = answer.reasoning_tokens or DEFAULT_THINKING_TOKENS
        if ask.redacted:
            return {"type": "redacted_thinking", "data": self.signer.redacted_data(answer.key)}, tokens
        text = compose(tokens, random.Random(answer.key))
        return {"type": "thinking", "thinking": text, "signature": self.signer.sign(text)}, count_tokens(text)

    def count_tokens_answer(self, ask: Ask) -> bytes:
        """The body of a count_tokens answer."""
        return _encode({"input_tokens": ask.prompt_tokens})

    def frame(self, events: list[Event], ask: Ask, complete: bool) -> list[bytes]:
        return [b"event: " + (e.name or "message").encode() + b"\ndata: " + e.data + b"\n\n" for e in events]

    def embeddings(self, ask: EmbedAsk, vectors: list[list[float]], prompt_tokens: int, batch: bool) -> bytes:
        raise BadRequest("the Anthropic API has no embeddings endpoint")

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]:
        status, err_type = _ERRORS[kind]
        return status, _encode({"type": "error", "error": {"type": err_type, "message": message}})


def usage(answer: Answer, output_tokens: int, thinking_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic counts `input_tokens` without the cached part (reported as `cache_read_input_tokens`)."""
    out: dict[str, Any] = {
        "input_tokens": max(0, answer.prompt_tokens - answer.cached_tokens - answer.cache_write_tokens),
        "cache_creation_input_tokens": answer.cache_write_tokens,
        "cache_read_input_tokens": answer.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    thinking = answer.reasoning_tokens if thinking_tokens is None else thinking_tokens
    if thinking and output_tokens > 1:
        out["output_tokens_details"] = {"thinking_tokens": thinking}
    return out


def cache_prefix(data: dict[str, Any], messages: list[Any]) -> list[bytes]:
    """The prompt segments Anthropic would cache: up to the last `cache_control` breakpoint, none without one.

    A top-level `cache_control` (automatic caching) marks the whole prompt. The marks themselves are left out
    of the bytes hashed, so a client that moves its breakpoint to the newest message each turn (Claude Code
    does) still reads the prefix it wrote on the previous turn.
    """
    head = [data.get("tools"), data.get("system")]
    if isinstance(data.get("cache_control"), dict):
        last = len(messages)
    else:
        marked = [i for i, part in enumerate([head, *messages]) if _has_cache_control(part)]
        if not marked:
            return []
        last = marked[-1]
    return prefix_segments(_without_cache_control(head), [_without_cache_control(m) for m in messages[:last]])


def _has_cache_control(value: Any) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    return False


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def _output_tokens(answer: Answer, thinking_tokens: int) -> int:
    """Visible tokens plus the thinking actually written (which replaces the model's bare reasoning draw)."""
    if not thinking_tokens:
        return answer.completion_tokens
    return answer.completion_tokens - answer.reasoning_tokens + thinking_tokens


def _stream_lead(block: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[dict[str, Any], float]]]:
    """A thinking block streams empty, then thinking_delta pieces and one signature_delta; redacted whole."""
    if block["type"] != "thinking":
        return block, []
    deltas: list[tuple[dict[str, Any], float]] = [
        ({"type": "thinking_delta", "thinking": p}, len(p) / 4) for p in text_pieces(block["thinking"])
    ]
    deltas.append(({"type": "signature_delta", "signature": block["signature"]}, 0.0))
    return {"type": "thinking", "thinking": "", "signature": ""}, deltas


def _check_thinking_leads(messages: list[Any]) -> None:
    """With thinking on, a tool-use continuation's last assistant turn must open with its thinking block.

    Anthropic refuses such a request when the client (or a gateway between) dropped the thinking block
    that preceded the tool_use the last user turn answers.
    """
    last = messages[-1]
    content = last.get("content") if isinstance(last, dict) else None
    if last.get("role") != "user" or not isinstance(content, list):
        return
    if not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return
    end = len(messages) - 2
    while end >= 0 and not (isinstance(messages[end], dict) and messages[end].get("role") == "assistant"):
        end -= 1
    if end < 0:
        return
    start = end  # consecutive assistant messages are one turn to Anthropic (it merges them)
    while start > 0 and isinstance(messages[start - 1], dict) and messages[start - 1].get("role") == "assistant":
        start -= 1
    first: Any = None
    for message in messages[start : end + 1]:
        blocks = message.get("content")
        if isinstance(blocks, str) and blocks:
            first = {"type": "text"}
        elif isinstance(blocks, list) and blocks:
            first = blocks[0]
        if first is not None:
            break
    kind = first.get("type") if isinstance(first, dict) else "text"
    if kind not in ("thinking", "redacted_thinking"):
        raise BadRequest(
            f"messages.{start}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{kind}`. "
            "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
            "(preceding the lastmost set of `tool_use` and `tool_result` blocks). To avoid this "
            "requirement, disable `thinking`."
        )


def _event(kind: str, payload: dict[str, Any], tokens: float = 0.0) -> Event:
    return Event(_encode({"type": kind, **payload}), kind, tokens)


def _blocks(reply: Reply) -> list[dict[str, Any]]:
    if reply.tool_calls:
        return [{"type": "tool_use", "id": "toolu_" + c.key, "name": c.name, "input": c.args} for c in reply.tool_calls]
    return [{"type": "text", "text": reply.text}]


def _stream_blocks(reply: Reply) -> list[tuple[dict[str, Any], list[tuple[dict[str, Any], float]]]]:
    """Each content block's opening and its deltas (with the tokens each carries)."""
    if not reply.tool_calls:
        deltas = [({"type": "text_delta", "text": p}, len(p) / 4) for p in text_pieces(reply.text)]
        return [({"type": "text", "text": ""}, deltas)]
    blocks = []
    for call in reply.tool_calls:
        opening = {"type": "tool_use", "id": "toolu_" + call.key, "name": call.name, "input": {}}
        args = call.arguments
        deltas = [
            ({"type": "input_json_delta", "partial_json": args[at : at + _ARG_FRAGMENT]}, _ARG_FRAGMENT / 4)
            for at in range(0, len(args), _ARG_FRAGMENT)
        ]
        blocks.append((opening, deltas))
    return blocks


def _text_and_images(content: Any) -> tuple[str, int]:
    """The text of a content value (string or blocks) and how many images it holds."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    images = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind in ("image", "document"):
            images += 1
    return "".join(texts), images


def _content_tokens(content: Any) -> int:
    text, images = _text_and_images(content)
    tokens = count_tokens(text) + IMAGE_TOKENS * images
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_result":
                tokens += _content_tokens(block.get("content"))
            elif block.get("type") == "tool_use":
                tokens += count_tokens(str(block.get("name", "")) + _encode(block.get("input", {})).decode())
    return tokens


def _read_conversation(messages: list[Any], ask: Ask) -> None:
    last = messages[-1]
    content = last.get("content")
    if last.get("role") == "user" and isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            ask.tool_result, _ = _text_and_images(results[-1].get("content"))
    for message in reversed(messages):
        if message.get("role") == "user":
            text, _ = _text_and_images(message.get("content"))
            if text or ask.tool_result is None:
                ask.last_user_text = text
                return


def _read_tools(data: dict[str, Any], ask: Ask) -> None:
    tools = data.get("tools")
    if isinstance(tools, list):
        ask.tools = [
            ToolSpec(t["name"], t.get("input_schema") if isinstance(t.get("input_schema"), dict) else None)
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        ]
    choice = data.get("tool_choice")
    if not isinstance(choice, dict):
        ask.tool_mode = "auto" if ask.tools else "none"
        return
    ask.tool_mode = _MODES.get(str(choice.get("type")), "auto")
    if choice.get("type") == "tool":
        ask.tool_name = str(choice.get("name") or "")
    ask.parallel_tools = not choice.get("disable_parallel_tool_use", False)


def _read_output_format(data: dict[str, Any], ask: Ask) -> None:
    """Structured outputs: `output_config.format` (GA) or the older `output_format`."""
    config = data.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict):
        fmt = data.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        ask.json_mode = True
        schema = fmt.get("schema")
        ask.json_schema = schema if isinstance(schema, dict) else None
