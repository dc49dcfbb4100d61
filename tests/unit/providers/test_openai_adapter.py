"""OpenAI-compatible adapter: request out, response and stream in, error mapping (table tests)."""

from __future__ import annotations

import json

import msgspec
import pytest

from modelyard.config.model import Deployment
from modelyard.providers import openai as openai_module
from modelyard.providers.base import SSEEvent
from modelyard.providers.openai import OpenAIAdapter, _delta_shape, _same_shape
from modelyard.providers.sse import SSEParser
from modelyard.schema.chat import ChatRequest, EmbeddingRequest
from modelyard.schema.errors import ErrorKind, ProviderError

ADAPTER = OpenAIAdapter()
DEP = Deployment(
    name="d", provider="openai", model="gpt-4o-2024-08-06", api_base="https://api.example/v1/", api_key="sk-secret-123"
)


def call(raw: dict, stream: bool = False, dep: Deployment = DEP):
    req = msgspec.convert(raw, ChatRequest)
    return ADAPTER.chat_call(dep, req, raw, stream)


def test_request_passes_unknown_fields_swaps_model_strips_modelyard():
    raw = {
        "model": "smart",
        "messages": [{"role": "user", "content": "hi"}],
        "top_k": 40,
        "modelyard": {"strategy": "cost"},
        "temperature": 0.2,
    }
    out = call(raw)
    body = msgspec.json.decode(out.body)
    assert out.url == "https://api.example/v1/chat/completions"
    assert out.headers["Authorization"] == "Bearer sk-secret-123"
    assert body == {
        "model": "gpt-4o-2024-08-06",
        "messages": [{"role": "user", "content": "hi"}],
        "top_k": 40,
        "temperature": 0.2,
    }
    assert raw["model"] == "smart"  # the caller's dict is not mutated


def test_stream_forces_usage_and_can_be_disabled():
    raw = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body = msgspec.json.decode(call(raw, stream=True).body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    quiet = Deployment(name="d", provider="openai", model="x", options={"stream_usage": False})
    assert "stream_options" not in msgspec.json.decode(call(raw, stream=True, dep=quiet).body)


def test_max_tokens_field_rename_quirk():
    dep = Deployment(name="o", provider="openai", model="o3", options={"max_tokens_field": "max_completion_tokens"})
    raw = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    body = msgspec.json.decode(call(raw, dep=dep).body)
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body


def test_response_normalised_usage_and_tool_call_arguments():
    upstream = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 60, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 8},
        },
    }
    req = ChatRequest(model="m", messages=[])
    result = ADAPTER.parse_chat(DEP, req, msgspec.json.encode(upstream))
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert (result.usage.prompt, result.usage.completion, result.usage.cached, result.usage.reasoning) == (
        100,
        20,
        60,
        8,
    )
    assert result.body["usage"]["prompt_tokens_details"]["audio_tokens"] == 0  # provider extras kept
    assert result.model == "gpt-4o-2024-08-06"


def test_response_fills_missing_id_created_usage():
    upstream = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "eos"}]}
    result = ADAPTER.parse_chat(DEP, ChatRequest(model="m", messages=[]), msgspec.json.encode(upstream))
    assert result.body["id"].startswith("chatcmpl-") and result.body["created"] > 0
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.body["usage"]["total_tokens"] == 0 and result.body["model"] == DEP.model


@pytest.mark.parametrize("body", [b"<html>502</html>", b"[1,2]", b'{"no": "choices"}'])
def test_malformed_response_is_server_error(body):
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_chat(DEP, ChatRequest(model="m", messages=[]), body)
    assert info.value.kind is ErrorKind.SERVER


def stream_of(*payloads: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    raw = b"".join(b"data: " + p + b"\n\n" for p in payloads)
    events = []
    for i in range(0, len(raw), 7):  # split across reads at awkward places
        events += parser.feed(raw[i : i + 7])
    return events


def test_stream_translation_usage_captured_usage_chunk_dropped():
    chunks = [
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            "usage": None,
        },
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
            "usage": None,
        },
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": None,
        },
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
    ]
    events = stream_of(*(msgspec.json.encode(c) for c in chunks), b"[DONE]")
    translator = ADAPTER.stream_translator(DEP, ChatRequest(model="m", messages=[]))
    out = [c for e in events for c in translator.feed(e)]
    assert len(out) == 3
    # the first chunk (shape check) and the finishing one are decoded and normalised...
    assert isinstance(out[0], dict) and isinstance(out[2], dict)
    assert "usage" not in out[0] and out[2]["choices"][0]["finish_reason"] == "stop"
    # ...a plain content delta of a well-formed stream passes through as the provider's own bytes
    assert isinstance(out[1], msgspec.Raw) and bytes(out[1]) == msgspec.json.encode(chunks[1])
    assert translator.done and translator.usage.prompt == 9 and translator.usage.completion == 2
    assert translator.finish() == []


def test_stream_chunks_needing_care_are_never_passed_raw():
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    translator = ADAPTER.stream_translator(DEP, ChatRequest(model="m", messages=[]))
    translator.feed(
        SSEEvent(
            msgspec.json.encode(
                {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
            )
        )
    )
    tool = {
        **base,
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": {"city": "Oslo"}}}]},
                "finish_reason": None,
            }
        ],
    }
    out = translator.feed(SSEEvent(msgspec.json.encode(tool)))
    assert out[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Oslo"}'
    spaced = b'{"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]}'
    assert isinstance(translator.feed(SSEEvent(spaced))[0], dict)  # not compact JSON: decoded
    with pytest.raises(ProviderError):
        translator.feed(SSEEvent(b'{"error": {"message": "boom"}, "choices": [{"finish_reason":null}]}'))


def _shaped_translator(first_content: str = "Hi") -> tuple[object, bytes, bytes]:
    """A translator that has seen a stream's first chunk and one plain delta; the bytes around that delta's
    content string."""
    base = b'{"id":"c9","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,'
    translator = ADAPTER.stream_translator(DEP, ChatRequest(model="m", messages=[]))
    translator.feed(SSEEvent(base + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}'))
    head = base + b'"delta":{"content":"'
    tail = b'"},"logprobs":null,"finish_reason":null}],"usage":null}'
    out = translator.feed(SSEEvent(head + first_content.encode() + tail))
    assert isinstance(out[0], msgspec.Raw)
    return translator, head, tail


@pytest.mark.parametrize("content", ["", " world", "caf\\u00e9 \\\\ ok", "{},[]:"])
def test_deltas_shaped_like_a_plain_one_pass_through_as_they_came(content: str) -> None:
    translator, head, tail = _shaped_translator()
    data = head + content.encode() + tail
    out = translator.feed(SSEEvent(data))
    assert len(out) == 1 and isinstance(out[0], msgspec.Raw) and bytes(out[0]) == data
    assert msgspec.json.decode(bytes(out[0]))["choices"][0]["delta"]["content"] == json.loads(f'"{content}"')


def test_a_delta_that_only_looks_like_the_plain_shape_is_decoded() -> None:
    translator, head, tail = _shaped_translator()
    # The same bytes around it, but its content string closes early and a tool call follows: normalised.
    smuggled = head + b'x","tool_calls":[{"index":0,"function":{"arguments":{"a":1}}}],"role":"assistant' + tail
    out = translator.feed(SSEEvent(smuggled))
    assert isinstance(out[0], dict)
    assert out[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    # Another tail (a finishing chunk) is decoded as before; another head (another choice) is checked in full.
    finishing = head + b'!"},"logprobs":null,"finish_reason":"max_tokens"}],"usage":null}'
    assert translator.feed(SSEEvent(finishing))[0]["choices"][0]["finish_reason"] == "length"
    other = head.replace(b'"index":0', b'"index":1') + b"y" + tail
    assert isinstance(translator.feed(SSEEvent(other))[0], msgspec.Raw)


def test_the_shape_check_leaves_nothing_that_could_end_the_string_to_chance() -> None:
    _, head, tail = _shaped_translator()
    assert _same_shape(head + b"plain" + tail, head, tail)
    assert not _same_shape(head + b'a"b' + tail, head, tail)  # a quote: the string could end there
    assert not _same_shape(head + b"a\\" + tail, head, tail)  # would escape the closing quote
    assert not _same_shape(head[:-1] + tail, head, tail)  # head and tail overlap: not this shape
    # A first delta whose string has an escape teaches no shape (its closing quote is not simply the next one).
    assert _delta_shape(head + b'say \\"hi' + tail) == (None, b"", False)
    assert _delta_shape(head + b"hi" + tail) == (head, tail, False)


OBFUSCATED_TAIL = b'"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"'


def _obfuscated_translator() -> tuple[object, bytes]:
    """A translator that has learned its shape from a delta ending in OpenAI's `obfuscation` padding."""
    _, head, _ = _shaped_translator()  # its head: the bytes before a delta's content string
    fresh = ADAPTER.stream_translator(DEP, ChatRequest(model="m", messages=[]))
    base = head[: -len(b'"delta":{"content":"')]
    fresh.feed(SSEEvent(base + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}'))
    out = fresh.feed(SSEEvent(head + b"Hi" + OBFUSCATED_TAIL + b'q7Zk"}'))
    assert isinstance(out[0], msgspec.Raw)
    assert _delta_shape(head + b"Hi" + OBFUSCATED_TAIL + b'q7Zk"}') == (head, OBFUSCATED_TAIL, True)
    return fresh, head


def test_openai_deltas_with_obfuscation_padding_take_the_shape_path(monkeypatch: pytest.MonkeyPatch) -> None:
    translator, head = _obfuscated_translator()

    def no_full_check(data: bytes) -> bool:
        raise AssertionError("the shape should have recognised this delta")

    monkeypatch.setattr(openai_module, "_plain_delta", no_full_check)
    for content, padding in ((b" world", b"x"), (b"", b"AbCdEfGhIjKlMnOp"), (b"caf\\u00e9", b"")):
        data = head + content + OBFUSCATED_TAIL + padding + b'"}'
        out = translator.feed(SSEEvent(data))  # type: ignore[attr-defined]
        assert len(out) == 1 and isinstance(out[0], msgspec.Raw) and bytes(out[0]) == data


def test_an_obfuscation_value_cannot_smuggle_anything_past_the_shape() -> None:
    _, head = _obfuscated_translator()
    tail = OBFUSCATED_TAIL
    assert _same_shape(head + b"ok" + tail + b'pad"}', head, tail, True)
    assert not _same_shape(head + b"ok" + tail + b'p","tool_calls":[1],"x":"y"}', head, tail, True)  # a quote
    assert not _same_shape(head + b"ok" + tail + b'p\\"}', head, tail, True)  # would escape the closing quote
    assert not _same_shape(head + b"ok" + tail + b'pad"}]}', head, tail, True)  # more after the string
    assert not _same_shape(head + b"ok" + tail + b"pad", head, tail, True)  # no closing quote
    assert not _same_shape(head + b"o\\" + tail + b'pad"}', head, tail, True)  # the content's quote escaped
    assert not _same_shape(head + b"ok" + tail + b'pad"}', head, tail, False)  # a fixed tail must match whole
    # A decoy `obfuscation` inside a tail that does not end in a plain string teaches a fixed tail.
    decoy = b'"},"obfuscation":"a\\"b"}'
    assert _delta_shape(head + b"hi" + decoy) == (head, decoy, False)


def test_stream_cut_and_error_event():
    translator = ADAPTER.stream_translator(DEP, ChatRequest(model="m", messages=[]))
    first = {"id": "c", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}
    translator.feed(SSEEvent(msgspec.json.encode(first)))
    with pytest.raises(ProviderError) as info:
        translator.finish()
    assert info.value.kind is ErrorKind.CONNECTION and info.value.after_first_byte
    with pytest.raises(ProviderError) as info:
        translator.feed(SSEEvent(b'{"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}'))
    assert info.value.kind is ErrorKind.RATE_LIMITED
    with pytest.raises(ProviderError) as info:
        translator.feed(SSEEvent(b"{not json"))
    assert info.value.kind is ErrorKind.SERVER


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry_after"),
    [
        (
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
            {"retry-after": "7"},
            ErrorKind.RATE_LIMITED,
            7.0,
        ),
        (
            429,
            {"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}},
            {},
            ErrorKind.AUTH,
            None,
        ),
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 128000 tokens",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
            {},
            ErrorKind.CONTEXT_LENGTH,
            None,
        ),
        (
            400,
            {"error": {"message": "flagged", "type": "invalid_request_error", "code": "content_filter"}},
            {},
            ErrorKind.CONTENT_FILTER,
            None,
        ),
        (
            400,
            {"error": {"message": "bad", "type": "invalid_request_error", "code": None}},
            {},
            ErrorKind.BAD_REQUEST,
            None,
        ),
        (
            401,
            {"error": {"message": "Incorrect API key provided: sk-secr***", "type": "invalid_request_error"}},
            {},
            ErrorKind.AUTH,
            None,
        ),
        (500, {"error": {"message": "boom", "type": "server_error"}}, {}, ErrorKind.SERVER, None),
        (502, "<html>bad gateway</html>", {}, ErrorKind.SERVER, None),
        (503, {"error": "overloaded"}, {"retry-after-ms": "1500"}, ErrorKind.OVERLOADED, 1.5),
        (504, {}, {}, ErrorKind.TIMEOUT, None),
        (408, {}, {}, ErrorKind.TIMEOUT, None),
    ],
)
def test_error_mapping(status, body, headers, kind, retry_after):
    raw = body.encode() if isinstance(body, str) else msgspec.json.encode(body)
    error = ADAPTER.error(status, headers, raw)
    assert error.kind is kind and error.retry_after == retry_after and error.status == status


def test_embeddings_round_trip():
    raw = {"model": "embed", "input": ["a", "b"]}
    out = ADAPTER.embeddings_call(DEP, msgspec.convert(raw, EmbeddingRequest), raw)
    assert out.url.endswith("/embeddings") and msgspec.json.decode(out.body)["model"] == DEP.model
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    result = ADAPTER.parse_embeddings(DEP, msgspec.convert(raw, EmbeddingRequest), msgspec.json.encode(body))
    assert result.usage.prompt == 4 and result.model == "text-embedding-3-small"


def test_sse_parser_crlf_comments_multiline_and_flush():
    parser = SSEParser()
    events = parser.feed(b': keepalive\r\n\r\nevent: message_start\r\ndata: {"a":\r')
    events += parser.feed(b"\ndata: 1}\r\n\r\ndata: tail")
    assert [(e.event, e.data) for e in events] == [("message_start", b'{"a":\n1}')]
    assert [e.data for e in parser.flush()] == [b"tail"]


# --------------------------------------------------------------------------- error text that reaches clients


def _error_body(message: str, err_type: str = "invalid_request_error", code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}}).encode()


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (
            401,
            "Incorrect API key provided: sk-proj-********************************abcd. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_api_key",
        ),
        (500, "The server had an error while processing your request (req_0123456789abcdef0123456789abcdef).", None),
        (503, "The engine is currently overloaded, please try again later", None),
        (
            429,
            "Rate limit reached for gpt-4o in organization org-AbCdEfGh12345678 on tokens per min",
            "rate_limit_exceeded",
        ),
    ],
)
def test_errors_a_client_cannot_act_on_get_a_generic_message(status: int, message: str, code: str | None) -> None:
    error = OpenAIAdapter().error(status, {}, _error_body(message, code=code))
    shown = error.to_body()["error"]["message"]
    assert message[:20] not in shown and "sk-" not in shown and "org-" not in shown
    assert shown.startswith(f"provider answered {status}: the provider")
    assert "sk-proj" not in error.detail and "org-AbCd" not in error.detail  # logs keep the text, masked


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnop0123456789",
        "sk-ant-api03-abcdefghijklmnop",
        "AIzaSyA1234567890abcdefghijklmnopqrs",
        "Bearer abc.def-ghi_jkl",
        "0123456789abcdef0123456789abcdef0123",
        "dGhpc2lzYWxvbmdiYXNlNjR0b2tlbjAxMjM0NTY3ODk=",
    ],
)
def test_actionable_errors_keep_their_text_with_secrets_masked(secret: str) -> None:
    message = f"Invalid value for 'tools[0]': echo of {secret} is not allowed"
    error = OpenAIAdapter().error(400, {}, _error_body(message))
    assert error.kind is ErrorKind.BAD_REQUEST
    shown = error.to_body()["error"]["message"]
    assert "Invalid value for 'tools[0]': echo of [redacted] is not allowed" in shown
    assert secret not in shown and secret not in str(error)


def test_a_context_length_error_keeps_its_useful_text() -> None:
    message = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens."
    error = OpenAIAdapter().error(400, {}, _error_body(message, code="context_length_exceeded"))
    assert error.kind is ErrorKind.CONTEXT_LENGTH and message in error.to_body()["error"]["message"]


def test_a_stream_error_event_is_masked_too() -> None:
    translator = OpenAIAdapter().stream_translator(
        Deployment(name="d", provider="openai", model="m"), ChatRequest(model="m", messages=[])
    )
    event = json.dumps(
        {"error": {"message": "upstream auth failed for key sk-live-0123456789abcdef", "type": "authentication_error"}}
    ).encode()
    with pytest.raises(ProviderError) as info:
        translator.feed(SSEEvent(event))
    assert "sk-live" not in info.value.message and "sk-live" not in info.value.detail
