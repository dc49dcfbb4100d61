"""Each fault, as a raw client sees it, on each wire format (forced per request with `x-sim-fault`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelyard.sim import SimServer
from tests.unit.sim.sim_helpers import fleet, sse

WIRES = ["openai", "anthropic", "gemini"]


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    spec = {"name": "m", "faults": {"retry_after_s": 2, "hang_s": 0.6}, "output_tokens": 60}
    with SimServer(fleet(spec)) as sim:
        yield sim


def request(sim: SimServer, wire: str, stream: bool) -> tuple[str, dict[str, Any]]:
    """URL and body of a chat request on `wire`."""
    messages = [{"role": "user", "content": "hello"}]
    if wire == "openai":
        return sim.openai_base + "/chat/completions", {"model": "m", "messages": messages, "stream": stream}
    if wire == "anthropic":
        body = {"model": "m", "messages": messages, "max_tokens": 500, "stream": stream}
        return sim.url + "/v1/messages", body
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    contents = [{"role": "user", "parts": [{"text": "hello"}]}]
    return f"{sim.gemini_base}/models/m:{method}", {"contents": contents}


def call(sim: SimServer, wire: str, fault: str, stream: bool = False, timeout: float = 5.0) -> httpx.Response:
    url, body = request(sim, wire, stream)
    return httpx.post(url, json=body, headers={"x-sim-fault": fault}, timeout=timeout)


@pytest.mark.parametrize("wire", WIRES)
def test_rate_limit_is_429_with_retry_after_in_the_provider_format(server: SimServer, wire: str) -> None:
    r = call(server, wire, "rate_limit")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2" and r.headers["retry-after-ms"] == "2000"
    error = r.json()["error"]
    expected = {
        "openai": ("code", "rate_limit_exceeded"),
        "anthropic": ("type", "rate_limit_error"),
        "gemini": ("status", "RESOURCE_EXHAUSTED"),
    }[wire]
    assert error[expected[0]] == expected[1]
    if wire == "anthropic":
        assert r.json()["type"] == "error"


@pytest.mark.parametrize(
    ("wire", "status", "field", "value"),
    [
        ("openai", 500, "type", "server_error"),
        ("anthropic", 500, "type", "api_error"),
        ("gemini", 500, "status", "INTERNAL"),
    ],
)
def test_server_error_is_500(server: SimServer, wire: str, status: int, field: str, value: str) -> None:
    r = call(server, wire, "server_error", stream=True)  # status faults come before any stream
    assert r.status_code == status and r.json()["error"][field] == value


@pytest.mark.parametrize(
    ("wire", "status", "field", "value"),
    [
        ("openai", 503, "type", "server_error"),
        ("anthropic", 529, "type", "overloaded_error"),
        ("gemini", 503, "status", "UNAVAILABLE"),
    ],
)
def test_unavailable_is_503_or_anthropic_529(server: SimServer, wire: str, status: int, field: str, value: str) -> None:
    r = call(server, wire, "unavailable")
    assert r.status_code == status and r.json()["error"][field] == value


@pytest.mark.parametrize("wire", WIRES)
def test_hang_sends_nothing_until_the_client_gives_up(server: SimServer, wire: str) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        call(server, wire, "hang", timeout=0.3)
    assert time.monotonic() - started < 2.0  # a timeout, not the server's drop at hang_s (another error)
    assert call(server, wire, "none").status_code == 200  # the server is fine


def test_hang_is_capped_by_hang_s_then_the_connection_drops(server: SimServer) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        call(server, "openai", "hang", timeout=5.0)
    assert 0.55 <= time.monotonic() - started < 2.0


@pytest.mark.parametrize("wire", WIRES)
def test_reset_drops_the_connection_mid_body(server: SimServer, wire: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        call(server, wire, "reset")


@pytest.mark.parametrize("wire", WIRES)
def test_reset_drops_a_stream_as_it_begins(server: SimServer, wire: str) -> None:
    """A reset is a connection dropped before any answer event (a mid-stream cut is `cut_stream`)."""
    url, body = request(server, wire, True)
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", url, json=body, headers={"x-sim-fault": "reset"}) as r,
    ):
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            received += chunk
    assert received == b""


@pytest.mark.parametrize("wire", WIRES)
def test_malformed_body_is_200_but_not_json(server: SimServer, wire: str) -> None:
    r = call(server, wire, "malformed")
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)


@pytest.mark.parametrize("wire", WIRES)
def test_malformed_stream_has_an_event_that_is_not_json(server: SimServer, wire: str) -> None:
    r = call(server, wire, "malformed", stream=True)
    assert r.status_code == 200
    bad = 0
    for _, data in sse(r.content):
        if data == b"[DONE]":
            continue
        try:
            json.loads(data)
        except json.JSONDecodeError:
            bad += 1
    assert bad == 1


@pytest.mark.parametrize("wire", WIRES)
def test_cut_stream_ends_cleanly_without_the_terminal_marker(server: SimServer, wire: str) -> None:
    clean = sse(call(server, wire, "none", stream=True).content)
    r = call(server, wire, "cut_stream", stream=True)  # a clean end of the body: no transport error
    assert r.status_code == 200
    events = sse(r.content)
    assert 0 < len(events) < len(clean)
    payloads = [json.loads(data) for _, data in events]  # what was sent is well formed
    if wire == "openai":
        assert clean[-1][1] == b"[DONE]"
        assert all(p["choices"][0]["finish_reason"] is None for p in payloads)
    elif wire == "anthropic":
        assert clean[-1][0] == "message_stop"
        assert {"message_stop", "message_delta"}.isdisjoint(name for name, _ in events)
    else:
        assert "finishReason" in json.loads(clean[-1][1])["candidates"][0]
        assert all("finishReason" not in p["candidates"][0] for p in payloads)


@pytest.mark.parametrize("wire", WIRES)
def test_cut_stream_on_a_plain_request_behaves_as_reset(server: SimServer, wire: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        call(server, wire, "cut_stream")


def test_embeddings_get_faults_too(server: SimServer) -> None:
    url = server.openai_base + "/embeddings"
    r = httpx.post(url, json={"model": "m", "input": "x"}, headers={"x-sim-fault": "rate_limit"})
    assert r.status_code == 429
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json={"model": "m", "input": "x"}, headers={"x-sim-fault": "reset"})


def test_unknown_fault_name_is_a_bad_request(server: SimServer) -> None:
    r = call(server, "openai", "explode")
    assert r.status_code == 400 and "x-sim-fault" in r.json()["error"]["message"]


def test_fault_counts_show_in_stats(server: SimServer) -> None:
    server.reset()
    for fault in ("rate_limit", "server_error", "malformed", "none"):
        call(server, "openai", fault)
    stats = server.stats()["models"]["m"]
    assert stats["requests"] == 4 and stats["successes"] == 1
    faults = stats["faults"]
    assert faults["rate_limit"] == faults["server_error"] == faults["malformed"] == 1
    assert faults["hang"] == faults["reset"] == faults["unavailable"] == faults["cut_stream"] == 0
    assert stats["by_wire"] == {"openai": 4, "anthropic": 0, "gemini": 0}


def test_deliberate_drops_leave_the_server_log_quiet(server: SimServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        for wire in WIRES:
            with pytest.raises(httpx.RemoteProtocolError):
                call(server, wire, "reset")
        with pytest.raises(httpx.RemoteProtocolError):
            call(server, "openai", "hang", timeout=5.0)
        assert call(server, "openai", "none").status_code == 200
        time.sleep(0.05)
    noisy = [r for r in caplog.records if r.name.startswith("uvicorn") and r.levelno >= logging.WARNING]
    assert noisy == []
