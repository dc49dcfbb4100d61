"""Hostile clients against the audio, image and rerank endpoints, on the real gateway process (its memory is
measured from outside): nothing is read before the key is checked, uploads and forms are bounded, a
restricted key reaches only its models, a budget holds with image units, and non-finite or out-of-range
numbers never leave the gateway."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .fuzzing import MASTER, Probe, Stack

BOUNDARY = "media-attack-boundary"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("media-attacks")).start()
    try:
        yield running
    finally:
        running.stop()


def wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"\x00\x00" * int(rate * seconds))
    return out.getvalue()


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart body: (name, value, filename or None) parts, closed properly."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: audio/wav\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


FORM_HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def post(stack: Stack, path: str, key: str | None = MASTER, timeout: float = 30, **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(stack.url + path, headers=headers, timeout=timeout, **kwargs)


def raw_exchange(stack: Stack, head: bytes, body_parts: list[bytes], read_timeout: float = 10.0) -> bytes:
    """Send a request's head and body pieces on a socket (stopping when the server answers or closes) and
    return what came back."""
    assert stack.gateway is not None
    with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=read_timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(read_timeout)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.endswith((b"}", b"0\r\n\r\n")):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


@pytest.mark.parametrize(
    "path", ["/v1/audio/transcriptions", "/v1/audio/speech", "/v1/images/generations", "/v1/rerank"]
)
def test_no_key_is_401_before_the_body_is_read(stack: Stack, path: str) -> None:
    # 20 MB announced, none sent: the answer comes at once, from the headers alone.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        "Content-Length: 20000000\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    answer = raw_exchange(stack, head, [])
    assert status_of(answer) == 401
    assert time.perf_counter() - started < 5


def test_an_upload_announced_over_the_bound_is_413_at_once(stack: Stack) -> None:
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {MASTER}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        "Content-Length: 40000000\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    answer = raw_exchange(stack, head, [])
    assert status_of(answer) == 413
    assert b'"param":"file"' in answer
    assert time.perf_counter() - started < 5


def test_a_chunked_upload_over_the_bound_is_cut_off_at_the_bound(stack: Stack) -> None:
    """No Content-Length: the gateway counts as the bytes come and answers 413 once past 25 MB, holding no more."""
    before = stack.rss_bytes()
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {MASTER}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    opening = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
        + b"\x00" * 1_000_000
    )
    piece = b"\x00" * 1_000_000
    chunks = [b"%x\r\n%s\r\n" % (len(opening), opening)] + [b"%x\r\n%s\r\n" % (len(piece), piece)] * 40
    started = time.perf_counter()
    answer = raw_exchange(stack, head, chunks)
    assert status_of(answer) == 413
    assert time.perf_counter() - started < 20
    assert stack.rss_bytes() - before < 80_000_000  # at most the bound (25 MB) and its copy, not 41 MB+


def test_a_hundred_thousand_tiny_fields_are_refused_with_memory_bounded(stack: Stack) -> None:
    before = stack.rss_bytes()
    body = (
        b"".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'.encode() for i in range(100_000)
        )
        + f"--{BOUNDARY}--\r\n".encode()
    )
    started = time.perf_counter()
    answer = post(stack, "/v1/audio/transcriptions", content=body, headers=FORM_HEADERS)
    assert answer.status_code == 400
    assert "more than 64 parts" in answer.json()["error"]["message"]
    assert time.perf_counter() - started < 10
    assert stack.rss_bytes() - before < 30_000_000


def test_a_ten_megabyte_part_header_line_is_refused(stack: Stack) -> None:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nX-Junk: '.encode()
        + b"a" * 10_000_000
        + b"\r\n\r\nxx\r\n"
        + f"--{BOUNDARY}--\r\n".encode()
    )
    before = stack.rss_bytes()
    answer = post(stack, "/v1/audio/transcriptions", content=body, headers=FORM_HEADERS)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_form"
    assert stack.rss_bytes() - before < 40_000_000


def test_a_part_without_an_end_is_refused(stack: Stack) -> None:
    body = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper'.encode()
    answer = post(stack, "/v1/audio/transcriptions", content=body, headers=FORM_HEADERS)
    assert answer.status_code == 400
    assert "ended before its closing boundary" in answer.json()["error"]["message"]


def test_a_form_without_a_file_or_with_a_non_audio_file_names_file(stack: Stack) -> None:
    answer = post(stack, "/v1/audio/transcriptions", content=form(("model", b"whisper", None)), headers=FORM_HEADERS)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"
    body = form(("model", b"whisper", None), ("file", b"GIF89a" + b"\x00" * 500, "a.wav"))
    answer = post(stack, "/v1/audio/transcriptions", content=body, headers=FORM_HEADERS)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"
    body = form(("model", b"whisper", None), ("file", wav(), "a.wav"), ("response_format", b"mp4", None))
    answer = post(stack, "/v1/audio/transcriptions", content=body, headers=FORM_HEADERS)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "response_format"


def test_a_restricted_key_reaches_no_media_deployment(stack: Stack) -> None:
    key = stack._new_key({"name": "chat-only", "models": ["via-openai"]})
    attempts = [
        ("/v1/audio/speech", {"json": {"model": "tts", "input": "hi", "voice": "alloy"}}),
        ("/v1/images/generations", {"json": {"model": "image", "prompt": "a square"}}),
        ("/v1/rerank", {"json": {"model": "rerank", "query": "q", "documents": ["a"]}}),
        ("/v1/images/generations", {"json": {"model": "image@openai", "prompt": "a square"}}),
        (
            "/v1/audio/transcriptions",
            {"content": form(("model", b"whisper", None), ("file", wav(), "a.wav")), "headers": FORM_HEADERS},
        ),
    ]
    for path, kwargs in attempts:
        answer = post(stack, path, key=key, **kwargs)
        assert answer.status_code == 403, (path, answer.text)
    # the same requests with the master key are served: the 403s were the key's scope, not the requests
    assert post(stack, "/v1/audio/speech", json={"model": "tts", "input": "hi", "voice": "alloy"}).status_code == 200


def test_a_budget_holds_against_concurrent_image_requests(stack: Stack) -> None:
    """Each request asks for 2 images at $0.04: $0.08 reserved at the edge, so a $0.10 budget admits one at a
    time and never more than it can pay for, however many arrive together."""
    budget = 0.10
    key = stack._new_key({"name": "image-budget", "models": ["image"], "budget_usd": budget})

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            body = {"model": "image", "prompt": "a budget", "n": 2, "response_format": "url"}
            auth = {"authorization": f"Bearer {key}"}
            return await asyncio.gather(
                *[http.post("/v1/images/generations", json=body, headers=auth) for _ in range(12)]
            )

    answers = asyncio.run(run())
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(served) == 1
    assert all(a.status_code in (402, 429) for a in refused), {a.status_code for a in refused}
    spent = sum(float(a.headers["x-modelyard-cost-usd"]) for a in served)
    assert spent == pytest.approx(0.08) and spent <= budget
    key_id = next(
        k["id"]
        for k in json.loads(stack.send(Probe("GET", "/admin/keys", key="master")).body)["data"]
        if k["name"] == "image-budget"
    )
    info = json.loads(stack.send(Probe("GET", f"/admin/keys/{key_id}", key="master")).body)
    assert info["spend"]["spent_usd"] <= budget


BAD_NUMBERS = [
    ("/v1/images/generations", {"prompt": "p"}, "n", [-1, 0, 11, 2.5, True, "3"]),
    ("/v1/audio/speech", {"input": "hi", "voice": "alloy"}, "speed", [-1, 0, 4.5, "fast", False]),
    ("/v1/rerank", {"query": "q", "documents": ["a", "b"]}, "top_n", [-1, 0, 1001, 1.5, True]),
]


@pytest.mark.parametrize(("path", "base", "param", "values"), BAD_NUMBERS)
def test_non_finite_negative_and_odd_numbers_are_400_naming_the_param(
    stack: Stack, path: str, base: dict[str, Any], param: str, values: list[Any]
) -> None:
    model = {"/v1/images/generations": "image", "/v1/audio/speech": "tts", "/v1/rerank": "rerank"}[path]
    for value in values:
        text = json.dumps({"model": model, **base, param: value})
        answer = post(stack, path, content=text.encode(), headers={"content-type": "application/json"})
        assert answer.status_code == 400, (param, value, answer.text)
        assert answer.json()["error"]["param"] == param, (value, answer.text)
    # NaN and Infinity are not JSON at all, and a number past a double's range is refused as it is decoded
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"):
        body = json.dumps({"model": model, **base}).encode()[:-1] + b', "' + param.encode() + b'": ' + literal + b"}"
        answer = post(stack, path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, (literal, answer.text)
        assert answer.json()["error"]["code"] == "invalid_json"


def test_a_form_temperature_of_nan_or_inf_is_400(stack: Stack) -> None:
    for value in (b"nan", b"inf", b"-inf", b"-0.5", b"1.5", b"warm"):
        body = form(("model", b"whisper", None), ("file", wav(), "a.wav"), ("temperature", value, None))
        answer = post(stack, "/v1/audio/transcriptions", content=body, headers=FORM_HEADERS)
        assert answer.status_code == 400, (value, answer.text)
        assert answer.json()["error"]["param"] == "temperature"
    body = form(("model", b"whisper", None), ("file", wav(), "a.wav"), ("temperature", b"0.2", None))
    assert post(stack, "/v1/audio/transcriptions", content=body, headers=FORM_HEADERS).status_code == 200


def test_rerank_documents_are_bounded_and_typed(stack: Stack) -> None:
    cases = [
        ([], "documents"),
        ("not a list", "documents"),
        ([1, 2], "documents"),
        ([{"text": 3}], "documents"),
        (["d"] * 1001, "documents"),
    ]
    for documents, param in cases:
        answer = post(stack, "/v1/rerank", json={"model": "rerank", "query": "q", "documents": documents})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    answer = post(stack, "/v1/rerank", json={"model": "rerank", "query": 3, "documents": ["a"]})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "query"
    answer = post(stack, "/v1/audio/speech", json={"model": "tts", "input": ["a"], "voice": "alloy"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "input"
