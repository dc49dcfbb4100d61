"""The floor a Python gateway can reach: raw ASGI under uvicorn + one aiohttp client, no features.

    UPSTREAM=http://127.0.0.1:9101 python -m uvicorn passthrough:app --app-dir bench --port 9201 \
        --loop uvloop --http httptools --no-access-log --log-level warning
"""

import os

import aiohttp

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9101")
DROP = {b"host", b"content-length", b"connection", b"transfer-encoding", b"accept-encoding"}
state: dict[str, aiohttp.ClientSession] = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["session"] = aiohttp.ClientSession(
                    UPSTREAM, connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False
                )
                await send({"type": "lifespan.startup.complete"})
            else:
                await state["session"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k not in DROP}
    async with state["session"].request(scope["method"], scope["path"], data=body, headers=headers) as up:
        out = [(k.lower().encode(), v.encode()) for k, v in up.headers.items() if k.lower().encode() not in DROP]
        await send({"type": "http.response.start", "status": up.status, "headers": out})
        async for chunk in up.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
