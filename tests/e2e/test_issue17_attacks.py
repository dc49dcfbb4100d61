"""Red-team tests for issue 17's surfaces: the audio, image and rerank endpoints and the cloud adapters, attacked
by a hostile client and by a hostile upstream (a loopback server of this module that answers what a broken or
malicious provider could: a 512 MB speech body, error texts that echo the caller's key, Bedrock event streams
with bad checksums or absurd lengths, a token endpoint that hangs, one that leaks, one that never stops
handing out tokens the API refuses).

Every test is an attack that holds. Four were holes when written (a lying MP3 Xing count and a WAV claiming
years, billed by their headers; a hanging token endpoint held the attempt; an upstream answer read whole
without a bound); each was closed and its test kept.
Nothing leaves loopback: the simulator, the hostile server and the gateway all listen on 127.0.0.1, AWS's
credential chain and instance metadata are off (explicit keys), and Google's token URI is the hostile server.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import json
import socket
import struct
import threading
import time
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from modelyard.sim.cloud_bedrock import ACCESS_KEY, SECRET_KEY
from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess

from .cloud.vertex import service_account_file

MASTER = "sk-master-issue17-attack-0123"
LEAK = {
    "openai": "sk-test-openai17-secret",
    "azure": "sk-test-azure17-secret",
    "cohere": "sk-test-cohere17-secret",
    "jina": "sk-test-jina17-secret",
    "voyage": "sk-test-voyage17-secret",
}
#: A private-key-like text the hostile token endpoint puts in its error (a chain that echoes its input).
TOKEN_SECRET = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ"
TIMEOUTS = "timeouts: {connect: 2, first_token: 3, response: 3, total: 4}"


# --------------------------------------------------------------------------- the hostile upstream


def frame(headers: dict[str, str], payload: bytes, *, total: int | None = None, crc: int | None = None) -> bytes:
    """One AWS event-stream message (prelude, string headers, payload, message CRC); `total` and `crc` lie."""
    raw_headers = b""
    for name, value in headers.items():
        encoded = value.encode()
        raw_headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(encoded)) + encoded
    length = 12 + len(raw_headers) + len(payload) + 4 if total is None else total
    prelude = struct.pack(">II", length, len(raw_headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + raw_headers + payload
    return message + struct.pack(">I", binascii.crc32(message) if crc is None else crc)


def event(kind: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(payload).encode())


START = event("messageStart", {"role": "assistant"})
DELTA = event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hello"}})

#: Bedrock model id → the event stream the hostile server answers ConverseStream with.
BEDROCK_STREAMS: dict[str, bytes] = {
    # a good frame, then one whose message CRC is wrong
    "bad-crc": START + frame({":event-type": "contentBlockDelta", ":message-type": "event"}, b"{}", crc=1),
    # a prelude that declares a 4 GB message (its prelude CRC is right: only the length lies)
    "huge-frame": START + frame({":event-type": "contentBlockDelta"}, b"{}", total=0xFFFFFFF0),
    # an exception message mid-stream
    "exception": START
    + DELTA
    + frame(
        {":message-type": "exception", ":exception-type": "throttlingException", ":content-type": "application/json"},
        b'{"message":"Too many requests"}',
    ),
    # a header block declared at 1 MB
    "huge-headers": START + struct.pack(">II", 16 + (1 << 20), 1 << 20) + b"\x00" * 64,
}

SPEECH_BYTES = 512 * 1024 * 1024
PIECE = b"\xff\xfb" * 32768  # 64 KiB of MP3-looking bytes


class Hostile(BaseHTTPRequestHandler):
    """Routes by path prefix; every request is counted by that prefix (`server.hits`)."""

    protocol_version = "HTTP/1.1"
    server: HostileServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        prefix = self.path.split("/")[1]
        with self.server.lock:
            self.server.hits[prefix] = self.server.hits.get(prefix, 0) + 1
        handler = getattr(self, "_" + prefix.replace("-", "_"), None)
        if handler is None:
            self._json(404, {"error": {"message": "no such route"}})
            return
        handler(body)

    # ---- answers
    def _json(self, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def _credentials_seen(self) -> str:
        """Every credential-bearing header, echoed as a careless provider's error text does."""
        seen = [f"{n}={self.headers.get(n)}" for n in ("authorization", "api-key", "x-api-key") if self.headers.get(n)]
        return "; ".join(seen)

    def _echo400(self, body: bytes) -> None:
        message = f"Invalid request. You sent {self._credentials_seen()}"
        self._json(400, {"error": {"message": message, "type": "invalid_request_error"}, "message": message})

    def _echo401(self, body: bytes) -> None:
        message = f"Incorrect API key provided: {self._credentials_seen()}"
        self._json(401, {"error": {"message": message, "code": "invalid_api_key"}, "message": message})

    def _fail500(self, body: bytes) -> None:
        self._json(500, {"error": {"message": "internal error", "type": "server_error"}})

    def _huge(self, body: bytes) -> None:
        """A speech answer of SPEECH_BYTES, announced, sent as fast as the gateway reads."""
        self.send_response(200)
        self.send_header("content-type", "audio/mpeg")
        self.send_header("content-length", str(SPEECH_BYTES))
        self.end_headers()
        try:
            for _ in range(SPEECH_BYTES // len(PIECE)):
                self.wfile.write(PIECE)
        except OSError:
            return  # the gateway stopped reading: what a bounded reader does

    def _bedrock(self, body: bytes) -> None:
        model = self.path.split("/")[3]
        stream = BEDROCK_STREAMS[model]
        self.send_response(200)
        self.send_header("content-type", "application/vnd.amazon.eventstream")
        self.send_header("content-length", str(len(stream)))
        self.end_headers()
        self.wfile.write(stream)

    def _token_hang(self, body: bytes) -> None:
        self.server.stopping.wait(60)

    def _token_leak(self, body: bytes) -> None:
        self._json(400, {"error": "invalid_grant", "error_description": f"bad key {TOKEN_SECRET}"})

    def _token_ok(self, body: bytes) -> None:
        self._json(200, {"access_token": "ya29.hostile-token", "expires_in": 3600, "token_type": "Bearer"})

    def _vertex401(self, body: bytes) -> None:
        self._json(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials."}})


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Hostile)
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=17, instant=True) as server:
        yield server


def key_file(sim: SimServer, folder: Path, name: str, token_uri: str) -> Path:
    """A real service-account key file (the simulator's), with its token URI on the hostile server."""
    source = service_account_file(sim.url, folder)
    data = json.loads(source.read_text())
    data["token_uri"] = token_uri
    path = folder / name
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


CONFIG = """
deployments:
  - {{name: whisper@sim, provider: openai, kind: transcription, model: sim-whisper, api_base: "{sim}/v1",
     api_key: sk-test-media-secret, price: {{audio_minute: 0.006}}}}
  - {{name: tts@sim, provider: openai, kind: speech, model: sim-tts, api_base: "{sim}/v1", price: {{characters: 15.0}}}}
  - {{name: image@sim, provider: openai, kind: image, model: sim-image, api_base: "{sim}/v1", price: {{image: 0.04}}}}
  - {{name: image-dear@sim, provider: openai, kind: image, model: sim-image, api_base: "{sim}/v1",
     price: {{image: 0.08}}}}
  - {{name: image-broken@hostile, provider: openai, kind: image, model: m, api_base: "{bad}/fail500/v1",
     price: {{image: 0.01}}}}
  - {{name: rerank@sim, provider: openai, kind: rerank, model: sim-rerank, api_base: "{sim}/v1",
     price: {{search_unit: 2.0}}}}
  - {{name: small@sim, provider: openai, model: sim-small, api_base: "{sim}/v1", price: {{input: 0.1, output: 0.4}}}}
  - {{name: leak400@openai, provider: openai, kind: speech, model: m, api_base: "{bad}/echo400/v1",
     api_key: {openai}}}
  - {{name: leak401@openai, provider: openai, kind: speech, model: m, api_base: "{bad}/echo401/v1",
     api_key: {openai}}}
  - {{name: leak400@azure, provider: azure, model: m, api_base: "{bad}/echo400", api_key: {azure},
     options: {{api_version: "2024-10-21"}}}}
  - {{name: leak401@azure, provider: azure, model: m, api_base: "{bad}/echo401", api_key: {azure},
     options: {{api_version: "2024-10-21"}}}}
  - {{name: leak400@cohere, provider: cohere, kind: rerank, model: m, api_base: "{bad}/echo400", api_key: {cohere}}}
  - {{name: leak401@cohere, provider: cohere, kind: rerank, model: m, api_base: "{bad}/echo401", api_key: {cohere}}}
  - {{name: leak400@jina, provider: jina, kind: rerank, model: m, api_base: "{bad}/echo400", api_key: {jina}}}
  - {{name: leak401@jina, provider: jina, kind: rerank, model: m, api_base: "{bad}/echo401", api_key: {jina}}}
  - {{name: leak400@voyage, provider: voyage, kind: rerank, model: m, api_base: "{bad}/echo400/v1",
     api_key: {voyage}}}
  - {{name: leak401@voyage, provider: voyage, kind: rerank, model: m, api_base: "{bad}/echo401/v1",
     api_key: {voyage}}}
  - {{name: vx-hang, provider: vertex, model: gemini-x, api_base: "{bad}/vertex401", {timeouts},
     options: {{project: p, location: us-central1, credentials_file: "{hang}"}}}}
  - {{name: vx-leak, provider: vertex, model: gemini-x, api_base: "{bad}/vertex401", {timeouts},
     options: {{project: p, location: us-central1, credentials_file: "{leak}"}}}}
  - {{name: vx-401, provider: vertex, model: gemini-x, api_base: "{bad}/vertex401", {timeouts},
     options: {{project: p, location: us-central1, credentials_file: "{ok}"}}}}
{bedrock}
models:
  whisper: {{candidates: [whisper@sim]}}
  tts: {{candidates: [tts@sim]}}
  image: {{candidates: [image@sim]}}
  image-failover: {{candidates: [image-broken@hostile, image-dear@sim], retries: 0}}
  rerank: {{candidates: [rerank@sim]}}
  chat: {{candidates: [small@sim]}}
  vx-hang: {{candidates: [vx-hang], retries: 0}}
  vx-leak: {{candidates: [vx-leak], retries: 0}}
  vx-401: {{candidates: [vx-401]}}
access: {{master_key: {master}, refresh_s: 0}}
spend: {{store: "sqlite:///{store}", flush_interval_s: 0.05}}
"""


def bedrock_deployments(bad: str) -> str:
    keys = f"region: us-east-1, aws_access_key_id: {ACCESS_KEY}, aws_secret_access_key: {SECRET_KEY}"
    return "\n".join(
        f'  - {{name: br-{m}, provider: bedrock, model: "{m}", api_base: "{bad}/bedrock", {TIMEOUTS}, '
        f"options: {{{keys}}}}}"
        for m in BEDROCK_STREAMS
    )


Served = tuple[BackgroundServer, Gateway]


@pytest.fixture(scope="module")
def served(sim: SimServer, hostile: HostileServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("issue17-attacks")
    files = {
        name: key_file(sim, folder, f"{name}.json", f"{hostile.url}/token-{name}") for name in ("hang", "leak", "ok")
    }
    text = CONFIG.format(
        sim=sim.url,
        bad=hostile.url,
        store=folder / "spend.db",
        master=MASTER,
        timeouts=TIMEOUTS,
        bedrock=bedrock_deployments(hostile.url),
        **LEAK,
        **{k: str(v) for k, v in files.items()},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        gateway = create_app(parse_config(text, source="issue17-attacks.yaml"))
        with BackgroundServer(gateway) as server:
            yield server, gateway


def post(served: Served, path: str, key: str = MASTER, timeout: float = 30, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return httpx.post(served[0].url + path, headers=headers, timeout=timeout, **kwargs)


def new_key(served: Served, body: dict[str, Any]) -> str:
    answer = post(served, "/admin/keys", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["key"])


def spend_row(served: Served, request_id: str) -> SpendRecord:
    server, gateway = served
    services = gateway.services
    assert services is not None and services.spend is not None and server.loop is not None

    async def read() -> SpendRecord | None:
        assert services.spend is not None
        assert await services.spend.flush(10)
        return await services.store.get_spend(request_id)

    row = asyncio.run_coroutine_threadsafe(read(), server.loop).result(timeout=20)
    assert row is not None, "no spend row for the request"
    return row


def assert_openai_error(answer: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape, never a traceback; `status` when given."""
    assert answer.status_code >= 400, answer.text
    if status is not None:
        assert answer.status_code == status, answer.text
    assert b"Traceback" not in answer.content and b'File "' not in answer.content
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    return dict(error)


def wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"\x00\x00" * int(rate * seconds))
    return out.getvalue()


MP3_HEADER = bytes([0xFF, 0xFB, 0x90, 0x64])  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417-byte frames
MP3_FRAME = 417


def mp3_with_lying_xing(frames: int) -> bytes:
    """`frames` real MPEG frames (26 ms each) whose first carries a Xing header claiming the file is 1 frame:
    decoders play every frame, a header reader believes the Xing count."""
    xing = b"\x00" * 32 + b"Xing" + struct.pack(">II", 1, 1)
    first = (MP3_HEADER + xing).ljust(MP3_FRAME, b"\x00")
    return first + MP3_HEADER.ljust(MP3_FRAME, b"\x00") * (frames - 1)


def wav_claiming(data_bytes: int, rate: int = 1) -> bytes:
    """A 52-byte WAV whose header claims `data_bytes` of 16-bit mono PCM at `rate` Hz."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_bytes) + b"\x00" * 8
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


# --------------------------------------------------------------------------- audio billing


def test_an_mp3_whose_xing_header_lies_is_billed_for_the_audio_it_carries(served: Served) -> None:
    frames = 60_000  # 60,000 x 1152 samples / 44.1 kHz ≈ 1,567 s of audio, 25 MB
    audio = mp3_with_lying_xing(frames)
    real_seconds = frames * 1152 / 44100
    body = {"model": "whisper", "response_format": "text"}
    answer = post(served, "/v1/audio/transcriptions", data=body, files={"file": ("talk.mp3", audio, "audio/mpeg")})
    assert answer.status_code == 200, answer.text
    cost = float(answer.headers["x-modelyard-cost-usd"])
    assert cost >= 0.9 * real_seconds / 60 * 0.006, f"billed ${cost} for {real_seconds:.0f} s of audio"


def test_an_mp3_whose_xing_header_lies_is_billed_by_the_upstreams_report_in_json(served: Served) -> None:
    """Where the upstream reports the seconds it heard (`usage.seconds`), its report wins over the header."""
    audio = mp3_with_lying_xing(60_000)
    answer = post(served, "/v1/audio/transcriptions", data={"model": "whisper"}, files={"file": ("t.mp3", audio)})
    assert answer.status_code == 200, answer.text
    # the simulator hears a non-WAV upload at 16 kB a second: 25,020,000 / 16,000 → 1,564 s, rounded up
    assert float(answer.headers["x-modelyard-cost-usd"]) == pytest.approx(1564 / 60 * 0.006, rel=0.01)


def test_a_tiny_upload_claiming_years_of_audio_is_not_billed_as_years(served: Served) -> None:
    audio = wav_claiming(0xFFFFFFF0)
    body = {"model": "whisper", "response_format": "text"}
    answer = post(served, "/v1/audio/transcriptions", data=body, files={"file": ("tiny.wav", audio, "audio/wav")})
    # either refused as not-audio, or billed for no more than a second or so of what 52 bytes can carry
    if answer.status_code == 200:
        assert float(answer.headers["x-modelyard-cost-usd"]) < 0.01
    else:
        assert_openai_error(answer, 400)


def test_a_budgeted_key_cannot_upload_a_header_claiming_years(served: Served) -> None:
    """A 2^31-second claim in 52 bytes is measured by what the bytes can hold (well under a second), so the
    reservation is tiny and nothing overflows: the request is served and billed a fraction of a cent."""
    key = new_key(served, {"name": "whisper-budget", "models": ["whisper"], "budget_usd": 1.0})
    audio = wav_claiming(0xFFFFFFF0)
    answer = post(
        served,
        "/v1/audio/transcriptions",
        key=key,
        data={"model": "whisper", "response_format": "text"},
        files={"file": ("a.wav", audio)},
    )
    assert answer.status_code == 200, answer.text
    assert float(answer.headers["x-modelyard-cost-usd"]) < 0.01
    # and an honest second still goes through on the same key
    ok = post(served, "/v1/audio/transcriptions", key=key, data={"model": "whisper"}, files={"file": ("a.wav", wav())})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    "payload",
    [
        b"FORM\xff\xff\xff\xffAIFFCOMM\x00\x00\x00\x12" + b"\x00\x01\xff\xff\xff\xff\x00\x10\x00\x00" + b"\x00" * 8,
        b"RIFF\x00\x00\x00\x00WAVEfmt \xff\xff\xff\xff",
        b"OggS" + b"\x00" * 23 + b"\xff" * 255,
        b"fLaC\x00\x00\x00\x22" + b"\x00" * 34,
        b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + b"\x00" * 64,
        b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 24 + b"\xff\xff\xff\xffmoov",
    ],
    ids=["aiff-zero-rate", "wav-huge-fmt", "ogg-garbage", "flac-empty", "id3-huge", "mp4-huge-atom"],
)
def test_malformed_audio_is_a_400_naming_file(served: Served, payload: bytes) -> None:
    answer = post(served, "/v1/audio/transcriptions", data={"model": "whisper"}, files={"file": ("x.bin", payload)})
    error = assert_openai_error(answer, 400)
    assert error["param"] == "file"


# --------------------------------------------------------------------------- type confusion


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/audio/speech", {"model": {"$ne": 1}, "input": "hi", "voice": "alloy"}, "model"),
        ("/v1/audio/speech", {"model": "tts", "input": ["hi", "there"], "voice": "alloy"}, "input"),
        ("/v1/audio/speech", {"model": "tts", "input": "hi", "voice": "alloy", "speed": "1.0"}, "speed"),
        ("/v1/audio/speech", {"model": "tts", "input": "hi", "voice": "alloy", "speed": True}, "speed"),
        ("/v1/audio/speech", {"model": "tts", "input": "hi", "voice": {"id": 5}}, "voice"),
        ("/v1/audio/speech", {"model": "tts", "input": "x" * 4097, "voice": "alloy"}, "input"),
        ("/v1/images/generations", {"model": "image", "prompt": "p", "n": "2"}, "n"),
        ("/v1/images/generations", {"model": "image", "prompt": "p", "n": 2.5}, "n"),
        ("/v1/images/generations", {"model": "image", "prompt": "p", "n": 11}, "n"),
        ("/v1/images/generations", {"model": "image", "prompt": "p", "n": True}, "n"),
        ("/v1/images/generations", {"model": "image", "prompt": {"text": "p"}}, "prompt"),
        ("/v1/images/generations", {"model": ["image"], "prompt": "p"}, "model"),
        ("/v1/rerank", {"model": "rerank", "query": "q", "documents": ["a"], "top_n": 1.5}, "top_n"),
        ("/v1/rerank", {"model": "rerank", "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ("/v1/rerank", {"model": "rerank", "query": "q", "documents": [{"text": 5}]}, "documents"),
        ("/v1/rerank", {"model": "rerank", "query": "q", "documents": [["a"]]}, "documents"),
        ("/v1/rerank", {"model": "rerank", "query": "q", "documents": "a"}, "documents"),
        ("/v1/rerank", {"model": "rerank", "query": ["q"], "documents": ["a"]}, "query"),
        ("/v2/rerank", {"model": "rerank", "query": "q", "documents": ["a"], "return_documents": "yes"}, None),
        ("/v2/rerank", {"model": "rerank", "query": "q", "documents": ["a"] * 1001}, "documents"),
    ],
)
def test_type_confusion_is_a_400_in_openai_shape(
    served: Served, sim: SimServer, path: str, body: dict[str, Any], param: str | None
) -> None:
    answer = post(served, path, json=body)
    error = assert_openai_error(answer, 400)
    if param is not None:
        assert error["param"] == param, error


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/audio/speech", b'{"model":"tts","input":"hi","voice":"alloy","speed":NaN}'),
        ("/v1/audio/speech", b'{"model":"tts","input":"hi","voice":"alloy","speed":1e400}'),
        ("/v1/images/generations", b'{"model":"image","prompt":"p","n":1e400}'),
        ("/v1/images/generations", b'{"model":"image","prompt":"p","n":99999999999999999999999999}'),
        ("/v1/rerank", b'{"model":"rerank","query":"q","documents":["a"],"top_n":-Infinity}'),
        ("/v1/rerank", b'{"model":"rerank","query":"q","documents":["a"],"max_tokens_per_doc":1e999}'),
    ],
)
def test_non_finite_and_huge_numbers_are_a_400(served: Served, path: str, raw: bytes) -> None:
    answer = post(served, path, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(answer, 400)


# --------------------------------------------------------------------------- keys, scopes, overrides


def test_a_restricted_key_cannot_reach_media_by_deployment_name_or_overrides(served: Served, sim: SimServer) -> None:
    key = new_key(served, {"name": "chat-only-17", "models": ["chat"]})
    attempts = [
        ("/v1/audio/speech", {"model": "tts@sim", "input": "hi", "voice": "alloy"}),
        (
            "/v1/audio/speech",
            {"model": "chat", "input": "hi", "voice": "alloy", "modelyard": {"candidates": ["tts@sim"]}},
        ),
        ("/v1/audio/speech", {"model": "chat", "input": "hi", "voice": "alloy", "modelyard": {"fallbacks": ["tts"]}}),
        ("/v1/images/generations", {"model": "image-dear@sim", "prompt": "p"}),
        ("/v1/images/generations", {"model": "chat", "prompt": "p", "modelyard": {"candidates": ["image@sim"]}}),
        ("/v1/rerank", {"model": "chat", "query": "q", "documents": ["a"], "modelyard": {"fallbacks": ["rerank"]}}),
        ("/v2/rerank", {"model": "rerank@sim", "query": "q", "documents": ["a"]}),
    ]
    sim.reset()
    for path, body in attempts:
        answer = post(served, path, key=key, json=body)
        assert 400 <= answer.status_code < 500, (path, body, answer.status_code, answer.text)
        assert_openai_error(answer)
    for model in ("sim-tts", "sim-image", "sim-rerank"):
        seen = httpx.get(f"{sim.url}/_sim/requests/{model}", timeout=10).json()["requests"]
        assert seen == [], f"{model} was called for a key that may not reach it"


def test_a_modelyard_override_object_never_reaches_the_upstream(served: Served, sim: SimServer) -> None:
    sim.reset()
    body = {"model": "tts", "input": "hi", "voice": "alloy", "modelyard": {"fallbacks": ["tts"]}}
    answer = post(served, "/v1/audio/speech", json=body)
    assert answer.status_code == 200, answer.text
    seen = httpx.get(f"{sim.url}/_sim/requests/sim-tts", timeout=10).json()["requests"]
    assert len(seen) == 1
    assert "modelyard" not in json.loads(seen[0]["body"])


def test_a_budget_holds_against_a_rerank_of_a_thousand_documents(served: Served) -> None:
    """1,000 documents are 10 search units at $2/1000: $0.02 reserved; a $0.03 budget admits exactly one."""
    key = new_key(served, {"name": "rerank-budget-17", "models": ["rerank"], "budget_usd": 0.03})
    body = {"model": "rerank", "query": "q", "documents": [f"doc {i}" for i in range(1000)]}
    first = post(served, "/v1/rerank", key=key, json=body)
    assert first.status_code == 200, first.text
    assert float(first.headers["x-modelyard-cost-usd"]) == pytest.approx(0.02)
    second = post(served, "/v1/rerank", key=key, json=body)
    error = assert_openai_error(second)
    assert second.status_code in (402, 429) and "budget" in error["message"].lower(), second.text


def test_a_budget_holds_against_huge_speech_inputs(served: Served) -> None:
    """4,096 characters at $15/1M = $0.06144 reserved each; a $0.10 budget admits one, refuses the second."""
    key = new_key(served, {"name": "speech-budget-17", "models": ["tts"], "budget_usd": 0.10})
    body = {"model": "tts", "input": "x" * 4096, "voice": "alloy"}
    assert post(served, "/v1/audio/speech", key=key, json=body).status_code == 200
    second = post(served, "/v1/audio/speech", key=key, json=body)
    error = assert_openai_error(second)
    assert second.status_code in (402, 429) and "budget" in error["message"].lower(), second.text


# --------------------------------------------------------------------------- spend rows and failover


def test_image_failover_between_unit_prices_bills_the_serving_price_once(served: Served) -> None:
    answer = post(served, "/v1/images/generations", json={"model": "image-failover", "prompt": "a square", "n": 3})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelyard-model"] == "image-dear@sim"
    assert float(answer.headers["x-modelyard-cost-usd"]) == pytest.approx(3 * 0.08)
    row = spend_row(served, answer.headers["x-request-id"])
    assert row.deployment == "image-dear@sim" and row.status == "ok"
    assert row.cost_usd == pytest.approx(3 * 0.08)
    assert row.attempts == 2
    assert row.endpoint.endswith("images/generations")


@pytest.mark.parametrize(
    ("path", "body", "cost"),
    [
        ("/v1/audio/speech", {"model": "tts", "input": "hello there", "voice": "alloy"}, 11 * 15.0e-6),
        ("/v1/images/generations", {"model": "image", "prompt": "p", "n": 2}, 0.08),
        ("/v2/rerank", {"model": "rerank", "query": "q", "documents": ["a"] * 150}, 2 * 2.0 / 1000),
    ],
)
def test_each_endpoint_has_one_spend_row_matching_its_cost_header(
    served: Served, path: str, body: dict[str, Any], cost: float
) -> None:
    answer = post(served, path, json=body)
    assert answer.status_code == 200, answer.text
    assert float(answer.headers["x-modelyard-cost-usd"]) == pytest.approx(cost)
    row = spend_row(served, answer.headers["x-request-id"])
    assert row.cost_usd == pytest.approx(cost) and row.status == "ok" and row.attempts == 1


# --------------------------------------------------------------------------- hostile upstream: secrets


LEAK_CASES = [
    ("/v1/audio/speech", {"model": "leak{n}@openai", "input": "hi", "voice": "alloy"}, "openai"),
    ("/v1/chat/completions", {"model": "leak{n}@azure", "messages": [{"role": "user", "content": "hi"}]}, "azure"),
    ("/v2/rerank", {"model": "leak{n}@cohere", "query": "q", "documents": ["a"]}, "cohere"),
    ("/v2/rerank", {"model": "leak{n}@jina", "query": "q", "documents": ["a"]}, "jina"),
    ("/v2/rerank", {"model": "leak{n}@voyage", "query": "q", "documents": ["a"]}, "voyage"),
]


@pytest.mark.parametrize("status", ["400", "401"])
@pytest.mark.parametrize(("path", "template", "provider"), LEAK_CASES, ids=[c[2] for c in LEAK_CASES])
def test_an_upstream_error_that_echoes_the_key_never_reaches_the_client(
    served: Served, hostile: HostileServer, path: str, template: dict[str, Any], provider: str, status: str
) -> None:
    body = {k: (v.format(n=status) if k == "model" else v) for k, v in template.items()}
    before = hostile.hits.get(f"echo{status}", 0)
    answer = post(served, path, json=body)
    assert hostile.hits.get(f"echo{status}", 0) > before, "the hostile upstream was not called"
    assert_openai_error(answer)
    secret = LEAK[provider]
    everything = answer.text + json.dumps(dict(answer.headers))
    assert secret not in everything
    assert secret[8:-7] not in everything  # not even its middle


def test_a_token_endpoint_error_text_never_reaches_the_client(served: Served) -> None:
    answer = post(
        served, "/v1/chat/completions", json={"model": "vx-leak", "messages": [{"role": "user", "content": "x"}]}
    )
    assert_openai_error(answer)
    assert answer.status_code in (401, 502, 503), answer.text
    everything = answer.text + json.dumps(dict(answer.headers))
    assert "PRIVATE KEY" not in everything and TOKEN_SECRET[-20:] not in everything
    assert "invalid_grant" not in everything


def test_a_401_storm_does_not_refresh_tokens_in_a_loop(served: Served, hostile: HostileServer) -> None:
    """Every call is refused with 401: each request fetches at most a couple of tokens, never a loop."""
    before_tokens = hostile.hits.get("token-ok", 0)
    before_calls = hostile.hits.get("vertex401", 0)
    for _ in range(5):
        answer = post(
            served, "/v1/chat/completions", json={"model": "vx-401", "messages": [{"role": "user", "content": "x"}]}
        )
        assert_openai_error(answer)
        assert "ya29.hostile-token" not in answer.text
    tokens = hostile.hits.get("token-ok", 0) - before_tokens
    calls = hostile.hits.get("vertex401", 0) - before_calls
    assert 1 <= calls <= 5 * 3, calls
    assert 1 <= tokens <= calls + 1, (tokens, calls)


def test_a_hanging_token_endpoint_times_out_within_the_deployments_bound(served: Served) -> None:
    started = time.monotonic()
    try:
        answer = post(
            served,
            "/v1/chat/completions",
            json={"model": "vx-hang", "messages": [{"role": "user", "content": "x"}]},
            timeout=12,
        )
    except httpx.TimeoutException:
        pytest.fail(f"no answer after {time.monotonic() - started:.1f}s (the deployment's total is 4 s)")
    assert_openai_error(answer)
    assert time.monotonic() - started < 10


def test_a_hanging_token_endpoint_does_not_block_other_requests(served: Served) -> None:
    """While one request waits on the hung token endpoint (a worker thread), others are served at once."""
    server = served[0]
    done = threading.Event()

    def hang() -> None:
        try:
            post(
                served,
                "/v1/chat/completions",
                json={"model": "vx-hang", "messages": [{"role": "user", "content": "x"}]},
                timeout=3,
            )
        except httpx.TimeoutException:
            pass
        done.set()

    thread = threading.Thread(target=hang, daemon=True)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    ok = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {MASTER}"},
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert ok.status_code == 200 and time.monotonic() - started < 2.0
    done.wait(10)
    thread.join(5)


# --------------------------------------------------------------------------- hostile upstream: Bedrock frames


@pytest.mark.parametrize("model", list(BEDROCK_STREAMS))
def test_a_hostile_bedrock_event_stream_is_an_error_not_a_hang(
    served: Served, hostile: HostileServer, model: str
) -> None:
    before = hostile.hits.get("bedrock", 0)
    client = openai.OpenAI(base_url=served[0].url + "/v1", api_key=MASTER, max_retries=0, timeout=15)
    started = time.monotonic()
    text = ""
    with pytest.raises(openai.APIError) as raised:
        stream = client.chat.completions.create(
            model=f"br-{model}", messages=[{"role": "user", "content": "x"}], stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "Traceback" not in message and SECRET_KEY not in message
    assert text in ("", "hello")
    calls = hostile.hits.get("bedrock", 0) - before
    assert 1 <= calls <= 2, calls  # the call, at most its one retry: no loop on a broken stream


# --------------------------------------------------------------------------- hostile upstream: memory


@pytest.fixture(scope="module")
def process(hostile: HostileServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("issue17-process")
    config = folder / "gateway.yaml"
    config.write_text(
        "deployments:\n"
        f'  - {{name: huge-tts, provider: openai, kind: speech, model: m, api_base: "{hostile.url}/huge/v1", '
        "timeouts: {connect: 2, first_token: 20, response: 30, total: 30}, price: {characters: 15.0}}\n"
        "models:\n  tts: {candidates: [huge-tts], retries: 0}\n"
        f"access: {{master_key: {MASTER}}}\n"
    )
    env = {"AWS_EC2_METADATA_DISABLED": "true", "MODELYARD_BODY_TIMEOUT_S": "2"}
    with GatewayProcess(config, env=env) as gateway:
        yield gateway


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_half_gigabyte_speech_answer_does_not_balloon_the_gateway(process: GatewayProcess) -> None:
    before = peak_rss(process.pid)
    received = 0
    try:
        with httpx.stream(
            "POST",
            process.url + "/v1/audio/speech",
            headers={"authorization": f"Bearer {MASTER}"},
            json={"model": "tts", "input": "hi", "voice": "alloy"},
            timeout=60,
        ) as answer:
            for piece in answer.iter_bytes():
                received += len(piece)
    except httpx.HTTPError:
        pass  # a gateway that cuts the answer off is fine: what matters is its memory
    growth = peak_rss(process.pid) - before
    assert growth < 128 * 1024 * 1024, f"peak RSS grew {growth / 2**20:.0f} MiB (client got {received} bytes)"


def test_a_slowloris_upload_is_cut_off_at_the_body_timeout(process: GatewayProcess) -> None:
    """A form announced at 1 MB, trickled a few bytes a second: the gateway stops waiting at its body bound."""
    boundary = "slow-boundary"
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {MASTER}\r\ncontent-type: multipart/form-data; boundary={boundary}\r\n"
        "content-length: 1000000\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", process.port), timeout=15) as sock:
        sock.sendall(head)
        answer = b""
        while time.monotonic() - started < 12:
            try:
                sock.sendall(b"\x00" * 4)
            except OSError:
                break  # the gateway closed the connection
            sock.settimeout(1.0)
            try:
                got = sock.recv(65536)
            except TimeoutError:
                continue
            if not got:
                break
            answer += got
            if b"\r\n\r\n" in answer:
                break
    elapsed = time.monotonic() - started
    assert elapsed < 8, f"the trickled upload was held {elapsed:.1f}s (body timeout 2 s)"
    assert answer == b"" or answer.split(b" ")[1] in (b"408", b"400", b"413"), answer[:200]
