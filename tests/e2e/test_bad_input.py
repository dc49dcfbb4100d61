"""Bad input answers 4xx with an OpenAI-shaped error body, never a traceback, never a dead worker."""

from __future__ import annotations

import json

import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app

from .conftest import gateway_yaml

GOOD = {"model": "via-openai", "messages": [{"role": "user", "content": "Repeat: ok"}]}


@pytest.fixture(scope="module")
def small_gateway(sim):
    text = gateway_yaml(sim.url) + "server:\n  max_body_bytes: 4096\n"
    with BackgroundServer(create_app(parse_config(text))) as server:
        yield server


def post(server, body: bytes | dict, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server.url + path, content=content, timeout=10, headers={"content-type": "application/json", **headers}
    )


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (b"", 400, None, "invalid_json"),
        (b"[1, 2, 3]", 400, None, "invalid_json"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model", "missing_required_parameter"),
        ({"model": "via-openai"}, 400, "messages", "missing_required_parameter"),
        ({"model": "via-openai", "messages": []}, 400, "messages", "invalid_value"),
        ({"model": 42, "messages": [{"role": "user", "content": "x"}]}, 400, "model", "invalid_value"),
        (
            {"model": "via-openai", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "temperature",
            "invalid_value",
        ),
        (
            {"model": "via-openai", "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages[0].role",
            "invalid_value",
        ),
        (
            {"model": "via-openai", "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
            400,
            "messages[0].content[0].type",
            "unsupported_content_part",
        ),
        (
            {"model": "via-openai", "messages": [{"role": "user"}]},
            400,
            "messages[0].content",
            "missing_required_parameter",
        ),
        (
            {"model": "via-openai", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
            "invalid_value",
        ),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "model", "model_not_found"),
    ],
)
def test_bad_chat_requests(small_gateway, body, status, param, code):
    assert_openai_error(post(small_gateway, body), status, param, code)


def test_body_over_limit_is_413(small_gateway):
    huge = {**GOOD, "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_openai_error(post(small_gateway, huge), 413, code="request_too_large")


def test_unsupported_part_for_a_provider_is_a_clear_400(small_gateway):
    body = {
        "model": "via-anthropic",
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}
        ],
    }
    error = assert_openai_error(post(small_gateway, body), 400)
    assert "audio" in error["message"]


def test_unknown_path_and_method(small_gateway):
    assert_openai_error(httpx.get(small_gateway.url + "/v1/nothing"), 404, code="not_found")
    assert_openai_error(httpx.get(small_gateway.url + "/v1/chat/completions"), 405, code="method_not_allowed")


def test_worker_survives_garbage_and_keeps_serving(small_gateway):
    for payload in (b"\xff\xfe\x00", b'{"model": null}', b"null", b'{"messages": {"a": 1}}' * 3):
        assert post(small_gateway, payload).status_code in (400, 404, 413)
    ok = post(small_gateway, GOOD)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "ok"


def test_health_endpoints(small_gateway):
    assert httpx.get(small_gateway.url + "/health/live").json() == {"status": "ok"}
    ready = httpx.get(small_gateway.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
