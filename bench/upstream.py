"""A fast OpenAI-compatible mock upstream for overhead benchmarks.

An asyncio Protocol with httptools' parser and keep-alive, no framework, so it costs far less CPU per
request than any Python gateway in front of it (check: `python bench/gateway_bench.py --only direct`).
It answers POST /v1/chat/completions with a fixed completion (usage included) or, when the body asks
for `"stream": true`, an SSE stream of 8 content chunks, a finish chunk, a usage chunk when
`stream_options.include_usage` is set, and `[DONE]`. `--delay-ms` waits before answering (before the first
event when streaming).

    python bench/upstream.py --port 9101 [--delay-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httptools

WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " dog"]


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "The quick brown fox jumps."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
        },
        separators=(",", ":"),
    ).encode()


BIG_STREAM_FROM = 1000  # max_tokens at which a stream carries max_tokens chunks (backpressure tests)


def _events(model: str, include_usage: bool, chunks: int = len(WORDS)) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def event(choices: list[dict[str, object]], usage: dict[str, int] | None = None) -> bytes:
        body = dict(base, choices=choices)
        if include_usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    out = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    words = [WORDS[i % len(WORDS)] for i in range(chunks)]
    out += [event([{"index": 0, "delta": {"content": w}, "finish_reason": None}]) for w in words]
    out.append(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if include_usage:
        out.append(event([], {"prompt_tokens": 20, "completion_tokens": chunks, "total_tokens": 20 + chunks}))
    out.append(b"data: [DONE]\n\n")
    return out


class _Handler(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body = bytearray()
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        body, url = bytes(self.body), self.url
        self.body, self.url = bytearray(), b""
        keep_alive = self.parser.should_keep_alive()
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._answer, url, body, keep_alive)
        else:
            self._answer(url, body, keep_alive)

    def _answer(self, url: bytes, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not url.endswith(b"/chat/completions"):
            transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        request = json.loads(body or b"{}")
        model = str(request.get("model", "bench"))
        if request.get("stream"):
            include = bool((request.get("stream_options") or {}).get("include_usage"))
            max_tokens = request.get("max_tokens")
            big = isinstance(max_tokens, int) and max_tokens >= BIG_STREAM_FROM
            payload = b"".join(_events(model, include, max_tokens if big else len(WORDS)))
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            transport.write(head + f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n")
        else:
            payload = _completion(model)
            transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
        if not keep_alive:
            transport.close()


async def serve(port: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Handler(delay_ms / 1000), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(serve(args.port, args.delay_ms))


if __name__ == "__main__":
    main()
