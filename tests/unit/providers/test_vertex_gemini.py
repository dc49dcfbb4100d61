"""Gemini on Vertex AI (`provider: vertex`): Vertex URLs, no API key, the Gemini body unchanged, `:predict`
embeddings, and Vertex's error answers. Shapes follow Vertex AI's REST reference (projects.locations.
publishers.models: generateContent, streamGenerateContent, predict) and google-genai's Vertex client."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import msgspec
import pytest

from modelyard.config.model import Deployment
from modelyard.config.providers import AdapterConfigError, bind_options
from modelyard.providers.base import SSEEvent
from modelyard.providers.gemini import GeminiAdapter
from modelyard.providers.vertex import VertexGeminiAdapter, default_base
from modelyard.schema.chat import EmbeddingRequest, chat_request_from_dict
from modelyard.schema.errors import ErrorKind, GatewayError

ADAPTER = VertexGeminiAdapter()
PREFIX = "projects/my-proj/locations/{loc}/publishers/google/models"


def dep(model: str = "gemini-2.5-flash", api_base: str | None = None, **options: Any) -> Deployment:
    opts = {"project": "my-proj", **options}
    return Deployment(name="g@vertex", provider="vertex", model=model, api_base=api_base, options=opts)


def chat(**fields: Any) -> tuple[Any, dict[str, Any]]:
    raw = {"model": "m", "messages": [{"role": "user", "content": "Hello"}], **fields}
    return chat_request_from_dict(raw), raw


@pytest.mark.parametrize(
    ("location", "api_base", "stream", "url"),
    [
        (
            "us-central1",
            None,
            False,
            "https://us-central1-aiplatform.googleapis.com/v1/"
            + PREFIX.format(loc="us-central1")
            + "/gemini-2.5-flash:generateContent",
        ),
        (
            "europe-west4",
            None,
            True,
            "https://europe-west4-aiplatform.googleapis.com/v1/"
            + PREFIX.format(loc="europe-west4")
            + "/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        (
            "global",
            None,
            False,
            "https://aiplatform.googleapis.com/v1/" + PREFIX.format(loc="global") + "/gemini-2.5-flash:generateContent",
        ),
        (
            "us-central1",
            "http://127.0.0.1:8123/",
            False,
            "http://127.0.0.1:8123/v1/" + PREFIX.format(loc="us-central1") + "/gemini-2.5-flash:generateContent",
        ),
        (
            "us-central1",
            "https://proxy.internal/v1beta1",
            False,
            "https://proxy.internal/v1beta1/" + PREFIX.format(loc="us-central1") + "/gemini-2.5-flash:generateContent",
        ),
    ],
)
def test_chat_urls(location: str, api_base: str | None, stream: bool, url: str) -> None:
    req, raw = chat()
    call = ADAPTER.chat_call(dep(api_base=api_base, location=location), req, raw, stream=stream)
    assert call.method == "POST" and call.url == url


def test_default_bases_by_location() -> None:
    assert default_base("us-east5") == "https://us-east5-aiplatform.googleapis.com"
    assert default_base("global") == "https://aiplatform.googleapis.com"
    assert default_base("eu") == "https://aiplatform.eu.rep.googleapis.com"
    assert default_base("us") == "https://aiplatform.us.rep.googleapis.com"


def test_api_version_option_and_full_resource_models() -> None:
    req, raw = chat()
    call = ADAPTER.chat_call(dep(api_version="v1beta1"), req, raw, stream=False)
    assert call.url.startswith("https://us-central1-aiplatform.googleapis.com/v1beta1/projects/my-proj/")
    tuned = "projects/my-proj/locations/us-central1/endpoints/1234567890"
    call = ADAPTER.chat_call(dep(model=tuned), req, raw, stream=False)
    assert call.url == f"https://us-central1-aiplatform.googleapis.com/v1/{tuned}:generateContent"


def test_no_api_key_header_even_when_one_is_configured_and_custom_headers_kept() -> None:
    d = Deployment(
        name="g@vertex",
        provider="vertex",
        model="gemini-2.5-flash",
        api_key="AIza-not-for-vertex",
        headers={"x-goog-user-project": "billing-proj"},
        options={"project": "my-proj"},
    )
    req, raw = chat()
    headers = ADAPTER.chat_call(d, req, raw, stream=False).headers
    assert headers == {"content-type": "application/json", "x-goog-user-project": "billing-proj"}


def test_body_is_the_gemini_body() -> None:
    req, raw = chat(
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi"}],
        max_tokens=50,
        temperature=0.2,
        stop=["END"],
    )
    vertex_body = json.loads(ADAPTER.chat_call(dep(), req, raw, stream=False).body)
    gemini_dep = Deployment(name="g", provider="gemini", model="gemini-2.5-flash", api_key="k")
    gemini_body = json.loads(GeminiAdapter().chat_call(gemini_dep, req, raw, stream=False).body)
    assert vertex_body == gemini_body
    assert vertex_body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert vertex_body["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.2, "stopSequences": ["END"]}


def test_gemini_options_still_apply() -> None:
    d = dep(safety_settings=[{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}])
    req, raw = chat()
    body = json.loads(ADAPTER.chat_call(d, req, raw, stream=False).body)
    assert body["safetySettings"] == [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "options"),  # project is required
        ({"project": "p", "location": "US Central"}, "options.location"),
        ({"project": "p", "api_key_header": "x"}, "options.api_key_header"),
        ({"project": "p", "api_version": "beta"}, "options.api_version"),
    ],
)
def test_options_are_checked_at_load(options: dict[str, Any], key: str) -> None:
    with pytest.raises(AdapterConfigError) as info:
        bind_options("vertex", options)
    assert info.value.key == key


def test_answer_and_stream_parse_like_gemini() -> None:
    answer = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hi there"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7},
        "modelVersion": "gemini-2.5-flash",
        "createTime": "2025-06-01T10:00:00.000000Z",
        "responseId": "abc",
    }
    req, _ = chat()
    completion = ADAPTER.parse_chat(dep(), req, json.dumps(answer).encode())
    assert completion.body["choices"][0]["message"]["content"] == "Hi there"
    assert completion.usage.prompt == 4 and completion.usage.completion == 3
    translator = ADAPTER.stream_translator(dep(), req)
    chunks = translator.feed(SSEEvent(json.dumps(answer).encode()))
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if isinstance(c, dict) and c.get("choices")]
    assert "Hi there" in texts and translator.usage.completion == 3


# ----------------------------------------------------------------------------- embeddings (:predict)


def test_embeddings_call_is_predict() -> None:
    req = EmbeddingRequest(model="e", input=["alpha", "beta"], dimensions=256)
    call = ADAPTER.embeddings_call(dep("text-embedding-005", task_type="RETRIEVAL_QUERY"), req, {})
    assert call.url.endswith("/publishers/google/models/text-embedding-005:predict")
    assert json.loads(call.body) == {
        "instances": [
            {"content": "alpha", "task_type": "RETRIEVAL_QUERY"},
            {"content": "beta", "task_type": "RETRIEVAL_QUERY"},
        ],
        "parameters": {"outputDimensionality": 256},
    }
    with pytest.raises(GatewayError) as info:
        ADAPTER.embeddings_call(dep(), EmbeddingRequest(model="e", input=[1, 2, 3]), {})
    assert info.value.status == 400


PREDICTIONS = {
    "predictions": [
        {"embeddings": {"values": [0.5, -0.25], "statistics": {"truncated": False, "token_count": 3}}},
        {"embeddings": {"values": [1.0, 0.0], "statistics": {"truncated": False, "token_count": 4}}},
    ],
    "metadata": {"billableCharacterCount": 9},
}


def test_parse_embeddings_float_and_base64() -> None:
    body = json.dumps(PREDICTIONS).encode()
    out = ADAPTER.parse_embeddings(dep(), EmbeddingRequest(model="e", input=["a", "b"]), body)
    assert [item["embedding"] for item in out.body["data"]] == [[0.5, -0.25], [1.0, 0.0]]
    assert out.body["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and out.usage.prompt == 7
    packed = ADAPTER.parse_embeddings(dep(), EmbeddingRequest(model="e", input="a", encoding_format="base64"), body)
    first = base64.b64decode(packed.body["data"][0]["embedding"])
    assert struct.unpack("<2f", first) == (0.5, -0.25)


@pytest.mark.parametrize("body", [{"predictions": None}, {"predictions": [{"embeddings": {}}]}, []])
def test_malformed_embeddings_are_server_errors(body: Any) -> None:
    with pytest.raises(Exception) as info:
        ADAPTER.parse_embeddings(dep(), EmbeddingRequest(model="e", input="a"), msgspec.json.encode(body))
    assert getattr(info.value, "kind", None) is ErrorKind.SERVER


# ----------------------------------------------------------------------------- errors (Vertex's own words)


def _google(code: int, status: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            _google(400, "INVALID_ARGUMENT", "Unable to submit request because it has an empty text parameter."),
            ErrorKind.BAD_REQUEST,
        ),
        (
            400,
            _google(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            ErrorKind.CONTEXT_LENGTH,
        ),
        (401, _google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), ErrorKind.AUTH),
        (
            403,
            _google(403, "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied on resource"),
            ErrorKind.AUTH,
        ),
        (404, _google(404, "NOT_FOUND", "Publisher Model `gemini-9` was not found"), ErrorKind.BAD_REQUEST),
        (
            429,
            _google(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/generate_content"),
            ErrorKind.RATE_LIMITED,
        ),
        (500, _google(500, "INTERNAL", "Internal error encountered."), ErrorKind.SERVER),
        (503, _google(503, "UNAVAILABLE", "The service is currently unavailable."), ErrorKind.OVERLOADED),
        (
            504,
            _google(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
            ErrorKind.TIMEOUT,
        ),
        (502, b"<html>Bad Gateway</html>", ErrorKind.SERVER),
    ],
)
def test_error_kinds(status: int, body: bytes, kind: ErrorKind) -> None:
    error = ADAPTER.error(status, {}, body)
    assert error.kind is kind and error.status == status
