"""The simulator's media routes on OpenAI's wire: `/v1/audio/transcriptions`, `/v1/audio/translations`,
`/v1/audio/speech` and `/v1/images/generations`, for fleet models of kind `transcription`, `speech` and
`image` (sim-whisper, sim-tts, sim-image in the default fleet).

Outputs are deterministic functions of the request: a transcription names the upload's size, duration (read
from a WAV's header, else 16 kB a second) and digest; speech is a valid mono WAV of 50 ms per character
(every `response_format` gets WAV, labelled `audio/wav`); an image is a small valid PNG whose colour comes from
the prompt (or a `url` under `https://sim.invalid/`). Usage is reported where OpenAI reports it (a
transcription's `{type: duration, seconds}`, gpt-image's token counts). Auth, `x-sim-fault` faults, rate
limits and latency go through the app's shared admission (sim/app.py); what each model received is kept in
`app.received` (an upload as a JSON summary: its fields and the file's name, type, size and digest).
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import struct
import time
import wave
import zlib
from typing import TYPE_CHECKING, Any

import msgspec
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from modelyard.sim import asgi
from modelyard.sim.asgi import Receive, Scope, Send
from modelyard.sim.behaviour import count_tokens
from modelyard.sim.faults import Fault
from modelyard.sim.shapes import BadRequest

if TYPE_CHECKING:
    from modelyard.sim.app import SimApp

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

#: Path → the model kind that serves it.
ROUTES = {
    "/v1/audio/transcriptions": "transcription",
    "/v1/audio/translations": "transcription",
    "/v1/audio/speech": "speech",
    "/v1/images/generations": "image",
}
#: Seconds of speech per character of input, and the WAV's sample rate.
SECONDS_PER_CHAR = 0.05
SAMPLE_RATE = 8000
#: A non-WAV upload's assumed byte rate (16 kB/s, about 128 kbit/s).
BYTES_PER_SECOND = 16_000


def claims(method: str, path: str) -> bool:
    """Whether this module serves the request."""
    return method == "POST" and path in ROUTES


async def handle(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    from modelyard.sim.app import _read_headers

    wire = app.openai
    path: str = scope["path"]
    headers = _read_headers(scope)
    if not app._authorised(headers, scope):
        return await app._reject(send, wire, "auth")
    body = await asgi.read_body(receive)
    try:
        fields, upload = _parse(scope, body, path)
    except BadRequest as exc:
        return await app._reject(send, wire, "bad_request", detail=str(exc))
    name = str(fields.get("model") or "")
    summary = body if upload is None else _encode({"fields": fields, "file": _describe(upload)})
    app.received.record(name, path, scope["headers"], summary)
    model = app.models.get(name)
    if model is None:
        return await app._reject(send, wire, "not_found", model=name)
    if model.kind != ROUTES[path]:
        return await app._reject(send, wire, "bad_request", detail=f"`{name}` does not serve {path}")
    try:
        status, content_type, answer = _answer(path, name, fields, upload)
    except BadRequest as exc:
        return await app._reject(send, wire, "bad_request", detail=str(exc))
    call = await app._admit(wire, model, headers, body, receive, send, max(1, len(body) // 1000))
    if call is None:
        return
    await asgi.pause(call.ttft)
    if call.fault in (Fault.RESET, Fault.CUT_STREAM):
        await asgi.abort_midway(send, answer, content_type)
    if call.fault is Fault.MALFORMED:
        answer = answer[: len(answer) // 2]
    else:
        app._succeeded(call.stats, max(1, len(body) // 1000), 0)
    await asgi.respond(send, status, answer, content_type=content_type)


# ----------------------------------------------------------------------------- requests


class _Upload(msgspec.Struct):
    filename: str
    content_type: str
    data: bytes


def _parse(scope: Scope, body: bytes, path: str) -> tuple[dict[str, Any], _Upload | None]:
    if path in ("/v1/audio/speech", "/v1/images/generations"):
        try:
            data = _decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise BadRequest("We could not parse the JSON body of your request.") from None
        if not isinstance(data, dict):
            raise BadRequest("The body must be a JSON object.")
        return data, None
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    fields, upload = parse_form(content_type, body)
    if upload is None:
        raise BadRequest("Missing required parameter: 'file'.")
    return fields, upload


def parse_form(content_type: bytes, body: bytes) -> tuple[dict[str, Any], _Upload | None]:
    """A whole multipart body: text fields (a repeated `name[]` as a list) and the `file` part."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadRequest("Expected a multipart/form-data body.")
    parts: list[tuple[dict[str, str], bytearray]] = []
    state: dict[str, bytearray] = {"name": bytearray(), "value": bytearray()}

    def begin() -> None:
        parts.append(({}, bytearray()))

    def header_field(data: bytes, start: int, end: int) -> None:
        state["name"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def header_end() -> None:
        parts[-1][0][state["name"].decode("latin-1").lower()] = state["value"].decode("latin-1")
        state["name"], state["value"] = bytearray(), bytearray()

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(chunk[start:end])

    callbacks: Any = {
        "on_part_begin": begin,
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_part_data": data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise BadRequest(f"Malformed multipart body: {exc}") from None
    fields: dict[str, Any] = {}
    upload: _Upload | None = None
    for part_headers, value in parts:
        _, disposition = parse_options_header(part_headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disposition:
            if name == "file":
                filename = disposition[b"filename"].decode("utf-8", "replace")
                upload = _Upload(filename, part_headers.get("content-type", ""), bytes(value))
            continue
        text = value.decode("utf-8", "replace")
        if name.endswith("[]"):
            fields.setdefault(name, []).append(text)
        else:
            fields[name] = text
    return fields, upload


def _describe(upload: _Upload) -> dict[str, Any]:
    digest = hashlib.blake2b(upload.data, digest_size=8).hexdigest()
    return {
        "filename": upload.filename,
        "content_type": upload.content_type,
        "bytes": len(upload.data),
        "digest": digest,
    }


# ----------------------------------------------------------------------------- answers


def _answer(path: str, model: str, fields: dict[str, Any], upload: _Upload | None) -> tuple[int, bytes, bytes]:
    """(status, content type, body) of a clean answer."""
    if path == "/v1/audio/speech":
        text = fields.get("input")
        if not isinstance(text, str) or not text:
            raise BadRequest("Missing required parameter: 'input'.")
        return 200, b"audio/wav", speech_wav(text)
    if path == "/v1/images/generations":
        return 200, asgi.JSON_TYPE, _encode(images(fields))
    assert upload is not None
    return transcription(path.endswith("translations"), fields, upload)


def upload_seconds(data: bytes) -> float:
    """A WAV's duration from its header; any other upload at 16 kB a second."""
    try:
        with wave.open(io.BytesIO(data), "rb") as audio:
            rate: int = audio.getframerate()
            frames: int = audio.getnframes()
        if rate > 0:
            return frames / rate
    except (wave.Error, EOFError, struct.error):
        pass
    return len(data) / BYTES_PER_SECOND


def transcription(translate: bool, fields: dict[str, Any], upload: _Upload) -> tuple[int, bytes, bytes]:
    seconds = upload_seconds(upload.data)
    digest = hashlib.blake2b(upload.data, digest_size=4).hexdigest()
    verb = "Translated" if translate else "Transcribed"
    text = f"{verb} {seconds:.2f} seconds of audio ({len(upload.data)} bytes, {digest})."
    prompt = fields.get("prompt")
    if isinstance(prompt, str) and prompt:
        text += f" Prompt: {prompt[:80]}"
    fmt = fields.get("response_format") or "json"
    if fmt == "text":
        return 200, b"text/plain; charset=utf-8", text.encode()
    if fmt in ("srt", "vtt"):
        stamp = _timestamp(seconds, "," if fmt == "srt" else ".")
        head = "1\n" if fmt == "srt" else "WEBVTT\n\n"
        cue = f"{head}{_timestamp(0.0, ',' if fmt == 'srt' else '.')} --> {stamp}\n{text}\n"
        return 200, b"text/plain; charset=utf-8", cue.encode()
    if fmt == "verbose_json":
        segment = {"id": 0, "start": 0.0, "end": round(seconds, 3), "text": text}
        task = "translate" if translate else "transcribe"
        language = "english" if translate else str(fields.get("language") or "english")
        answer: dict[str, Any] = {
            "task": task,
            "language": language,
            "duration": round(seconds, 3),
            "text": text,
            "segments": [segment],
            "usage": {"type": "duration", "seconds": math.ceil(seconds)},
        }
        return 200, asgi.JSON_TYPE, _encode(answer)
    if fmt != "json":
        raise BadRequest(f"response_format must be json, text, srt, verbose_json or vtt, not {str(fmt)[:40]!r}")
    return 200, asgi.JSON_TYPE, _encode({"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}})


def _timestamp(seconds: float, comma: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{comma}{ms % 1000:03d}"


def speech_wav(text: str) -> bytes:
    """A mono 16-bit WAV of 50 ms per character: a tone whose pitch follows the text's digest."""
    frames = max(1, int(len(text) * SECONDS_PER_CHAR * SAMPLE_RATE))
    pitch = 200 + hashlib.blake2b(text.encode(), digest_size=1).digest()[0]
    step = 2 * math.pi * pitch / SAMPLE_RATE
    samples = b"".join(struct.pack("<h", int(8000 * math.sin(i * step))) for i in range(min(frames, SAMPLE_RATE)))
    pcm = (samples * (2 * frames // len(samples) + 1))[: frames * 2]
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(SAMPLE_RATE)
        audio.writeframes(pcm)
    return out.getvalue()


def images(fields: dict[str, Any]) -> dict[str, Any]:
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("Missing required parameter: 'prompt'.")
    n = fields.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        raise BadRequest("n must be an integer from 1 to 10.")
    fmt = fields.get("response_format") or "b64_json"
    if fmt not in ("b64_json", "url"):
        raise BadRequest("response_format must be url or b64_json.")
    data = []
    for i in range(n):
        digest = hashlib.blake2b(f"{prompt}|{i}".encode(), digest_size=8).digest()
        if fmt == "url":
            data.append({"url": f"https://sim.invalid/images/{digest.hex()}.png", "revised_prompt": prompt})
        else:
            data.append({"b64_json": base64.b64encode(png(digest[:3])).decode(), "revised_prompt": prompt})
    tokens = count_tokens(prompt)
    usage = {
        "input_tokens": tokens,
        "output_tokens": 16 * n,
        "total_tokens": tokens + 16 * n,
        "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
    }
    return {"created": int(time.time()), "data": data, "usage": usage}


def png(rgb: bytes, size: int = 4) -> bytes:
    """A valid `size` by `size` PNG of one colour."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = b"".join(b"\x00" + rgb * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
