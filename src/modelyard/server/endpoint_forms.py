"""Bounded `multipart/form-data` reading for the upload endpoints (audio transcriptions and translations).

The body is fed to python-multipart's streaming parser as it arrives, so nothing beyond the bounds is ever
held: one file part of at most `file_limit` bytes, at most `MAX_PARTS` parts, text fields of at most
`MAX_FIELD_BYTES` each, part headers of at most `MAX_HEADER_BYTES` (a line) and `MAX_HEADERS` (a count), and
a whole body of at most `file_limit + MAX_FORM_OVERHEAD`. A hostile form (a million tiny fields, a 10 MB
header line, a part that never ends) is a 4xx as soon as it crosses a bound, not a memory spike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from modelyard.schema.endpoints import UploadedFile
from modelyard.schema.errors import GatewayError
from modelyard.server.http import ClientGone, Request

#: Parts a form may have: OpenAI's transcription form has about ten fields; repeated `include[]` and
#: `timestamp_granularities[]` values fit well within this.
MAX_PARTS = 64
#: One text field's value (a `prompt` is at most a few hundred tokens).
MAX_FIELD_BYTES = 64 * 1024
#: One part header line, and the header lines a part may have.
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 8
#: What a form may carry besides its file (the text fields, part headers and boundaries).
MAX_FORM_OVERHEAD = MAX_PARTS * (MAX_HEADER_BYTES + 256) + 16 * MAX_FIELD_BYTES


@dataclass(slots=True)
class Form:
    """A parsed form: its text fields (a repeated name keeps every value, in order) and its one file."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    file: UploadedFile | None = None

    def value(self, name: str) -> str | None:
        """The last value of a text field (a form's repeat of a single-valued field: the last wins)."""
        values = self.fields.get(name)
        return values[-1] if values else None


class _Collector:
    """python-multipart callbacks that build a `Form`, raising a GatewayError at the first bound crossed."""

    def __init__(self, file_field: str, file_limit: int) -> None:
        self.form = Form()
        self.file_field = file_field
        self.file_limit = file_limit
        self.parts = 0
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._data = bytearray()
        self._name = ""
        self._filename: str | None = None
        self._content_type = ""

    # part boundaries
    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise GatewayError(400, f"The form has more than {MAX_PARTS} parts", code="invalid_form")
        self._headers = {}
        self._data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name = bytearray()
        self._header_value = bytearray()

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in params:
            raise GatewayError(
                400, "A form part has no `Content-Disposition: form-data; name=...`", code="invalid_form"
            )
        self._name = params[b"name"].decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")
        self._content_type = self._headers.get("content-type", "")
        if self._filename is not None and self._name == self.file_field and self.form.file is not None:
            raise GatewayError(400, f"More than one `{self.file_field}` in the form", param=self.file_field)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        is_file = self._filename is not None
        bound = self.file_limit if is_file else MAX_FIELD_BYTES
        if len(self._data) + (end - start) > bound:
            if is_file:
                raise upload_too_large(self._name, self.file_limit)
            raise GatewayError(400, f"`{self._name[:64]}` is longer than {bound} bytes", param=self._name[:64])
        self._data += data[start:end]

    def on_part_end(self) -> None:
        if self._filename is not None:
            if self._name == self.file_field:
                self.form.file = UploadedFile(
                    field=self._name,
                    filename=self._filename[:255],
                    content_type=self._content_type[:255] or "application/octet-stream",
                    data=bytes(self._data),
                )
            # another file field: nothing the endpoints read, dropped (its size was bounded all the same)
        else:
            try:
                text = self._data.decode("utf-8")
            except UnicodeDecodeError:
                raise GatewayError(400, f"`{self._name[:64]}` is not UTF-8 text", param=self._name[:64]) from None
            self.form.fields.setdefault(self._name, []).append(text)
        self._data = bytearray()

    def on_end(self) -> None:
        self.ended = True


def upload_too_large(name: str, limit: int) -> GatewayError:
    return GatewayError(
        413, f"`{name[:64]}` is larger than the limit of {limit} bytes", param=name[:64], code="request_too_large"
    )


def form_boundary(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data` body, or a 400 (an upload endpoint takes nothing else)."""
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise GatewayError(400, "Expected a multipart/form-data body with a boundary", code="invalid_form")
    if len(boundary) > 200:
        raise GatewayError(400, "The multipart boundary is too long", code="invalid_form")
    return boundary


async def read_form(request: Request, *, file_field: str, file_limit: int) -> Form:
    """The request's form, parsed while it arrives; 413 when the body or the file crosses its bound."""
    boundary = form_boundary(request.header(b"content-type"))
    limit = file_limit + MAX_FORM_OVERHEAD
    announced = request.header(b"content-length")
    if announced is not None:
        try:
            size = int(announced)
        except ValueError:
            raise GatewayError(400, "Invalid Content-Length header") from None
        if size > limit:
            raise upload_too_large(file_field, file_limit)
    collector = _Collector(file_field, file_limit)
    callbacks = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_end",
        )
    }
    parser = MultipartParser(
        boundary,
        callbacks,  # type: ignore[arg-type]  # a dict of bound methods: the TypedDict's keys, untyped here
        max_header_count=MAX_HEADERS,
        max_header_size=MAX_HEADER_BYTES,
    )
    received = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        more = bool(message.get("more_body"))
        received += len(chunk)
        if received > limit:
            raise upload_too_large(file_field, file_limit)
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise GatewayError(400, f"Malformed multipart body: {str(exc)[:120]}", code="invalid_form") from None
    try:
        parser.finalize()
    except FormParserError:
        raise GatewayError(400, "Malformed multipart body", code="invalid_form") from None
    if not collector.ended:
        raise GatewayError(400, "The multipart body ended before its closing boundary", code="invalid_form")
    return collector.form
