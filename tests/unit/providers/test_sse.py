"""The SSE parser against the WHATWG framing, however the bytes are cut into reads.

The parser has a fast path for a buffer of one-line `data:` events (the common stream) and the general path
for everything else; both must give what a plain line-by-line reading of the spec gives, for any split.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.providers.base import SSEEvent
from modelyard.providers.sse import SSEParser


def reference(stream: bytes) -> list[SSEEvent]:
    """The WHATWG event-stream interpretation, line by line (CRLF, CR and LF line ends), dispatching on a
    blank line; an event with neither data nor a name is not dispatched (as the parser does). A CR that ends
    what has arrived is not a line end yet: the LF of a CRLF may follow in the next read."""
    if stream.endswith(b"\r"):
        stream = stream[:-1]
    text = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    events: list[SSEEvent] = []
    data: list[bytes] = []
    name: str | None = None
    lines = text.split(b"\n")
    for line in lines[:-1]:  # the last piece has no line end yet: not a complete line
        if not line:
            if data or name is not None:
                events.append(SSEEvent(b"\n".join(data), name))
            data, name = [], None
            continue
        if line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    return events


def parse_in_reads(stream: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(stream[start:cut])
        start = cut
    events += parser.feed(stream[start:])
    return events


_PAYLOAD = st.sampled_from([b'{"a":1}', b"x", b"", b"[DONE]", b" spaced", b"data: inside", b"a:b"])
_BLOCK = st.one_of(
    _PAYLOAD.map(lambda p: b"data: " + p),  # the fast path's shape
    _PAYLOAD.map(lambda p: b"data:" + p),  # no space after the colon
    st.lists(_PAYLOAD, min_size=2, max_size=3).map(lambda ps: b"\n".join(b"data: " + p for p in ps)),
    _PAYLOAD.map(lambda p: b"event: message\ndata: " + p),
    st.just(b": a comment"),
    st.just(b""),  # an extra blank line
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    blocks = draw(st.lists(_BLOCK, min_size=1, max_size=8))
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    body = b"\n\n".join(blocks) + draw(st.sampled_from([b"\n\n", b"\n", b""]))
    stream = body.replace(b"\n", newline)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=6))
    return stream, cuts


@settings(max_examples=400, deadline=None)
@given(streams())
def test_any_stream_cut_anywhere_parses_as_the_spec_reads_it(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    assert parse_in_reads(stream, cuts) == reference(stream)


def test_one_line_data_events_in_one_read() -> None:
    stream = b'data: {"a":1}\n\ndata: [DONE]\n\ndata: par'
    parser = SSEParser()
    assert parser.feed(stream) == [SSEEvent(b'{"a":1}'), SSEEvent(b"[DONE]")]
    assert parser.pending == b"data: par"
    assert parser.feed(b"tial\n\n") == [SSEEvent(b"partial")]


def test_a_run_of_blank_lines_after_one_line_events_keeps_what_the_spec_keeps() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b\n\n\n") == [SSEEvent(b"a"), SSEEvent(b"b")]
    assert parser.feed(b"data: c\n\n") == [SSEEvent(b"c")]


def test_a_multi_line_event_among_one_line_events() -> None:
    stream = b"data: a\n\ndata: b\ndata: c\n\nevent: done\ndata: d\n\n"
    assert SSEParser().feed(stream) == [SSEEvent(b"a"), SSEEvent(b"b\nc"), SSEEvent(b"d", "done")]
