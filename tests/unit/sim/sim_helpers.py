"""Helpers for the simulator's tests: in-process ASGI calls, SSE parsing, small fleets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from modelyard.providers.sse import SSEParser
from modelyard.sim import Fleet
from modelyard.sim.asgi import Abort
from modelyard.sim.fleet import fleet_from_dict


@dataclass
class Result:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: The app dropped the connection (a `reset` or `cut_stream` fault, or a capped hang).
    aborted: bool = False

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    body: Any = b"",
    headers: dict[str, str] | None = None,
    query: bytes = b"",
) -> Result:
    """Call the ASGI app directly (no sockets): fast enough for thousand-request statistics."""
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent = False
    result = Result()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        else:
            result.body += message.get("body", b"")

    try:
        await app(scope, receive, send)
    except Abort:
        result.aborted = True
    return result


def sse(raw: bytes) -> list[tuple[str | None, bytes]]:
    """(event name, data) of every event in a raw SSE body."""
    parser = SSEParser()
    events = parser.feed(raw) + parser.flush()
    return [(e.event, e.data) for e in events]


def fleet(*models: dict[str, Any], seed: int = 0, api_key: str | None = None) -> Fleet:
    """A fleet of the given model dicts; each defaults to an instant chat model."""
    return fleet_from_dict({"seed": seed, "api_key": api_key, "models": list(models)})


def chat_body(model: str = "m", text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}
