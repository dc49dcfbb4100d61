"""The checks of the audio, image and rerank requests: each refusal names its `param`; what passes is what
the endpoints measure (characters to speak, images asked for, rerank documents as text)."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.schema.errors import GatewayError
from modelyard.server.validation import (
    endpoint_model,
    finite_number,
    validate_image_generation,
    validate_rerank,
    validate_speech,
    validate_transcription_fields,
    whole_value,
)


def refused(check: Any, raw: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        check(raw)
    assert caught.value.status == 400
    return caught.value


SPEECH = {"model": "tts", "input": "Hello there", "voice": "alloy"}


def test_speech_passes_with_its_text() -> None:
    assert validate_speech(SPEECH) == "Hello there"
    assert validate_speech({**SPEECH, "voice": {"id": "voice_123"}, "speed": 4, "response_format": "wav"})


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"input": None}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["a"]}, "input"),
        ({"input": "x" * 4097}, "input"),
        ({"voice": None}, "voice"),
        ({"voice": 3}, "voice"),
        ({"voice": {"id": 3}}, "voice"),
        ({"voice": ""}, "voice"),
        ({"response_format": "mp4"}, "response_format"),
        ({"speed": 0.2}, "speed"),
        ({"speed": -1}, "speed"),
        ({"speed": 4.01}, "speed"),
        ({"speed": float("nan")}, "speed"),
        ({"speed": float("inf")}, "speed"),
        ({"speed": True}, "speed"),
        ({"speed": "1.0"}, "speed"),
        ({"instructions": 5}, "instructions"),
        ({"stream_format": "sse"}, "stream_format"),
    ],
)
def test_speech_refusals(change: dict[str, Any], param: str) -> None:
    raw = {**SPEECH, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    assert refused(validate_speech, raw).param == param


IMAGE = {"model": "image", "prompt": "a fox"}


@pytest.mark.parametrize(("n", "expected"), [(None, 1), (1, 1), (10, 10)])
def test_images_count_n(n: Any, expected: int) -> None:
    raw = IMAGE if n is None else {**IMAGE, "n": n}
    assert validate_image_generation(raw) == expected


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"n": 0}, "n"),
        ({"n": -2}, "n"),
        ({"n": 11}, "n"),
        ({"n": 2.0}, "n"),
        ({"n": "2"}, "n"),
        ({"n": True}, "n"),
        ({"n": float("nan")}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"size": ["1024x1024"]}, "size"),
        ({"output_compression": 101}, "output_compression"),
        ({"stream": True}, "stream"),
    ],
)
def test_image_refusals(change: dict[str, Any], param: str) -> None:
    assert refused(validate_image_generation, {**IMAGE, **change}).param == param


def test_a_missing_prompt_is_missing() -> None:
    error = refused(validate_image_generation, {"model": "image"})
    assert error.param == "prompt" and error.code == "missing_required_parameter"


RERANK = {"model": "rerank", "query": "q", "documents": ["a", {"text": "b"}, {"title": "T", "body": "B"}]}


def test_rerank_documents_become_text() -> None:
    assert validate_rerank(RERANK) == ["a", "b", "title: T\nbody: B"]
    assert validate_rerank({**RERANK, "top_n": 1000, "return_documents": False, "max_tokens_per_doc": 512})


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"query": ""}, "query"),
        ({"query": {"text": "q"}}, "query"),
        ({"documents": []}, "documents"),
        ({"documents": "a"}, "documents"),
        ({"documents": [1]}, "documents"),
        ({"documents": [None]}, "documents"),
        ({"documents": [{}]}, "documents"),
        ({"documents": [{"text": 1}]}, "documents"),
        ({"documents": [["a"]]}, "documents"),
        ({"documents": ["d"] * 1001}, "documents"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": -1}, "top_n"),
        ({"top_n": 1.5}, "top_n"),
        ({"top_n": True}, "top_n"),
        ({"top_n": 1001}, "top_n"),
        ({"return_documents": "yes"}, "return_documents"),
        ({"max_tokens_per_doc": 0}, "max_tokens_per_doc"),
    ],
)
def test_rerank_refusals(change: dict[str, Any], param: str) -> None:
    assert refused(validate_rerank, {**RERANK, **change}).param == param


def test_missing_documents_are_missing() -> None:
    assert refused(validate_rerank, {"model": "r", "query": "q"}).code == "missing_required_parameter"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "mp4"}, "response_format"),
        ({"temperature": "nan"}, "temperature"),
        ({"temperature": "inf"}, "temperature"),
        ({"temperature": "1.5"}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"stream": "true"}, "stream"),
        ({"timestamp_granularities[]": ["word", "year"]}, "timestamp_granularities"),
        ({"prompt": "p" * 32_001}, "prompt"),
    ],
)
def test_transcription_field_refusals(fields: dict[str, Any], param: str) -> None:
    assert refused(validate_transcription_fields, fields).param == param


def test_transcription_fields_that_pass() -> None:
    validate_transcription_fields(
        {
            "model": "w",
            "temperature": "0.3",
            "response_format": "verbose_json",
            "stream": "false",
            "timestamp_granularities[]": ["word", "segment"],
            "language": "en",
        }
    )


@pytest.mark.parametrize("raw", [{}, {"model": ""}, {"model": 3}, {"model": "m" * 257}])
def test_the_model_is_a_short_non_empty_string(raw: dict[str, Any]) -> None:
    assert refused(endpoint_model, raw).param == "model"


def test_numbers_from_forms_and_json() -> None:
    assert finite_number("0.5", "t", 0, 1, form=True) == 0.5
    assert whole_value("7", "n", 1, 10, form=True) == 7
    for value in ("0.5", float("-inf"), None, [1]):
        with pytest.raises(GatewayError):
            finite_number(value, "t", 0, 1)
    for value in ("", " ", "1e3", "²"):
        with pytest.raises(GatewayError):
            whole_value(value, "n", 1, 10, form=True)
