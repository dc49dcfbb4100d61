"""The ASGI side of a gateway request and nothing else, for bench/server_protocol.py: read the JSON body,
answer with the gateway's response headers, whole or as a three-piece stream."""

from __future__ import annotations

import json
from typing import Any

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how are you?"}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27, "cost": 0.0000123},
    }
).encode()
EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
)
HEADERS = [
    (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
    (b"x-modelyard-deployment", b"primary"),
    (b"x-modelyard-provider", b"openai"),
    (b"x-modelyard-attempts", b"1"),
    (b"x-modelyard-cost-usd", b"0.0000123"),
    (b"x-modelyard-latency-ms", b"0.42"),
    (b"x-ratelimit-remaining-requests", b"999"),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/v1/models" or b'"stream":true' not in body:
        headers = [(b"content-type", b"application/json"), *HEADERS, (b"content-length", b"%d" % len(ANSWER))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})
        return
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), *HEADERS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": EVENT, "more_body": True})
    await send({"type": "http.response.body", "body": EVENT, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
