"""The Bedrock Converse wire format: requests, answers and errors, table-tested.

Shapes follow the Converse API reference and botocore's bedrock-runtime service model (where a request body
is checked against the model's members, so a misspelt field fails here).
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import botocore
import pytest

from modelyard.config.model import Deployment
from modelyard.providers.bedrock import BedrockAdapter
from modelyard.providers.bedrock_body import JSON_TOOL, document_name
from modelyard.schema.chat import ChatRequest, chat_request_from_dict
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

ADAPTER = BedrockAdapter()
KEYS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "sk-test-unit-secret"}
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-a-png").decode()


def dep(model: str = "anthropic.claude-3-haiku-20240307-v1:0", **options: Any) -> Deployment:
    return Deployment(name="b", provider="bedrock", model=model, options={"region": "us-west-2", **KEYS, **options})


def chat(messages: list[dict[str, Any]] | None = None, **fields: Any) -> tuple[ChatRequest, dict[str, Any]]:
    raw = {"model": "m", "messages": messages or [{"role": "user", "content": "Hello"}], **fields}
    return chat_request_from_dict(raw), raw


def body_of(d: Deployment | None = None, messages: list[dict[str, Any]] | None = None, **fields: Any) -> Any:
    req, raw = chat(messages, **fields)
    return json.loads(ADAPTER.chat_call(d or dep(), req, raw, stream=False).body)


def _service_shapes() -> dict[str, Any]:
    folder = Path(botocore.__file__).parent / "data" / "bedrock-runtime"
    (path,) = folder.glob("*/service-2.json.gz")
    shapes: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))["shapes"]
    return shapes


SHAPES = _service_shapes()


def conforms(value: Any, shape: str, where: str = "$") -> None:
    """`value` fits botocore's shape `shape` (members known, required present, enums, types)."""
    spec = SHAPES[shape]
    kind = spec["type"]
    if spec.get("document"):
        return  # free-form JSON (a tool's input schema, additionalModelRequestFields)
    if kind == "structure":
        assert isinstance(value, dict), where
        if spec.get("union"):
            assert len(value) == 1, f"{where}: a union has exactly one member"
        for name in spec.get("required", []):
            assert name in value, f"{where}.{name} is required"
        for name, item in value.items():
            assert name in spec["members"], f"{where}.{name} is not a member of {shape}"
            conforms(item, spec["members"][name]["shape"], f"{where}.{name}")
    elif kind == "list":
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            conforms(item, spec["member"]["shape"], f"{where}[{i}]")
    elif kind == "map":
        assert isinstance(value, dict), where
    elif kind == "string":
        assert isinstance(value, str), where
        if "enum" in spec:
            assert value in spec["enum"], f"{where}: {value!r} not in {spec['enum']}"
    elif kind == "blob":
        assert isinstance(value, str) and base64.b64decode(value, validate=True), where
    elif kind in ("integer", "long"):
        assert isinstance(value, int), where
    elif kind in ("float", "double"):
        assert isinstance(value, int | float), where
    elif kind == "boolean":
        assert isinstance(value, bool), where


def conforms_request(body: dict[str, Any]) -> None:
    conforms({**body, "modelId": "m"}, "ConverseRequest")


# ============================================================================ URLs and headers


@pytest.mark.parametrize(
    ("model", "stream", "url"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", False, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
        (
            "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
            True,
            "/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream",
        ),
        (
            "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.meta.llama3-2-1b-instruct-v1:0",
            False,
            "/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A123456789012%3Ainference-profile%2Fus.meta.llama3-2-1b-instruct-v1%3A0/converse",
        ),
    ],
)
def test_url_encodes_the_model_id(model: str, stream: bool, url: str) -> None:
    req, raw = chat()
    call = ADAPTER.chat_call(dep(model), req, raw, stream)
    assert call.url == "https://bedrock-runtime.us-west-2.amazonaws.com" + url
    assert call.method == "POST"
    assert call.headers["Accept"] == ("application/vnd.amazon.eventstream" if stream else "application/json")
    assert "Authorization" not in call.headers  # signed later, by authorize()


def test_api_base_and_extra_headers() -> None:
    d = Deployment(
        name="b",
        provider="bedrock",
        model="m",
        api_base="https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com/",
        headers={"x-team": "a"},
        options={"region": "us-east-1"},
    )
    req, raw = chat()
    call = ADAPTER.chat_call(d, req, raw, False)
    assert call.url == "https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com/model/m/converse"
    assert call.headers["x-team"] == "a"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "region"),
        ({"region": "us-east-1", "aws_access_key_id": "AK"}, "go together"),
        ({"region": "us-east-1", "aws_session_token": "t"}, "needs"),
        ({"region": "us-east-1", "profile": "p", **KEYS}, "either profile"),
        ({"region": "Mars"}, "region"),
        ({"region": "us-east-1", "regoin": "x"}, "regoin"),
    ],
)
def test_bad_options_fail_at_load(options: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        Deployment(name="b", provider="bedrock", model="m", options=options)


# ============================================================================ requests


def test_system_messages_inference_config() -> None:
    body = body_of(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use metric."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "there"}, {"type": "text", "text": "  "}]},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Weather?"},
        ],
        max_tokens=50,
        temperature=0.3,
        top_p=0.9,
        stop="END",
    )
    conforms_request(body)
    assert body["system"] == [{"text": "Be brief."}, {"text": "Use metric."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "Hi"}, {"text": "there"}]},
        {"role": "assistant", "content": [{"text": "Hello!"}]},
        {"role": "user", "content": [{"text": "Weather?"}]},
    ]
    assert body["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.3, "topP": 0.9, "stopSequences": ["END"]}
    assert "toolConfig" not in body


def test_max_completion_tokens_wins_and_stop_list() -> None:
    body = body_of(max_tokens=5, max_completion_tokens=7, stop=["a", "b"])
    assert body["inferenceConfig"] == {"maxTokens": 7, "stopSequences": ["a", "b"]}


def test_images_and_documents_go_as_bytes() -> None:
    pdf = base64.b64encode(b"%PDF-1.4 fake").decode()
    body = body_of(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                    {
                        "type": "file",
                        "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "Q3 report!.pdf"},
                    },
                ],
            }
        ]
    )
    conforms_request(body)
    assert body["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": PIXEL}}}
    assert body["messages"][0]["content"][2] == {
        "document": {"format": "pdf", "name": "Q3 report", "source": {"bytes": pdf}}
    }


@pytest.mark.parametrize(
    ("filename", "index", "name"),
    [("notes.txt", 0, "notes"), ("a  b__c.md", 1, "a b c"), (None, 2, "document-3"), ("***.pdf", 0, "document-1")],
)
def test_document_names_fit_bedrock_rules(filename: str | None, index: int, name: str) -> None:
    assert document_name(filename, index) == name


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "data URLs only"),
        ({"type": "image_url", "image_url": {"url": f"data:image/tiff;base64,{PIXEL}"}}, "image/tiff"),
        ({"type": "input_audio", "input_audio": {"data": PIXEL, "format": "wav"}}, "input_audio"),
        ({"type": "file", "file": {"file_id": "file-123"}}, "inline file_data"),
        ({"type": "file", "file": {"file_data": f"data:application/zip;base64,{PIXEL}"}}, "application/zip"),
    ],
)
def test_parts_bedrock_cannot_take_are_400s(part: dict[str, Any], message: str) -> None:
    with pytest.raises(GatewayError, match=message) as info:
        body_of(messages=[{"role": "user", "content": [part]}])
    assert info.value.status == 400


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, None),
        ("auto", None),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
    ],
)
def test_tools_and_tool_choice(tool_choice: Any, expected: dict[str, Any] | None) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER]}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    body = body_of(**fields)
    conforms_request(body)
    spec = body["toolConfig"]["tools"][0]["toolSpec"]
    assert spec == {
        "name": "get_weather",
        "description": "Weather for a city",
        "inputSchema": {"json": WEATHER["function"]["parameters"]},
    }
    assert body["toolConfig"].get("toolChoice") == expected


def test_tool_choice_none_leaves_tools_out_unless_history_has_tool_blocks() -> None:
    assert "toolConfig" not in body_of(tools=[WEATHER], tool_choice="none")
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "tooluse_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "22C"},
    ]
    body = body_of(messages=history, tools=[WEATHER], tool_choice="none")
    conforms_request(body)
    assert body["toolConfig"] == {"tools": [{"toolSpec": body["toolConfig"]["tools"][0]["toolSpec"]}]}
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "22C"}]}}],
    }


def test_tool_results_and_user_text_share_one_turn() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "t2", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "22C"},
        {"role": "tool", "tool_call_id": "t2", "content": ""},
        {"role": "user", "content": "And tomorrow?"},
    ]
    body = body_of(messages=messages, tools=[WEATHER])
    conforms_request(body)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][0] == {"text": "Checking."}
    assert body["messages"][1]["content"][2]["toolUse"]["input"] == {}
    assert body["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "t1", "content": [{"text": "22C"}]}},
        {"toolResult": {"toolUseId": "t2", "content": [{"text": "(empty)"}]}},
        {"text": "And tomorrow?"},
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_bad_tool_call_arguments_are_400s(arguments: str) -> None:
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": arguments}}],
        },
    ]
    with pytest.raises(GatewayError, match="arguments"):
        body_of(messages=messages)


def test_n_above_one_is_a_400() -> None:
    with pytest.raises(GatewayError, match="n must be 1") as info:
        body_of(n=2)
    assert info.value.status == 400
    assert body_of(n=1)["messages"]  # n=1 is fine


SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


def test_json_object_is_a_forced_tool() -> None:
    body = body_of(response_format={"type": "json_object"})
    conforms_request(body)
    assert body["toolConfig"]["toolChoice"] == {"tool": {"name": JSON_TOOL}}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {"json": {"type": "object"}}


def test_json_schema_is_a_forced_tool_with_that_schema() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "description": "The verdict", "schema": SCHEMA}}
    body = body_of(response_format=fmt)
    conforms_request(body)
    spec = body["toolConfig"]["tools"][0]["toolSpec"]
    assert spec == {"name": JSON_TOOL, "description": "The verdict", "inputSchema": {"json": SCHEMA}}


def test_json_schema_as_structured_output_when_asked() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
    body = body_of(dep(structured_output=True), response_format=fmt)
    conforms_request(body)
    assert "toolConfig" not in body
    structure = body["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert json.loads(structure["schema"]) == SCHEMA and structure["name"] == "verdict"


def test_json_mode_with_tools_becomes_an_instruction() -> None:
    body = body_of(
        tools=[WEATHER], response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": SCHEMA}}
    )
    assert body["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"
    assert "toolChoice" not in body["toolConfig"]
    instruction = body["system"][-1]["text"]
    assert "JSON Schema" in instruction
    assert json.loads(instruction.split("\n", 1)[1]) == SCHEMA
    body = body_of(tools=[WEATHER], response_format={"type": "json_object"})
    assert "valid JSON" in body["system"][-1]["text"]


def test_options_fields_go_out_as_given() -> None:
    guard = {"guardrailIdentifier": "gr-1", "guardrailVersion": "1"}
    d = dep(
        guardrail_config=guard,
        additional_model_request_fields={"top_k": 40},
        performance_config={"latency": "optimized"},
    )
    body = body_of(d)
    conforms_request(body)
    assert body["guardrailConfig"] == guard
    assert body["additionalModelRequestFields"] == {"top_k": 40}
    assert body["performanceConfig"] == {"latency": "optimized"}


def test_no_embeddings() -> None:
    from modelyard.schema.chat import EmbeddingRequest

    with pytest.raises(GatewayError, match="embeddings"):
        ADAPTER.embeddings_call(dep(), EmbeddingRequest(model="m", input="x"), {})


# ============================================================================ answers


def parse(response: dict[str, Any], **fields: Any) -> dict[str, Any]:
    req, _ = chat(**fields)
    completion = ADAPTER.parse_chat(dep(), req, json.dumps(response).encode())
    assert completion.body["usage"] == completion.usage.to_openai()
    return completion.body


def answer(
    content: list[dict[str, Any]], stop: str = "end_turn", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": usage or {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15},
        "metrics": {"latencyMs": 300},
    }


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("content_filtered", "content_filter"),
        ("guardrail_intervened", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    body = parse(answer([{"text": "Hi"}], stop))
    assert body["choices"][0]["finish_reason"] == finish
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}


def test_text_tool_calls_and_reasoning() -> None:
    content = [
        {"reasoningContent": {"reasoningText": {"text": "Think.", "signature": "sig"}}},
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "tooluse_abc", "name": "get_weather", "input": {"city": "Paris"}}},
    ]
    body = parse(answer(content, "tool_use"))
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] == "Let me check."
    assert message["reasoning_content"] == "Think."
    assert message["tool_calls"] == [
        {"id": "tooluse_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


def test_tool_calls_only_have_null_content() -> None:
    body = parse(answer([{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}], "tool_use"))
    assert body["choices"][0]["message"]["content"] is None


def test_forced_json_tool_answer_is_content() -> None:
    content = [
        {"text": "Here is the JSON:"},
        {"toolUse": {"toolUseId": "t", "name": JSON_TOOL, "input": {"label": "yes"}}},
    ]
    body = parse(answer(content, "tool_use"), response_format={"type": "json_object"})
    assert body["choices"][0]["finish_reason"] == "stop"
    assert json.loads(body["choices"][0]["message"]["content"]) == {"label": "yes"}
    assert "tool_calls" not in body["choices"][0]["message"]


def test_usage_counts_cache_reads_and_writes_in_the_prompt() -> None:
    usage = {
        "inputTokens": 10,
        "outputTokens": 5,
        "totalTokens": 115,
        "cacheReadInputTokens": 80,
        "cacheWriteInputTokens": 20,
    }
    req, _ = chat()
    completion = ADAPTER.parse_chat(dep(), req, json.dumps(answer([{"text": "x"}], usage=usage)).encode())
    assert (completion.usage.prompt, completion.usage.completion) == (110, 5)
    assert (completion.usage.cached, completion.usage.cache_write) == (80, 20)
    assert completion.body["usage"]["prompt_tokens"] == 110
    assert completion.body["usage"]["prompt_tokens_details"]["cached_tokens"] == 80


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"not json", ErrorKind.SERVER),
        (b"[]", ErrorKind.SERVER),
        (b'{"output": {}}', ErrorKind.SERVER),
        (json.dumps(answer([], "malformed_model_output")).encode(), ErrorKind.SERVER),
    ],
)
def test_malformed_answers(raw: bytes, kind: ErrorKind) -> None:
    req, _ = chat()
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_chat(dep(), req, raw)
    assert info.value.kind is kind


# ============================================================================ errors


@pytest.mark.parametrize(
    ("status", "error_type", "message", "kind"),
    [
        (429, "ThrottlingException", "Too many requests, please wait before trying again.", ErrorKind.RATE_LIMITED),
        (429, "ModelNotReadyException", "Model is not ready for inference.", ErrorKind.OVERLOADED),
        (503, "ServiceUnavailableException", "Service unavailable.", ErrorKind.OVERLOADED),
        (400, "ValidationException", "Malformed input request: extraneous key [foo]", ErrorKind.BAD_REQUEST),
        (400, "ValidationException", "Input is too long for requested model.", ErrorKind.CONTEXT_LENGTH),
        (400, "ValidationException", "prompt is too long: 250000 tokens > 200000 maximum", ErrorKind.CONTEXT_LENGTH),
        (400, "ValidationException", "Too many input tokens. Max input tokens: 8192", ErrorKind.CONTEXT_LENGTH),
        (403, "AccessDeniedException", "You don't have access to the model.", ErrorKind.AUTH),
        (403, "UnrecognizedClientException", "The security token included in the request is invalid.", ErrorKind.AUTH),
        (403, "InvalidSignatureException", "The request signature we calculated does not match", ErrorKind.AUTH),
        (403, "ExpiredTokenException", "The security token included in the request is expired", ErrorKind.AUTH),
        (408, "ModelTimeoutException", "Model has timed out in processing the request.", ErrorKind.TIMEOUT),
        (500, "InternalServerException", "Internal server error.", ErrorKind.SERVER),
        (424, "ModelErrorException", "The model produced an error.", ErrorKind.SERVER),
        (404, "ResourceNotFoundException", "Could not resolve the foundation model.", ErrorKind.BAD_REQUEST),
        (400, "ServiceQuotaExceededException", "Quota exceeded.", ErrorKind.RATE_LIMITED),
    ],
)
def test_errors_by_header(status: int, error_type: str, message: str, kind: ErrorKind) -> None:
    headers = {"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    error = ADAPTER.error(status, headers, json.dumps({"message": message}).encode())
    assert error.kind is kind
    assert error.status == status
    assert error_type in (error.detail or "")


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, {"__type": "com.amazon.bedrock#ThrottlingException", "message": "slow down"}, ErrorKind.RATE_LIMITED),
        (400, {"code": "ValidationException", "Message": "bad"}, ErrorKind.BAD_REQUEST),
        (503, {}, ErrorKind.OVERLOADED),
        (502, {"message": "bad gateway"}, ErrorKind.SERVER),
        (424, {"message": "model error"}, ErrorKind.SERVER),
        (403, {"Message": "User is not authorized"}, ErrorKind.AUTH),
    ],
)
def test_errors_by_body_or_status(status: int, body: dict[str, Any], kind: ErrorKind) -> None:
    error = ADAPTER.error(status, {}, json.dumps(body).encode())
    assert error.kind is kind


def test_error_retry_after_and_masking() -> None:
    error = ADAPTER.error(429, {"retry-after": "3", "x-amzn-errortype": "ThrottlingException"}, b'{"message":"slow"}')
    assert error.retry_after == 3.0
    bad = ADAPTER.error(400, {"x-amzn-errortype": "ValidationException"}, b'{"message":"maxTokens too large"}')
    assert "maxTokens too large" in bad.message  # actionable: the client sees the provider's words
    auth = ADAPTER.error(
        403, {"x-amzn-errortype": "AccessDeniedException"}, b'{"message":"role arn:aws:iam::1:role/x"}'
    )
    assert "arn:aws" not in auth.message  # not actionable: generic for the client, detail kept for logs
    assert "arn:aws" in (auth.detail or "")
