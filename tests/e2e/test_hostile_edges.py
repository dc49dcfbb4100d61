"""Hostile clients at the edges (issue #10, items 3 and 6), against a real `modelyard serve` process.

Each test pins a defect found by probing: a NaN timeout header leaking concurrency slots, a timeout header
raising the operator's bound, non-streaming hangs waiting for `total`, provider error text reaching clients,
numbers that overflow or crash, 10k-deep JSON, slow headers and slow bodies holding connections.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess

SIM_KEY = "right-key"
WRONG_KEY = "sk-wrong-0123456789abcdefghij"
ASK: Any = [{"role": "user", "content": "Repeat: ok"}]
BOUND_S = 1.0  # the process's header and body deadlines


@pytest.fixture(scope="module")
def keyed_sim() -> Iterator[SimServer]:
    fleet = Fleet(api_key=SIM_KEY, models=[SimModel(name="sim-small", output_tokens=4)])
    with SimServer(fleet, seed=3, instant=True) as server:
        yield server


def config_text(sim: SimServer) -> str:
    openai_dep = f'provider: openai, model: sim-small, api_base: "{sim.openai_base}", api_key: {SIM_KEY}'
    hang = "headers: {x-sim-fault: hang}"
    return f"""
deployments:
  - {{name: capped, {openai_dep}, price: {{input: 0.1, output: 0.4}}, limits: {{max_concurrency: 4}}}}
  - {{name: hung, {openai_dep}, {hang}, timeouts: {{connect: 2, first_token: 1, response: 1, total: 30}}}}
  - {{name: hung-total, {openai_dep}, {hang}, timeouts: {{connect: 2, first_token: 30, total: 1.5}}}}
  - {{name: steady, {openai_dep}}}
  - {{name: badkey, provider: openai, model: sim-small, api_base: "{sim.openai_base}", api_key: {WRONG_KEY}}}
  - {{name: claude, provider: anthropic, model: sim-small, api_base: "{sim.url}", api_key: {SIM_KEY}}}
models:
  capped: {{candidates: [capped]}}
  failover: {{strategy: priority, candidates: [hung, steady]}}
  hung-total: {{candidates: [hung-total]}}
  badkey: {{candidates: [badkey]}}
  claude: {{candidates: [claude]}}
routing: {{retries: 0}}
"""


@pytest.fixture(scope="module")
def gateway(keyed_sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    path = tmp_path_factory.mktemp("edges") / "gateway.yaml"
    path.write_text(config_text(keyed_sim))
    env = {"MODELYARD_HEADER_TIMEOUT_S": str(BOUND_S), "MODELYARD_BODY_TIMEOUT_S": str(BOUND_S)}
    with GatewayProcess(path, env=env) as process:
        yield process


def post(
    gw: GatewayProcess,
    body: dict[str, Any] | bytes,
    path: str = "/v1/chat/completions",
    timeout: float = 10,
    **headers: str,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        gw.url + path, content=content, timeout=timeout, headers={"content-type": "application/json", **headers}
    )


def chat(model: str = "capped", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": ASK, **fields}


def assert_400(resp: httpx.Response, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert "Traceback" not in resp.text
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# ---------------------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "0", "-5", "1e300", "abc"])
def test_a_bad_timeout_header_is_a_400_and_leaks_no_concurrency_slot(gateway: GatewayProcess, value: str) -> None:
    for _ in range(5):  # more than the deployment's max_concurrency of 4
        assert_400(post(gateway, chat(), **{"x-modelyard-timeout-ms": value}), "x-modelyard-timeout-ms")
    ok = post(gateway, chat())
    assert ok.status_code == 200, ok.text  # the deployment still has all its slots


def test_the_timeout_header_only_lowers_the_configured_total(gateway: GatewayProcess) -> None:
    started = time.monotonic()
    resp = post(gateway, chat("hung-total"), timeout=15, **{"x-modelyard-timeout-ms": "60000"})
    elapsed = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert elapsed < 5, f"waited {elapsed:.1f} s: the header raised the configured 1.5 s total"


def test_a_hung_non_streaming_upstream_fails_over_after_the_response_timeout(gateway: GatewayProcess) -> None:
    started = time.monotonic()
    resp = post(gateway, chat("failover"), timeout=15)
    elapsed = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-modelyard-model"] == "steady"
    assert elapsed < 5, f"failed over after {elapsed:.1f} s, not after `response` (1 s)"


# ---------------------------------------------------------------------------------------- provider errors


def test_an_upstream_auth_error_reaches_the_client_as_a_generic_message(gateway: GatewayProcess) -> None:
    resp = post(gateway, chat("badkey"))
    assert resp.status_code == 502, resp.text
    message = resp.json()["error"]["message"]
    assert "Incorrect API key" not in message and "sk-" not in message
    assert "credentials" in message


# ---------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 100000000000000000000}, "max_tokens"),
        ({"max_tokens": 1e20}, "max_tokens"),
        ({"max_completion_tokens": 10**8}, "max_completion_tokens"),
        ({"max_tokens": 1e400}, None),  # not representable: a JSON error
        ({"max_tokens": "12"}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 1e400}, None),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"seed": 2**70}, "seed"),
        ({"modelyard": {"constraints": {"max_cost_per_request": "x"}}}, "modelyard.constraints.max_cost_per_request"),
        ({"modelyard": {"constraints": {"max_latency_ms": -1}}}, "modelyard.constraints.max_latency_ms"),
        ({"modelyard": {"constraints": {"min_quality": [1]}}}, "modelyard.constraints.min_quality"),
        ({"modelyard": {"constraints": {"max_cost": 1}}}, "modelyard.constraints.max_cost"),
    ],
)
def test_out_of_range_numbers_are_a_400_naming_the_parameter(
    gateway: GatewayProcess, fields: dict[str, Any], param: str | None
) -> None:
    body = json.dumps(chat(**fields)).replace("Infinity", "1e400").encode()
    assert_400(post(gateway, body), param)


def test_numbers_in_range_are_served(gateway: GatewayProcess) -> None:
    fields = {
        "max_tokens": 10_000_000,
        "n": 1,
        "temperature": 2,
        "top_p": 0,
        "presence_penalty": -2,
        "modelyard": {"constraints": {"max_cost_per_request": 1.5, "min_quality": 0}},
    }
    resp = post(gateway, chat(**fields))
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"max_tokens": 10**20}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),  # Anthropic's range is 0..1
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"max_tokens": 1e20}, "max_tokens"),
    ],
)
def test_anthropic_ingress_validates_numbers_in_its_own_error_shape(
    gateway: GatewayProcess, fields: dict[str, Any], needle: str
) -> None:
    body = {"model": "claude", "max_tokens": 16, "messages": ASK, **fields}
    resp = post(gateway, body, "/v1/messages", **{"anthropic-version": "2023-06-01"})
    assert resp.status_code == 400, resp.text
    payload = resp.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert needle in payload["error"]["message"]


# ---------------------------------------------------------------------------------------- JSON depth


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"model": "capped", "messages": [], "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"model": "capped", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
        b'"function": {"name": "f", "parameters": ' + b'{"a": ' * 200 + b"1" + b"}" * 200 + b"}}]}",
    ],
)
def test_deep_json_is_a_400_not_a_500(gateway: GatewayProcess, body: bytes) -> None:
    assert_400(post(gateway, body), code="invalid_json")
    resp = post(gateway, body, "/v1/messages")
    assert resp.status_code == 400 and resp.json()["type"] == "error", resp.text


# ---------------------------------------------------------------------------------------- slow clients


def _connect(gw: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _trickle(sock: socket.socket, data: bytes, every_s: float, for_s: float) -> bool:
    """Send `data` a byte at a time; False once the server has closed the connection."""
    deadline = time.monotonic() + for_s
    for byte in data:
        if time.monotonic() > deadline:
            return True
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return False
        time.sleep(every_s)
    return True


def test_slow_headers_are_cut_off(gateway: GatewayProcess) -> None:
    sock = _connect(gateway)
    started = time.monotonic()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + b"x-pad: " + b"a" * 200 + b"\r\n"
    _trickle(sock, head, 0.05, BOUND_S + 2)
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < BOUND_S + 4
    sock.close()


def test_a_silent_connection_is_cut_off(gateway: GatewayProcess) -> None:
    sock = _connect(gateway)
    started = time.monotonic()
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < BOUND_S + 3
    sock.close()


def test_a_slow_body_is_cut_off(gateway: GatewayProcess) -> None:
    body = json.dumps(chat()).encode()
    sock = _connect(gateway)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    started = time.monotonic()
    _trickle(sock, body, 0.05, BOUND_S + 2)
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer
    assert time.monotonic() - started < BOUND_S + 4
    sock.close()
    assert post(gateway, chat()).status_code == 200  # and the server serves on


def test_an_oversized_header_block_is_refused(gateway: GatewayProcess) -> None:
    sock = _connect(gateway)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        for _ in range(100):
            sock.sendall(b"x-pad: " + b"a" * 1000 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    sock.close()


def test_a_request_in_pieces_within_the_deadline_is_served(gateway: GatewayProcess) -> None:
    body = json.dumps(chat()).encode()
    sock = _connect(gateway)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
    time.sleep(0.2)
    sock.sendall(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    time.sleep(0.2)
    sock.sendall(body[:10])
    time.sleep(0.2)
    sock.sendall(body[10:])
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    sock.close()


def test_the_process_is_alive_and_ready(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/health/ready", timeout=5).status_code == 200
    assert "Traceback" not in Path(gateway.log).read_text(errors="replace")
