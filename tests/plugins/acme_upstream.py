"""A loopback server speaking the Acme wire format (tests/plugins/acme_adapter.py), for end-to-end tests.

It answers every call with the words of the last turn, reversed, in the tone asked for, and records the
requests it received so a test can see what the adapter sent. Run in a thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

from tests.plugins.acme_adapter import PATH

SEEN = web.AppKey("seen", list)


def reply_to(body: dict[str, Any]) -> str:
    text = " ".join(reversed(body["turns"][-1]["says"].split()))
    return text.upper() if body.get("tone") == "shouty" else text


async def _complete(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    request.app[SEEN].append({"headers": dict(request.headers), "body": body})
    if request.headers.get("x-acme-key") != "acme-secret":
        return web.json_response({"trouble": {"what": "key", "why": "who are you"}}, status=401)
    reply = reply_to(body)
    spent = {"read": sum(len(t["says"].split()) for t in body["turns"]), "wrote": len(reply.split())}
    if not body.get("stream"):
        return web.json_response({"reply": reply, "engine": body["engine"], "spent": spent})
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for word in reply.split():
        await response.write(f"data: {json.dumps({'bit': word + ' '})}\n\n".encode())
    await response.write(f"data: {json.dumps({'over': True, 'spent': spent})}\n\n".encode())
    await response.write_eof()
    return response


class AcmeUpstream:
    """`with AcmeUpstream() as acme: acme.url` — the server on a free loopback port, in its own thread."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> AcmeUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app[SEEN] = self.seen
        app.router.add_post(PATH, _complete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
