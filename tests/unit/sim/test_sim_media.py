"""The simulator's media routes: transcriptions and translations of a multipart upload, speech as a WAV whose
length follows the text, images as PNGs or URLs; with the app's credentials, faults and request log."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from typing import Any

import pytest
from urllib3 import encode_multipart_formdata

from modelyard.sim import create_app
from modelyard.sim.app import SimApp
from modelyard.sim.media import claims, png, speech_wav, upload_seconds
from tests.unit.sim.sim_helpers import Result, asgi_call, fleet


def app(api_key: str | None = None) -> SimApp:
    return create_app(
        fleet(
            {"name": "w", "kind": "transcription"},
            {"name": "t", "kind": "speech"},
            {"name": "i", "kind": "image"},
            {"name": "chatty"},
            api_key=api_key,
        )
    )


def wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"\x01\x00" * int(rate * seconds))
    return out.getvalue()


def upload(sim: SimApp, path: str, fields: list[tuple[str, Any]], headers: dict[str, str] | None = None) -> Result:
    body, content_type = encode_multipart_formdata(fields)
    return asyncio.run(asgi_call(sim, "POST", path, body, {"content-type": content_type, **(headers or {})}))


def post(sim: SimApp, path: str, body: Any, headers: dict[str, str] | None = None) -> Result:
    return asyncio.run(asgi_call(sim, "POST", path, body, headers))


def test_claims_only_the_media_posts() -> None:
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech", "/v1/images/generations"):
        assert claims("POST", path)
        assert not claims("GET", path)
    assert not claims("POST", "/v1/rerank") and not claims("POST", "/v1/chat/completions")


def test_a_transcription_names_the_uploads_duration_and_reports_it_as_usage() -> None:
    sim = app()
    audio = wav(2.5)
    fields = [("model", "w"), ("prompt", "hint"), ("file", ("a.wav", audio, "audio/wav"))]
    result = upload(sim, "/v1/audio/transcriptions", fields)
    assert result.status == 200
    answer = result.json()
    assert answer["text"].startswith(f"Transcribed 2.50 seconds of audio ({len(audio)} bytes, ")
    assert answer["text"].endswith("Prompt: hint")
    assert answer["usage"] == {"type": "duration", "seconds": 3}
    again = upload(sim, "/v1/audio/transcriptions", fields)
    assert again.json() == answer  # deterministic
    recorded = sim.received.snapshot("w")[-1]
    assert recorded["path"] == "/v1/audio/transcriptions"
    summary = json.loads(recorded["body"])
    assert summary["fields"] == {"model": "w", "prompt": "hint"}
    assert summary["file"]["bytes"] == len(audio) and summary["file"]["filename"] == "a.wav"


@pytest.mark.parametrize(
    ("fmt", "content_type", "check"),
    [
        ("text", "text/plain; charset=utf-8", lambda body: body.startswith(b"Translated 1.00 seconds")),
        ("srt", "text/plain; charset=utf-8", lambda body: body.startswith(b"1\n00:00:00,000 --> 00:00:01,000\n")),
        ("vtt", "text/plain; charset=utf-8", lambda body: body.startswith(b"WEBVTT\n\n00:00:00.000 --> 00:00:01.000")),
        ("verbose_json", "application/json", lambda body: json.loads(body)["duration"] == 1.0),
    ],
)
def test_translation_formats(fmt: str, content_type: str, check: Any) -> None:
    fields = [("model", "w"), ("response_format", fmt), ("file", ("a.wav", wav(1.0), "audio/wav"))]
    result = upload(app(), "/v1/audio/translations", fields)
    assert result.status == 200
    assert result.headers["content-type"] == content_type
    assert check(result.body)


def test_a_non_wav_upload_is_timed_by_its_size() -> None:
    assert upload_seconds(b"\x00" * 32_000) == 2.0
    assert upload_seconds(wav(0.5)) == 0.5


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ([("model", "w")], 400),  # no file
        ([("model", "chatty"), ("file", ("a.wav", b"x", "audio/wav"))], 400),  # not a transcription model
        ([("model", "nope"), ("file", ("a.wav", b"x", "audio/wav"))], 404),
        ([("model", "w"), ("response_format", "mp4"), ("file", ("a.wav", b"x", "audio/wav"))], 400),
    ],
)
def test_transcription_refusals(fields: list[tuple[str, Any]], status: int) -> None:
    result = upload(app(), "/v1/audio/transcriptions", fields)
    assert result.status == status
    assert "error" in result.json()


def test_a_body_that_is_not_a_form_is_400() -> None:
    result = post(app(), "/v1/audio/transcriptions", b"{}", {"content-type": "application/json"})
    assert result.status == 400


def test_speech_is_a_wav_of_fifty_milliseconds_a_character() -> None:
    sim = app()
    result = post(sim, "/v1/audio/speech", {"model": "t", "input": "x" * 40, "voice": "alloy"})
    assert result.status == 200
    assert result.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(result.body)) as audio:
        assert audio.getnframes() / audio.getframerate() == pytest.approx(2.0)
    assert result.body == speech_wav("x" * 40)
    assert json.loads(sim.received.snapshot("t")[-1]["body"])["input"] == "x" * 40
    assert post(sim, "/v1/audio/speech", {"model": "t", "voice": "alloy"}).status == 400
    assert post(sim, "/v1/audio/speech", {"model": "i", "input": "x", "voice": "alloy"}).status == 400


def test_images_are_pngs_or_urls_with_gpt_image_usage() -> None:
    sim = app()
    result = post(sim, "/v1/images/generations", {"model": "i", "prompt": "a red fox", "n": 2})
    assert result.status == 200
    answer = result.json()
    assert len(answer["data"]) == 2
    first = base64.b64decode(answer["data"][0]["b64_json"])
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and first != base64.b64decode(answer["data"][1]["b64_json"])
    assert answer["usage"]["output_tokens"] == 32
    urls = post(sim, "/v1/images/generations", {"model": "i", "prompt": "p", "response_format": "url"}).json()
    assert urls["data"][0]["url"].startswith("https://sim.invalid/images/")
    for bad in ({"model": "i", "prompt": "p", "n": 0}, {"model": "i", "prompt": "p", "n": True}, {"model": "i"}):
        assert post(sim, "/v1/images/generations", bad).status == 400


def test_png_is_well_formed() -> None:
    image = png(b"\x10\x20\x30", size=2)
    assert image[12:16] == b"IHDR" and image.endswith(b"IEND\xaeB`\x82")


def test_credentials_are_asked_for() -> None:
    sim = app(api_key="sk-sim")
    body = {"model": "t", "input": "x", "voice": "v"}
    assert post(sim, "/v1/audio/speech", body).status == 401
    assert post(sim, "/v1/audio/speech", body, {"authorization": "Bearer sk-sim"}).status == 200


@pytest.mark.parametrize(("fault", "status"), [("rate_limit", 429), ("server_error", 500), ("unavailable", 503)])
def test_status_faults(fault: str, status: int) -> None:
    result = post(app(), "/v1/images/generations", {"model": "i", "prompt": "p"}, {"x-sim-fault": fault})
    assert result.status == status


def test_reset_and_malformed_faults() -> None:
    sim = app()
    assert post(sim, "/v1/audio/speech", {"model": "t", "input": "x", "voice": "v"}, {"x-sim-fault": "reset"}).aborted
    cut = post(sim, "/v1/images/generations", {"model": "i", "prompt": "p"}, {"x-sim-fault": "malformed"})
    assert cut.status == 200
    with pytest.raises(ValueError):
        json.loads(cut.body)
