"""Audio through the real gateway, with the official `openai` SDK as the client:

- an audio chat prompt (`input_audio` part, a real WAV) routed past a text-only candidate to an audio-capable
  Gemini one, the explanation saying why, and Gemini receiving the audio as an `inlineData` part;
- an OpenAI deployment with `audio` receiving the `input_audio` part as sent;
- a model with no audio-capable candidate answering 400 naming the capability;
- `/v1/audio/transcriptions` and `/translations` served by a `provider: gemini, kind: transcription`
  deployment as a generateContent call with the upload inline.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from modelyard.testing.loopback import LoopbackGuard

MASTER = "sk-master-audio-0123456789"

CONFIG = """
deployments:
  - {{name: text@openai, provider: openai, model: sim-medium, api_base: "{sim}/v1", api_key: sk-test-openai-secret,
     capabilities: [tools, streaming], price: {{input: 0.1, output: 0.4}}}}
  - {{name: ears@gemini, provider: gemini, model: sim-small, api_base: "{sim}", api_key: sk-test-gemini-secret,
     capabilities: [audio, tools, streaming], price: {{input: 0.3, output: 2.5}}}}
  - {{name: ears@openai, provider: openai, model: sim-large, api_base: "{sim}/v1", api_key: sk-test-openai-secret,
     capabilities: [audio, streaming], price: {{input: 2.5, output: 10}}}}
  - {{name: deaf@anthropic, provider: anthropic, model: sim-medium, api_base: "{sim}", api_key: sk-test-anth-secret,
     capabilities: [tools, vision, streaming], price: {{input: 3, output: 15}}}}
  - {{name: scribe@gemini, provider: gemini, kind: transcription, model: sim-small, api_base: "{sim}",
     api_key: sk-test-gemini-secret, price: {{input: 0.3, output: 2.5}}}}
models:
  listen: {{candidates: [text@openai, ears@gemini]}}
  listen-openai: {{candidates: [ears@openai]}}
  deaf: {{candidates: [text@openai, deaf@anthropic]}}
  scribe: {{candidates: [scribe@gemini]}}
access: {{master_key: {master}, refresh_s: 0}}
"""


def tone_wav(seconds: float = 0.5, rate: int = 8000, hz: float = 440.0) -> bytes:
    """A real mono 16-bit PCM WAV: `seconds` of a sine tone, made with the stdlib."""
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / rate))) for i in range(int(rate * seconds))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(frames)
    return out.getvalue()


WAV = tone_wav()
WAV_B64 = base64.b64encode(WAV).decode()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=7, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimServer) -> Iterator[BackgroundServer]:
    text = CONFIG.format(sim=sim.url.rstrip("/"), master=MASTER)
    with BackgroundServer(create_app(parse_config(text, source="audio.yaml"))) as server:
        yield server


@pytest.fixture
def client(gateway: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0, timeout=30)


def received(sim: SimServer, model: str) -> list[dict[str, Any]]:
    log = httpx.get(f"{sim.url.rstrip('/')}/_sim/requests/{model}", timeout=10).json()["requests"]
    return list(log)


def audio_prompt(text: str = "What is in this recording?") -> list[Any]:
    content = [
        {"type": "text", "text": text},
        {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "wav"}},
    ]
    return [{"role": "user", "content": content}]


# ============================================================================ audio chat


def test_audio_chat_skips_the_text_only_candidate_for_gemini(client: openai.OpenAI, sim: SimServer) -> None:
    before = len(received(sim, "sim-medium"))
    with LoopbackGuard() as guard:
        raw = client.chat.completions.with_raw_response.create(
            model="listen", messages=audio_prompt(), extra_headers={"x-modelyard-explain": "1"}
        )
    assert guard.outside() == []
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert raw.headers["x-modelyard-model"] == "ears@gemini"
    explain = raw.http_response.json()["modelyard"]["explain"]
    skipped = {c["deployment"]: c["reason"] for c in explain["candidates"] if c["decision"] == "skipped"}
    assert skipped == {"text@openai": "lacks capability audio"}
    chosen = [c["deployment"] for c in explain["candidates"] if c["decision"] == "chosen"]
    assert chosen == ["ears@gemini"]
    assert len(received(sim, "sim-medium")) == before  # the text-only model was never called

    gemini = received(sim, "sim-small")[-1]
    assert gemini["path"] == "/v1beta/models/sim-small:generateContent"
    parts = json.loads(gemini["body"])["contents"][0]["parts"]
    assert parts == [
        {"text": "What is in this recording?"},
        {"inlineData": {"mimeType": "audio/wav", "data": WAV_B64}},
    ]


def test_a_text_prompt_still_goes_to_the_first_candidate(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="listen", messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.headers["x-modelyard-model"] == "text@openai"


def test_streamed_audio_chat_goes_to_gemini_too(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="listen", messages=audio_prompt(), stream=True
    ) as response:
        assert response.headers["x-modelyard-model"] == "ears@gemini"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text


def test_an_openai_deployment_with_audio_gets_the_part_as_sent(client: openai.OpenAI, sim: SimServer) -> None:
    raw = client.chat.completions.with_raw_response.create(model="listen-openai", messages=audio_prompt("Hear this"))
    assert raw.headers["x-modelyard-model"] == "ears@openai"
    body = json.loads(received(sim, "sim-large")[-1]["body"])
    assert body["model"] == "sim-large"
    assert body["messages"] == audio_prompt("Hear this")


def test_no_audio_capable_candidate_is_a_400_naming_the_capability(client: openai.OpenAI, sim: SimServer) -> None:
    before = len(received(sim, "sim-medium"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="deaf", messages=audio_prompt())
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "unsupported_capability"
    assert "lacks capability audio" in error["message"]
    assert "text@openai" in error["message"] and "deaf@anthropic" in error["message"]
    assert len(received(sim, "sim-medium")) == before


# ============================================================================ transcription and translation


def test_transcription_through_gemini(client: openai.OpenAI, sim: SimServer) -> None:
    with LoopbackGuard() as guard:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="scribe", file=("hello.wav", WAV, "audio/wav"), language="en", prompt="Glossary: modelyard."
        )
    assert guard.outside() == []
    assert raw.headers["x-modelyard-model"] == "scribe@gemini"
    transcript = raw.parse()
    assert isinstance(transcript.text, str) and transcript.text
    assert transcript.text == transcript.text.strip()
    assert float(raw.headers["x-modelyard-cost-usd"]) > 0  # priced by Gemini's tokens

    upstream = received(sim, "sim-small")[-1]
    assert upstream["path"] == "/v1beta/models/sim-small:generateContent"
    parts = json.loads(upstream["body"])["contents"][0]["parts"]
    assert parts[0]["text"].startswith("Transcribe this audio verbatim.")
    assert "ISO-639-1 code 'en'" in parts[0]["text"]
    assert "Glossary: modelyard." in parts[0]["text"]
    assert parts[1] == {"inlineData": {"mimeType": "audio/wav", "data": WAV_B64}}
    assert "sk-test-gemini-secret" not in json.dumps(upstream["headers"])


def test_translation_through_gemini_as_text(client: openai.OpenAI, sim: SimServer) -> None:
    text = client.audio.translations.create(
        model="scribe", file=("note.mp3", WAV, "application/octet-stream"), response_format="text"
    )
    assert isinstance(text, str) and text.strip()
    parts = json.loads(received(sim, "sim-small")[-1]["body"])["contents"][0]["parts"]
    assert parts[0]["text"].startswith("Translate this audio into English.")
    assert parts[1]["inlineData"]["mimeType"] == "audio/mp3"  # named by the file, the upload said nothing


def test_a_timed_format_is_a_400_before_any_call(client: openai.OpenAI, sim: SimServer) -> None:
    before = len(received(sim, "sim-small"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="scribe", file=("a.wav", WAV, "audio/wav"), response_format="srt")
    assert "response_format" in str(caught.value)
    assert len(received(sim, "sim-small")) == before
