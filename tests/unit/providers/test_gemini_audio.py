"""Audio transcription and translation through Gemini: OpenAI's `/v1/audio/*` upload as a generateContent
call with an inline audio part and an instruction, and Gemini's answer back as `{"text": ...}`."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from modelyard.config.model import Deployment
from modelyard.providers.base import discover
from modelyard.providers.gemini import GeminiAdapter
from modelyard.providers.gemini_audio import audio_mime, instruction
from modelyard.schema.chat import Usage
from modelyard.schema.endpoints import EndpointRequest, UploadedFile
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

API_KEY = "AIzaSyTEST-audio-not-a-real-key-0123"
ADAPTER = GeminiAdapter()
WAV = b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00\x02\x00\x10\x00data\x00\x00"


def dep(**kw: Any) -> Deployment:
    return Deployment(
        name="flash-audio", provider="gemini", model="gemini-2.5-flash", api_key=API_KEY, kind="transcription", **kw
    )


def upload(content_type: str = "audio/wav", filename: str = "hello.wav", data: bytes = WAV) -> UploadedFile:
    return UploadedFile(field="file", filename=filename, content_type=content_type, data=data)


def request(endpoint: str = "audio/transcriptions", file: UploadedFile | None = None, **fields: Any) -> EndpointRequest:
    return EndpointRequest(
        endpoint=endpoint,  # type: ignore[arg-type]
        model="whisper-like",
        fields={"model": "whisper-like", **fields},
        file=file if file is not None else upload(),
        units=Usage(audio_seconds=12.5),
    )


def sent(req: EndpointRequest, d: Deployment | None = None) -> tuple[str, dict[str, str], dict[str, Any]]:
    call = ADAPTER.endpoint_call(d or dep(), req)
    assert call.method == "POST"
    return call.url, call.headers, json.loads(call.body)


def answer(text: str, prompt: int = 410, output: int = 9) -> bytes:
    return json.dumps(
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": prompt,
                "candidatesTokenCount": output,
                "totalTokenCount": prompt + output,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": prompt - 10}],
            },
            "modelVersion": "gemini-2.5-flash",
        }
    ).encode()


def test_the_adapter_serves_audio_endpoints() -> None:
    caps = discover(ADAPTER)
    assert caps.endpoints is ADAPTER
    assert ADAPTER.endpoints == frozenset({"audio/transcriptions", "audio/translations"})


def test_transcription_is_generate_content_with_an_inline_audio_part() -> None:
    url, headers, body = sent(request())
    assert url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert headers["x-goog-api-key"] == API_KEY
    parts = body["contents"][0]["parts"]
    assert body["contents"][0]["role"] == "user"
    assert parts[0]["text"].startswith("Transcribe this audio verbatim.")
    assert parts[1] == {"inlineData": {"mimeType": "audio/wav", "data": base64.b64encode(WAV).decode()}}
    assert len(parts) == 2
    assert "generationConfig" not in body


def test_translation_asks_for_english() -> None:
    _, _, body = sent(request("audio/translations"))
    assert body["contents"][0]["parts"][0]["text"].startswith("Translate this audio into English.")


def test_language_prompt_and_temperature_are_folded_in() -> None:
    _, _, body = sent(request(language="de", prompt="Names: Ångström, Zürich.", temperature="0.2"))
    text = body["contents"][0]["parts"][0]["text"]
    assert "ISO-639-1 code 'de'" in text
    assert "Names: Ångström, Zürich." in text
    assert body["generationConfig"] == {"temperature": 0.2}


def test_the_deployment_options_still_apply() -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    url, _, body = sent(request(), dep(api_base="http://127.0.0.1:9", options={"safety_settings": safety}))
    assert url == "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:generateContent"
    assert body["safetySettings"] == safety


@pytest.mark.parametrize(
    ("endpoint", "language", "expected"),
    [
        ("audio/transcriptions", None, ["Transcribe this audio verbatim.", "Answer with the text only"]),
        ("audio/translations", "fr", ["Translate this audio into English.", "Answer with the text only"]),
    ],
)
def test_instruction(endpoint: str, language: str | None, expected: list[str]) -> None:
    text = instruction(endpoint, {"language": language} if language else {})
    for line in expected:
        assert line in text
    assert "ISO-639-1" not in text  # no language named, or a translation (always into English)


@pytest.mark.parametrize(
    ("content_type", "filename", "mime"),
    [
        ("audio/wav", "a.wav", "audio/wav"),
        ("audio/x-wav", "a.wav", "audio/wav"),
        ("audio/mpeg", "a.mp3", "audio/mp3"),
        ("audio/flac; rate=16000", "a", "audio/flac"),
        ("audio/ogg", "voice.opus", "audio/ogg"),
        ("video/mp4", "clip.mp4", "video/mp4"),
        ("application/octet-stream", "memo.m4a", "audio/aac"),
        ("application/octet-stream", "dir/talk.MP3", "audio/mp3"),
        ("", "x.webm", "audio/webm"),
    ],
)
def test_audio_mime(content_type: str, filename: str, mime: str) -> None:
    assert audio_mime(upload(content_type, filename)) == mime


def test_an_upload_of_unknown_type_is_a_400_on_file() -> None:
    with pytest.raises(GatewayError) as caught:
        ADAPTER.endpoint_call(dep(), request(file=upload("application/octet-stream", "notes.txt")))
    assert caught.value.status == 400
    assert caught.value.param == "file"


def test_no_file_is_a_400() -> None:
    req = EndpointRequest(endpoint="audio/transcriptions", model="m", fields={}, file=None)
    with pytest.raises(GatewayError) as caught:
        ADAPTER.endpoint_call(dep(), req)
    assert caught.value.param == "file"


@pytest.mark.parametrize("fmt", ["srt", "vtt", "verbose_json", "diarized_json"])
def test_timed_formats_are_a_400_on_response_format(fmt: str) -> None:
    with pytest.raises(GatewayError) as caught:
        ADAPTER.endpoint_call(dep(), request(response_format=fmt))
    assert caught.value.status == 400
    assert caught.value.param == "response_format"


@pytest.mark.parametrize(("value", "param"), [("hot", "temperature"), ("3", "temperature")])
def test_bad_temperature_is_a_400(value: str, param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        ADAPTER.endpoint_call(dep(), request(temperature=value))
    assert caught.value.param == param


def test_other_endpoints_are_refused() -> None:
    with pytest.raises(GatewayError) as caught:
        ADAPTER.endpoint_call(dep(), request("audio/speech"))
    assert "/v1/audio/speech" in caught.value.message


def test_json_answer_is_openais_transcription_shape_with_token_usage() -> None:
    done = ADAPTER.parse_endpoint(dep(), request(), answer(" Hello there, world.\n"), {})
    assert done.body == {
        "text": "Hello there, world.",
        "usage": {"type": "tokens", "input_tokens": 410, "output_tokens": 9, "total_tokens": 419},
    }
    assert done.usage == Usage(prompt=410, completion=9, audio_seconds=12.5)
    assert done.native is None
    assert done.model == "gemini-2.5-flash"


def test_text_answer_is_the_bare_text() -> None:
    done = ADAPTER.parse_endpoint(dep(), request(response_format="text"), answer("Bonjour."), {})
    assert done.native == b"Bonjour."
    assert done.media_type == "text/plain"
    assert done.usage.prompt == 410


def test_a_withheld_transcript_is_a_content_filter_error() -> None:
    blocked = json.dumps({"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]}).encode()
    with pytest.raises(ProviderError) as caught:
        ADAPTER.parse_endpoint(dep(), request(), blocked, {})
    assert caught.value.kind is ErrorKind.CONTENT_FILTER


def test_silence_is_an_empty_transcript() -> None:
    done = ADAPTER.parse_endpoint(dep(), request(), answer("", prompt=20, output=0), {})
    assert done.body["text"] == ""


def test_a_body_without_candidates_is_a_server_error() -> None:
    with pytest.raises(ProviderError) as caught:
        ADAPTER.parse_endpoint(dep(), request(), b'{"nothing": 1}', {})
    assert caught.value.kind is ErrorKind.SERVER


def test_errors_are_geminis() -> None:
    body = json.dumps({"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}})
    err = ADAPTER.error(429, {"retry-after": "3"}, body.encode())
    assert err.kind is ErrorKind.RATE_LIMITED
