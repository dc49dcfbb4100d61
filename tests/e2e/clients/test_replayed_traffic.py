"""What Claude Code and Codex really sent, replayed against the gateway without the clients themselves.

fixtures/*.jsonl are recorded by the live tests (test_claude_code.py, test_codex.py) from the real clients
running here (`MODELYARD_RECORD_CLIENT_FIXTURES=1`), never written by hand: every request as the client sent
it (credentials masked). Replaying them keeps the gateway honest about those exact bodies and headers (the
7-entry anthropic-beta, a mid-conversation system message, Codex's namespace tools, ...) on a machine without
npm, and shows in a diff when a client upgrade changes what it sends.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from modelyard.server.background import BackgroundServer
from modelyard.testing.recorder import Exchange, load_recording
from tests.e2e.clients.conftest import FIXTURES

#: Headers the replay must not copy: the transport's own and the masked credentials (replaced by a test key).
_SKIP = frozenset({"host", "content-length", "connection", "accept-encoding", "authorization", "x-api-key"})


def _recordings(prefix: str) -> list[Path]:
    return sorted(FIXTURES.glob(f"{prefix}_*.jsonl"))


def _replay(gateway: BackgroundServer, exchange: Exchange) -> httpx.Response:
    headers = {k: v for k, v in exchange.headers.items() if k.lower() not in _SKIP}
    if exchange.header("x-api-key") is not None:
        headers["x-api-key"] = "sk-replay"
    if exchange.header("authorization") is not None:
        headers["authorization"] = "Bearer sk-replay"
    return httpx.request(
        exchange.method,
        gateway.url + exchange.path,
        headers=headers,
        content=exchange.body.encode("utf-8") if exchange.body else None,
        timeout=30,
    )


def _check(gateway: BackgroundServer, recording: Path, last_event: str) -> None:
    exchanges = load_recording(recording)
    posts = [e for e in exchanges if e.method == "POST"]
    assert posts, f"{recording.name} holds no request"
    for exchange in posts:
        answer = _replay(gateway, exchange)
        assert answer.status_code == exchange.status, (exchange.path, answer.status_code, answer.text[:500])
        if exchange.json().get("stream"):
            assert answer.headers["content-type"].startswith("text/event-stream")
            assert f"event: {last_event}" in answer.text, answer.text[-1000:]


@pytest.mark.parametrize("recording", _recordings("claude_code"), ids=lambda p: p.stem)
def test_claude_code_replayed_traffic(clients_gateway: BackgroundServer, recording: Path) -> None:
    _check(clients_gateway, recording, "message_stop")


@pytest.mark.parametrize("recording", _recordings("codex"), ids=lambda p: p.stem)
def test_codex_replayed_traffic(clients_gateway: BackgroundServer, recording: Path) -> None:
    _check(clients_gateway, recording, "response.completed")
