"""The recording proxy passes requests and answers through unchanged and keeps them, credentials masked."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from modelyard.sim.server import SimServer
from modelyard.testing.recorder import RecordingProxy, load_recording

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Repeat: through the proxy"}]}


def test_proxy_records_exactly_what_was_sent_and_answered(sim: SimServer, tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    raw = json.dumps(BODY, indent=1).encode()  # odd spacing: the body must be kept byte for byte
    with RecordingProxy(sim.url, out=out) as proxy:
        answer = httpx.post(
            f"{proxy.url}/v1/chat/completions?trace=1",
            content=raw,
            headers={"authorization": "Bearer sk-sim", "content-type": "application/json", "x-extra": "kept"},
            timeout=10,
        )
        kept = proxy.snapshot()
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "through the proxy"
    [exchange] = kept
    assert (exchange.method, exchange.path, exchange.status) == ("POST", "/v1/chat/completions?trace=1", 200)
    assert exchange.body == raw.decode()
    assert exchange.header("x-extra") == "kept"
    assert exchange.header("authorization") == "<redacted>"
    assert json.loads(exchange.response_body) == answer.json()
    assert "sk-sim" not in out.read_text()
    assert load_recording(out) == kept


def test_proxy_streams_through(sim: SimServer) -> None:
    body = {**BODY, "stream": True}
    headers = {"authorization": "Bearer sk-sim"}
    with RecordingProxy(sim.url) as proxy:
        with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=10) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            streamed = b"".join(r.iter_bytes()).decode()
        [exchange] = proxy.snapshot()
    assert streamed.rstrip().endswith("data: [DONE]")
    assert exchange.response_body == streamed
    assert exchange.json()["stream"] is True


def test_proxy_answers_502_when_the_upstream_is_gone(tmp_path: Path) -> None:
    with RecordingProxy("http://127.0.0.1:9") as proxy:
        answer = httpx.get(f"{proxy.url}/v1/models", timeout=10)
        [exchange] = proxy.snapshot()
    assert answer.status_code == 502 and exchange.status == 502
    assert "upstream failed" in exchange.response_body
