"""Audio, images and rerank through the real gateway to the simulator, with the official `openai` SDK as the
client (httpx for rerank, which the SDK has none of): the answers, the units billed (the cost header and the
spend row), and what the simulator received on the upstream side."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.accounting.spend import SpendRecord
from modelyard.config.loader import parse_config
from modelyard.server.app import Gateway
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from modelyard.testing.loopback import LoopbackGuard

MASTER = "sk-master-media-0123456789"

CONFIG = """
deployments:
  - {{name: whisper@sim, provider: openai, kind: transcription, model: sim-whisper, api_base: "{sim}/v1",
     api_key: sk-test-media-secret, price: {{audio_minute: 0.006}}}}
  - {{name: tts@sim, provider: openai, kind: speech, model: sim-tts, api_base: "{sim}/v1",
     price: {{characters: 15.0}}}}
  - {{name: image@sim, provider: openai, kind: image, model: sim-image, api_base: "{sim}/v1",
     price: {{image: 0.04}}}}
  - {{name: rerank@sim, provider: openai, kind: rerank, model: sim-rerank, api_base: "{sim}/v1",
     price: {{search_unit: 2.0}}}}
  - {{name: small@sim, provider: openai, model: sim-small, api_base: "{sim}/v1", price: {{input: 0.1, output: 0.4}}}}
models:
  whisper: {{candidates: [whisper@sim]}}
  tts: {{candidates: [tts@sim]}}
  image: {{candidates: [image@sim]}}
  rerank: {{candidates: [rerank@sim]}}
  chat: {{candidates: [small@sim]}}
access: {{master_key: {master}, refresh_s: 0}}
spend: {{store: "sqlite:///{store}", flush_interval_s: 0.05}}
"""

Served = tuple[BackgroundServer, Gateway, SimServer]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = tmp_path_factory.mktemp("media") / "spend.db"
    with SimServer(seed=3, instant=True) as sim:
        text = CONFIG.format(sim=sim.url, store=store, master=MASTER)
        gateway = create_app(parse_config(text, source="media.yaml"))
        with BackgroundServer(gateway) as server:
            yield server, gateway, sim


def client(served: Served, key: str = MASTER) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key=key, max_retries=0, timeout=30)


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    """A real mono 16-bit WAV of `seconds` of silence, made with the stdlib."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"\x00\x00" * int(rate * seconds))
    return out.getvalue()


def spend_row(served: Served, request_id: str) -> SpendRecord:
    server, gateway, _ = served
    services = gateway.services
    assert services is not None and services.spend is not None and server.loop is not None

    async def read() -> SpendRecord | None:
        assert services.spend is not None
        assert await services.spend.flush(10)
        return await services.store.get_spend(request_id)

    row = asyncio.run_coroutine_threadsafe(read(), server.loop).result(timeout=20)
    assert row is not None, "no spend row for the request"
    return row


def received(served: Served, model: str) -> list[dict[str, Any]]:
    sim = served[2]
    answer = httpx.get(f"{sim.url}/_sim/requests/{model}", timeout=10)
    assert answer.status_code == 200
    requests: list[dict[str, Any]] = answer.json()["requests"]
    return requests


def test_transcription_of_a_real_wav_is_billed_by_its_measured_minutes(served: Served) -> None:
    audio = wav_bytes(3.0)
    raw = client(served).audio.transcriptions.with_raw_response.create(
        model="whisper", file=("hello.wav", audio, "audio/wav"), language="en", prompt="names: Ada"
    )
    result = raw.parse()
    assert result.text.startswith("Transcribed 3.00 seconds of audio")
    assert "Prompt: names: Ada" in result.text
    expected = 3.0 / 60 * 0.006  # the simulator reports 3 whole seconds, as measured at the edge
    assert float(raw.headers["x-modelyard-cost-usd"]) == pytest.approx(expected, rel=1e-3)
    assert raw.headers["x-modelyard-model"] == "whisper@sim"
    row = spend_row(served, raw.headers["x-request-id"])
    assert row.deployment == "whisper@sim" and row.status == "ok"
    assert row.cost_usd == pytest.approx(expected, rel=1e-3)
    upstream = json.loads(received(served, "sim-whisper")[-1]["body"])
    assert upstream["fields"] == {"model": "sim-whisper", "language": "en", "prompt": "names: Ada"}
    assert upstream["file"]["filename"] == "hello.wav"
    assert upstream["file"]["bytes"] == len(audio)
    assert upstream["file"]["content_type"] == "audio/wav"


def test_translation_and_a_plain_text_answer(served: Served) -> None:
    sdk = client(served)
    translated = sdk.audio.translations.create(model="whisper", file=("clip.wav", wav_bytes(1.5), "audio/wav"))
    assert translated.text.startswith("Translated 1.50 seconds")
    text = sdk.audio.transcriptions.create(
        model="whisper", file=("clip.wav", wav_bytes(2.0), "audio/wav"), response_format="text"
    )
    assert isinstance(text, str) and text.startswith("Transcribed 2.00 seconds")
    verbose = sdk.audio.transcriptions.create(
        model="whisper", file=("clip.wav", wav_bytes(2.0), "audio/wav"), response_format="verbose_json"
    )
    assert verbose.duration == pytest.approx(2.0)


def test_a_file_that_is_not_audio_is_refused_before_any_call(served: Served) -> None:
    before = len(received(served, "sim-whisper"))
    with pytest.raises(openai.BadRequestError) as caught:
        client(served).audio.transcriptions.create(
            model="whisper", file=("notes.mp3", b"not audio " * 50, "audio/mpeg")
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "file"
    assert "not an audio file" in body["message"]
    assert len(received(served, "sim-whisper")) == before


def test_speech_streams_a_wav_to_a_file_and_is_billed_by_characters(served: Served, tmp_path: Path) -> None:
    text = "Hello from the gateway, spoken."
    target = tmp_path / "speech.wav"
    with client(served).audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input=text, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        cost = float(response.headers["x-modelyard-cost-usd"])
        request_id = response.headers["x-request-id"]
        response.stream_to_file(target)
    with wave.open(str(target)) as audio:
        seconds = audio.getnframes() / audio.getframerate()
    assert seconds == pytest.approx(len(text) * 0.05, abs=0.01)
    assert cost == pytest.approx(len(text) * 15.0 / 1e6, rel=1e-6)
    assert spend_row(served, request_id).cost_usd == pytest.approx(cost, rel=1e-6)
    upstream = json.loads(received(served, "sim-tts")[-1]["body"])
    assert upstream == {"model": "sim-tts", "voice": "alloy", "input": text, "response_format": "wav"}


def test_long_speech_arrives_whole_in_pieces(served: Served) -> None:
    text = "x" * 4000  # 200 s of 8 kHz audio: 3.2 MB, sent in many pieces
    with client(served).audio.speech.with_streaming_response.create(model="tts", voice="alloy", input=text) as rsp:
        pieces = list(rsp.iter_bytes(65536))
    data = b"".join(pieces)
    assert len(pieces) > 10
    with wave.open(io.BytesIO(data)) as audio:
        assert audio.getnframes() == 4000 * 0.05 * 8000


def test_images_are_generated_as_pngs_and_billed_per_image(served: Served) -> None:
    raw = client(served).images.with_raw_response.generate(
        model="image", prompt="a red square", n=3, response_format="b64_json", size="256x256"
    )
    result = raw.parse()
    assert result.data is not None and len(result.data) == 3
    for image in result.data:
        assert image.b64_json is not None
        assert base64.b64decode(image.b64_json).startswith(b"\x89PNG\r\n\x1a\n")
    assert float(raw.headers["x-modelyard-cost-usd"]) == pytest.approx(3 * 0.04)
    assert spend_row(served, raw.headers["x-request-id"]).cost_usd == pytest.approx(0.12)
    upstream = json.loads(received(served, "sim-image")[-1]["body"])
    assert upstream["model"] == "sim-image" and upstream["n"] == 3 and upstream["size"] == "256x256"


def test_rerank_in_cohere_shape_on_both_paths(served: Served) -> None:
    documents = ["the cat sat on the mat", "stock prices fell", "a cat and a dog"] + [f"filler {i}" for i in range(120)]
    for path in ("/v1/rerank", "/v2/rerank"):
        answer = httpx.post(
            served[0].url + path,
            json={"model": "rerank", "query": "cat", "documents": documents, "top_n": 2, "return_documents": True},
            headers={"authorization": f"Bearer {MASTER}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["results"]) == 2
        scores = [r["relevance_score"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)
        assert {r["index"] for r in body["results"]} <= {0, 2}
        assert body["results"][0]["document"]["text"] == documents[body["results"][0]["index"]]
        assert body["meta"]["billed_units"]["search_units"] == 2  # 123 documents: two units of 100
        assert float(answer.headers["x-modelyard-cost-usd"]) == pytest.approx(2 * 2.0 / 1000)
        row = spend_row(served, answer.headers["x-request-id"])
        assert row.cost_usd == pytest.approx(0.004)
    upstream = json.loads(received(served, "sim-rerank")[-1]["body"])
    assert upstream["model"] == "sim-rerank" and upstream["query"] == "cat" and upstream["top_n"] == 2
    assert upstream["documents"] == documents


def test_a_chat_model_cannot_serve_an_endpoint(served: Served) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(served).images.generate(model="chat", prompt="a square")
    assert caught.value.status_code in (400, 404)


def test_every_connection_stays_on_loopback(served: Served) -> None:
    """The SDK, the gateway (in this process) and its upstream calls connect to loopback only."""
    with LoopbackGuard() as guard:
        sdk = client(served)
        sdk.audio.transcriptions.create(model="whisper", file=("a.wav", wav_bytes(0.5), "audio/wav"))
        sdk.images.generate(model="image", prompt="loopback")
        with sdk.audio.speech.with_streaming_response.create(model="tts", voice="v", input="hi") as response:
            assert len(response.read()) > 44
    assert guard.seen, "the guard saw no connection at all"
    assert guard.outside() == []
