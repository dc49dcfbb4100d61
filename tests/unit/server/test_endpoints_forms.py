"""The bounded multipart reader of the upload endpoints, fed ASGI messages directly: what it keeps, and the
first bound each hostile form crosses (parts, a field's size, a header line, the file, the whole body)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from urllib3 import encode_multipart_formdata

from modelyard.schema.errors import GatewayError
from modelyard.server.endpoint_forms import MAX_FIELD_BYTES, MAX_PARTS, Form, read_form
from modelyard.server.endpoints import form_fields, search_units
from modelyard.server.http import ClientGone, Request

BOUNDARY = "unit-boundary"


def request(body: bytes, content_type: str | None = None, *, chunk: int = 7000, length: bool = False) -> Request:
    headers = [(b"content-type", (content_type or f"multipart/form-data; boundary={BOUNDARY}").encode())]
    if length:
        headers.append((b"content-length", str(len(body)).encode()))
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1} for i, piece in enumerate(pieces)
    ]
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        if not messages:
            return {"type": "http.disconnect"}
        received.append(1)
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("the reader sends nothing")

    made = Request({"type": "http", "headers": headers, "method": "POST", "path": "/x"}, receive, send)
    made.scope["received"] = received
    return made


def read(req: Request, file_limit: int = 1_000_000) -> Form:
    return asyncio.run(read_form(req, file_field="file", file_limit=file_limit))


def part(name: str, value: bytes, filename: str | None = None, extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode() + value + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


def test_fields_and_the_file_are_kept_across_chunk_boundaries() -> None:
    audio = bytes(range(256)) * 100 + b"\r\n--unit-bound"  # looks like a boundary, is not one
    body, content_type = encode_multipart_formdata(
        [
            ("model", "whisper"),
            ("timestamp_granularities[]", "word"),
            ("timestamp_granularities[]", "segment"),
            ("prompt", "Ünïcode"),
            ("file", ("clip.wav", audio, "audio/wav")),
        ],
        boundary=BOUNDARY,
    )
    form = read(request(body, content_type, chunk=13))
    assert form.fields == {
        "model": ["whisper"],
        "timestamp_granularities[]": ["word", "segment"],
        "prompt": ["Ünïcode"],
    }
    assert form.file is not None
    assert (form.file.filename, form.file.content_type, form.file.data) == ("clip.wav", "audio/wav", audio)
    assert form_fields(form) == {
        "model": "whisper",
        "timestamp_granularities[]": ["word", "segment"],
        "prompt": "Ünïcode",
    }


def test_a_repeated_single_field_keeps_the_last_value() -> None:
    form = read(request(part("model", b"a") + part("model", b"b") + END))
    assert form.value("model") == "b" and form_fields(form) == {"model": "b"}


def bad(req: Request, file_limit: int = 1_000_000) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        read(req, file_limit)
    return caught.value


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        (b"".join(part(f"f{i}", b"x") for i in range(MAX_PARTS + 1)) + END, None, 400, "more than 64 parts"),
        (part("prompt", b"p" * (MAX_FIELD_BYTES + 1)) + END, None, 400, "longer than"),
        (part("x", b"y", extra="X-Long: " + "a" * 5000 + "\r\n") + END, None, 400, "Malformed multipart"),
        (
            part("x", b"y", extra="".join(f"X-{i}: 1\r\n" for i in range(9))) + END,
            None,
            400,
            "Malformed multipart",
        ),
        (part("model", b"whisper"), None, 400, "ended before its closing boundary"),
        (b"", None, 400, "ended before its closing boundary"),
        (part("file", b"a" * 2000, "a.wav") + END, None, 413, "larger than the limit of 1000 bytes"),
        (part("file", b"a", "a.wav") + part("file", b"b", "b.wav") + END, None, 400, "More than one `file`"),
        (f"--{BOUNDARY}\r\nX-Other: 1\r\n\r\nvalue\r\n".encode() + END, None, 400, "Content-Disposition"),
        (part("prompt", b"\xff\xfe") + END, None, 400, "not UTF-8"),
        (END, "application/json", 400, "multipart/form-data"),
        (END, "multipart/form-data", 400, "boundary"),
        (END, "multipart/form-data; boundary=" + "b" * 201, 400, "too long"),
    ],
)
def test_each_bound(body: bytes, content_type: str | None, status: int, needle: str) -> None:
    error = bad(request(body, content_type), file_limit=1000)
    assert error.status == status
    assert needle in error.message


def test_the_file_bound_names_the_field_and_stops_reading() -> None:
    body = part("file", b"a" * 500_000, "a.wav") + END
    req = request(body, chunk=10_000)
    error = bad(req, file_limit=100_000)
    assert error.status == 413 and error.param == "file"
    assert len(req.scope["received"]) <= 12  # stopped at the bound, not at the end of 50 chunks


def test_an_announced_length_over_the_bound_is_413_before_any_read() -> None:
    body = part("file", b"a" * 3_000_000, "a.wav") + END
    req = request(body, length=True)
    error = bad(req, file_limit=100)
    assert error.status == 413 and error.param == "file"
    assert req.scope["received"] == []


def test_a_client_gone_mid_body_is_client_gone() -> None:
    body = part("file", b"a" * 100, "a.wav")
    req = request(body)
    req.receive = _gone_after(req.receive)
    with pytest.raises(ClientGone):
        read(req)


def _gone_after(receive: Any) -> Any:
    async def wrapped() -> dict[str, Any]:
        message: dict[str, Any] = await receive()
        message["more_body"] = True  # the body never ends: the next receive is the disconnect
        return message

    return wrapped


@pytest.mark.parametrize(("documents", "units"), [(1, 1), (100, 1), (101, 2), (1000, 10), (0, 1)])
def test_search_units(documents: int, units: int) -> None:
    assert search_units(documents) == units
