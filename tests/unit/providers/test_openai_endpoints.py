"""The OpenAI adapter's non-chat endpoints, as pure translation: requests (JSON, and multipart with the boundary
in the Content-Type), answers (JSON, plain text, audio bytes, Jina/vLLM rerank into Cohere's shape), usage, and
every error status into its kind."""

from __future__ import annotations

import json
from typing import Any

import pytest
from python_multipart.multipart import MultipartParser, parse_options_header

from modelyard.config.model import Deployment
from modelyard.providers.base import discover
from modelyard.providers.openai import OpenAIAdapter
from modelyard.schema.chat import Usage
from modelyard.schema.endpoints import EndpointRequest, UploadedFile
from modelyard.schema.errors import ErrorKind, ProviderError

ADAPTER = OpenAIAdapter()
DEP = Deployment(
    name="d", provider="openai", model="whisper-1", api_base="https://api.example/v1/", api_key="sk-secret-123"
)
AUDIO = UploadedFile(field="file", filename="talk.wav", content_type="audio/wav", data=b"RIFF\x00\x01binary\r\n--x")


def request(endpoint: Any, fields: dict[str, Any], units: Usage | None = None, upload: bool = False) -> EndpointRequest:
    return EndpointRequest(
        endpoint=endpoint,
        model="client-name",
        fields={"model": "client-name", **fields},
        file=AUDIO if upload else None,
        units=units or Usage(),
    )


def parse_form(body: bytes, content_type: str) -> tuple[dict[str, list[str]], dict[str, tuple[str, str, bytes]]]:
    """(text fields, files) of a multipart body, read back with python-multipart."""
    _, params = parse_options_header(content_type)
    parts: list[tuple[dict[str, str], bytearray]] = []
    current = {"name": b"", "value": b""}

    def header_field(data: bytes, start: int, end: int) -> None:
        current["name"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        current["value"] += data[start:end]

    def header_end() -> None:
        parts[-1][0][current["name"].decode().lower()] = current["value"].decode()
        current["name"] = current["value"] = b""

    callbacks: Any = {
        "on_part_begin": lambda: parts.append(({}, bytearray())),
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
    }
    parser = MultipartParser(params[b"boundary"], callbacks)
    parser.write(body)
    parser.finalize()
    fields: dict[str, list[str]] = {}
    files: dict[str, tuple[str, str, bytes]] = {}
    for headers, value in parts:
        _, disposition = parse_options_header(headers["content-disposition"])
        name = disposition[b"name"].decode()
        if b"filename" in disposition:
            files[name] = (disposition[b"filename"].decode(), headers.get("content-type", ""), bytes(value))
        else:
            fields.setdefault(name, []).append(value.decode())
    return fields, files


def test_the_adapter_discovers_the_endpoints_capability() -> None:
    found = discover(ADAPTER)
    assert found.endpoints is ADAPTER
    assert ADAPTER.endpoints == {
        "audio/transcriptions",
        "audio/translations",
        "audio/speech",
        "images/generations",
        "rerank",
    }


@pytest.mark.parametrize("endpoint", ["audio/transcriptions", "audio/translations"])
def test_an_upload_is_a_multipart_form_with_the_deployment_model_and_the_file_as_sent(endpoint: str) -> None:
    fields = {"language": "en", "temperature": "0.2", "timestamp_granularities[]": ["word", "segment"]}
    call = ADAPTER.endpoint_call(DEP, request(endpoint, fields, upload=True))
    assert call.method == "POST"
    assert call.url == f"https://api.example/v1/{endpoint}"
    assert call.headers["Authorization"] == "Bearer sk-secret-123"
    content_type = call.headers["Content-Type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    assert "application/json" not in call.headers.values()
    sent, files = parse_form(call.body, content_type)
    assert sent == {
        "model": ["whisper-1"],
        "language": ["en"],
        "temperature": ["0.2"],
        "timestamp_granularities[]": ["word", "segment"],
    }
    assert files == {"file": ("talk.wav", "audio/wav", AUDIO.data)}


@pytest.mark.parametrize(
    ("endpoint", "fields", "expected"),
    [
        (
            "audio/speech",
            {"input": "hello", "voice": "alloy", "speed": 1.5},
            {"model": "whisper-1", "input": "hello", "voice": "alloy", "speed": 1.5},
        ),
        (
            "images/generations",
            {"prompt": "a cat", "n": 2, "size": "1024x1024", "modelyard": {"tags": ["x"]}},
            {"model": "whisper-1", "prompt": "a cat", "n": 2, "size": "1024x1024"},
        ),
        (
            "rerank",
            {"query": "q", "documents": ["a", "b"], "top_n": 1, "return_documents": True, "max_tokens_per_doc": 9},
            {"model": "whisper-1", "query": "q", "documents": ["a", "b"], "top_n": 1},
        ),
        ("rerank", {"query": "q", "documents": ["a"]}, {"model": "whisper-1", "query": "q", "documents": ["a"]}),
    ],
)
def test_json_endpoints(endpoint: str, fields: dict[str, Any], expected: dict[str, Any]) -> None:
    call = ADAPTER.endpoint_call(DEP, request(endpoint, fields))
    assert call.url == f"https://api.example/v1/{endpoint}"
    assert call.headers["Content-Type"] == "application/json"
    assert json.loads(call.body) == expected


class Moved(OpenAIAdapter):
    """A subclass that moves URLs and credentials (as Azure's does) gets the endpoints with its own seam."""

    def url(self, dep: Deployment, path: str) -> str:
        return f"https://moved.example/deployments/{dep.name}/{path}?api-version=1"

    def auth_headers(self, dep: Deployment) -> dict[str, str]:
        return {"Content-Type": "application/json", "api-key": "k"}


def test_a_subclass_seam_moves_the_url_and_credential_of_every_endpoint() -> None:
    speech = Moved().endpoint_call(DEP, request("audio/speech", {"input": "x", "voice": "v"}))
    assert speech.url == "https://moved.example/deployments/d/audio/speech?api-version=1"
    assert speech.headers["api-key"] == "k" and "Authorization" not in speech.headers
    upload = Moved().endpoint_call(DEP, request("audio/transcriptions", {}, upload=True))
    assert upload.headers["api-key"] == "k"
    assert upload.headers["Content-Type"].startswith("multipart/form-data; boundary=")


UNITS = Usage(audio_seconds=61.5)


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (b'{"text": "hi", "usage": {"type": "duration", "seconds": 62}}', Usage(audio_seconds=62)),
        (
            b'{"text": "hi", "usage": {"type": "tokens", "input_tokens": 30, "output_tokens": 5, "total_tokens": 35}}',
            Usage(prompt=30, completion=5, audio_seconds=61.5),
        ),
        (b'{"text": "hi", "duration": 60.25, "segments": []}', Usage(audio_seconds=60.25)),
        (b'{"text": "hi"}', Usage(audio_seconds=61.5)),
        (b'{"text": "hi", "usage": {"type": "duration", "seconds": -3}}', Usage(audio_seconds=61.5)),
    ],
)
def test_transcription_usage_is_the_providers_else_the_measured_seconds(body: bytes, usage: Usage) -> None:
    done = ADAPTER.parse_endpoint(DEP, request("audio/transcriptions", {}, UNITS, upload=True), body, {})
    assert done.body["text"] == "hi"
    assert done.usage == usage
    assert done.native is None and done.media_type is None


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_transcriptions_go_back_as_text(fmt: str) -> None:
    req = request("audio/translations", {"response_format": fmt}, UNITS, upload=True)
    done = ADAPTER.parse_endpoint(DEP, req, b"1\n00:00 --> 00:01\nhello\n", {"content-type": "text/plain"})
    assert done.native == b"1\n00:00 --> 00:01\nhello\n"
    assert done.media_type == "text/plain"
    assert done.usage == Usage(audio_seconds=61.5)


@pytest.mark.parametrize(
    ("fields", "headers", "media_type"),
    [
        ({"response_format": "wav"}, {"Content-Type": "audio/wav"}, "audio/wav"),
        ({"response_format": "opus"}, {}, "audio/ogg"),
        ({}, {"content-type": "application/octet-stream"}, "audio/mpeg"),
        ({"response_format": "flac"}, {"content-type": "audio/flac; rate=44100"}, "audio/flac"),
    ],
)
def test_speech_is_audio_bytes_billed_by_characters(
    fields: dict[str, Any], headers: dict[str, str], media_type: str
) -> None:
    req = request("audio/speech", {"input": "hello", "voice": "v", **fields}, Usage(characters=5))
    done = ADAPTER.parse_endpoint(DEP, req, b"\x00audio", headers)
    assert done.native == b"\x00audio" and done.media_type == media_type
    assert done.usage == Usage(characters=5)


@pytest.mark.parametrize(("body", "headers"), [(b"", {}), (b'{"error": "x"}', {"content-type": "application/json"})])
def test_speech_that_is_not_audio_is_a_server_error(body: bytes, headers: dict[str, str]) -> None:
    with pytest.raises(ProviderError) as caught:
        ADAPTER.parse_endpoint(DEP, request("audio/speech", {"input": "x", "voice": "v"}), body, headers)
    assert caught.value.kind is ErrorKind.SERVER


def test_images_count_what_came_back_and_the_tokens_gpt_image_reports() -> None:
    body = json.dumps(
        {
            "created": 1,
            "data": [{"b64_json": "AA=="}, {"b64_json": "AQ=="}],
            "usage": {"input_tokens": 12, "output_tokens": 4160, "total_tokens": 4172},
        }
    ).encode()
    done = ADAPTER.parse_endpoint(
        DEP, request("images/generations", {"prompt": "p", "n": 3}, Usage(images=3)), body, {}
    )
    assert done.usage == Usage(prompt=12, completion=4160, images=2)
    assert done.body["data"][1] == {"b64_json": "AQ=="}
    plain = ADAPTER.parse_endpoint(
        DEP, request("images/generations", {"prompt": "p"}), b'{"data": [{"url": "https://x/1.png"}]}', {}
    )
    assert plain.usage == Usage(images=1) and isinstance(plain.body["created"], int)


def test_rerank_answers_in_cohere_v2_shape_sorted_and_cut_to_top_n() -> None:
    req = request(
        "rerank",
        {"query": "q", "documents": ["a", "b", "c"], "top_n": 2, "return_documents": True},
        Usage(search_units=1),
    )
    body = json.dumps(
        {
            "id": "rr-1",
            "model": "bge",
            "usage": {"total_tokens": 40},
            "results": [
                {"index": 0, "relevance_score": 0.1},
                {"index": 2, "relevance_score": 0.9, "document": {"text": "c"}},
                {"index": 1, "relevance_score": 0.5},
            ],
        }
    ).encode()
    done = ADAPTER.parse_endpoint(DEP, req, body, {})
    assert done.body == {
        "id": "rr-1",
        "results": [
            {"index": 2, "relevance_score": 0.9, "document": {"text": "c"}},
            {"index": 1, "relevance_score": 0.5, "document": {"text": "b"}},
        ],
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"search_units": 1, "input_tokens": 40},  # as the Jina adapter bills the same wire
            "tokens": {"input_tokens": 40, "output_tokens": 0},
        },
    }
    assert done.usage == Usage(prompt=40, search_units=1)
    assert done.model == "bge"


@pytest.mark.parametrize(
    "body",
    [
        b'{"results": [{"index": 5, "relevance_score": 0.5}]}',
        b'{"results": [{"index": -1, "relevance_score": 0.5}]}',
        b'{"results": [{"index": true, "relevance_score": 0.5}]}',
        b'{"results": [{"index": 0, "relevance_score": "high"}]}',
        b'{"results": [{"index": 0}]}',
        b'{"results": [3]}',
        b'{"data": []}',
        b"not json",
        b"[1]",
    ],
)
def test_a_malformed_rerank_answer_is_a_server_error(body: bytes) -> None:
    req = request("rerank", {"query": "q", "documents": ["a", "b"]}, Usage(search_units=1))
    with pytest.raises(ProviderError) as caught:
        ADAPTER.parse_endpoint(DEP, req, body, {})
    assert caught.value.kind is ErrorKind.SERVER


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("images/generations", b'{"data": []}'),
        ("images/generations", b'{"data": "x"}'),
        ("audio/transcriptions", b'{"segments": []}'),
        ("audio/transcriptions", b"<html>"),
    ],
)
def test_malformed_json_answers_are_server_errors(endpoint: str, body: bytes) -> None:
    with pytest.raises(ProviderError) as caught:
        ADAPTER.parse_endpoint(DEP, request(endpoint, {"prompt": "p"}, upload=True), body, {})
    assert caught.value.kind is ErrorKind.SERVER


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            b'{"error": {"message": "Invalid file format.", "type": "invalid_request_error"}}',
            ErrorKind.BAD_REQUEST,
        ),
        (401, b'{"error": {"message": "Incorrect API key"}}', ErrorKind.AUTH),
        (429, b'{"error": {"message": "slow down", "type": "rate_limit_exceeded"}}', ErrorKind.RATE_LIMITED),
        (
            400,
            b'{"error": {"message": "rejected", "code": "content_policy_violation"}}',
            ErrorKind.CONTENT_FILTER,
        ),
        (413, b'{"error": {"message": "Maximum content size limit exceeded"}}', ErrorKind.CONTEXT_LENGTH),
        (500, b"oops", ErrorKind.SERVER),
        (503, b'{"error": "overloaded"}', ErrorKind.OVERLOADED),
    ],
)
def test_error_statuses_map_to_kinds(status: int, body: bytes, kind: ErrorKind) -> None:
    assert ADAPTER.error(status, {"retry-after": "2"}, body).kind is kind
