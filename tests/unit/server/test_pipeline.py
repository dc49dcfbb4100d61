"""The one request pipeline, in process: both codecs over a scripted transport, native pass-through byte for
byte, the Anthropic client gaps (request-id, models in Anthropic's shape) and the access log."""

from __future__ import annotations

import logging
import random
from collections.abc import MutableMapping
from typing import Any, ClassVar

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.routing.attempts import RetryPolicy
from modelyard.routing.executor import Executor
from modelyard.schema.errors import ErrorKind
from modelyard.server.app import Gateway, RateLimitedLog
from tests.unit.routing.test_executor import ScriptedTransport, ok_body
from tests.unit.routing.test_executor_loop import NativeAnthropic

CONFIG = """
deployments:
  - {name: b, provider: openai, model: m-b, api_base: "http://b/v1", price: {input: 1, output: 2}}
  - {name: n, provider: anthropic, model: m-n, api_base: "http://n", price: {input: 1, output: 2}}
models:
  chat:
    candidates: [b]
  claude:
    candidates: [n, b]
    strategy: priority
"""


class NativeMessages(NativeAnthropic):
    native_formats: ClassVar[frozenset[str]] = frozenset({"anthropic-messages"})


class Recorder(ScriptedTransport):
    """The scripted transport, keeping each call's body and headers."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        super().__init__(script)
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    async def send(self, call: Any, timeouts: Any, adapter: Any) -> Any:
        self.bodies.append(call.body)
        self.headers.append(call.headers)
        return await super().send(call, timeouts, adapter)  # type: ignore[no-untyped-call]

    async def open_stream(self, call: Any, timeouts: Any, adapter: Any) -> Any:
        self.bodies.append(call.body)
        return await super().open_stream(call, timeouts, adapter)  # type: ignore[no-untyped-call]


def gateway(script: dict[str, list[Any]] | None = None, *, native: bool = True) -> tuple[Gateway, Recorder]:
    gw = Gateway(parse_config(CONFIG))
    router = gw.router
    transport = Recorder(script or {})
    adapters = dict(router.adapters)
    if native:
        adapters["anthropic"] = NativeMessages()  # type: ignore[assignment]
    router._executor = Executor(
        transport=transport,  # type: ignore[arg-type]
        adapters=adapters,
        health=router.health,
        limits=router.limits,
        prices=router.table.prices,
        policy=RetryPolicy(base_s=0.001, max_backoff_s=0.002, retries=0),
        rng=random.Random(0),
    )
    return gw, transport


class Answer:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        start = messages[0]
        self.status: int = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        self.writes = [m.get("body", b"") for m in messages[1:]]
        self.body = b"".join(self.writes)

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


async def call(gw: Gateway, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    raw = b"" if body is None else msgspec.json.encode(body)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await gw(scope, receive, send)
    return Answer(sent)


def messages_body(stream: bool = False, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "claude",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "x"}}]}],
        **extra,
    }
    if stream:
        body["stream"] = True
    return body


# ----------------------------------------------------------------------------- chat completions


async def test_chat_answers_with_cost_and_headers() -> None:
    gw, transport = gateway()
    answer = await call(
        gw, "POST", "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    )
    assert answer.status == 200 and transport.calls == ["b"]
    assert answer.json()["usage"]["cost"] == pytest.approx((10 + 10) / 1e6)
    assert answer.headers["x-modelyard-model"] == "b" and answer.headers["x-request-id"].startswith("req_")
    assert "request-id" not in answer.headers


async def test_chat_stream_ends_with_the_priced_usage_chunk_and_done_in_one_write() -> None:
    gw, _ = gateway()
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    answer = await call(gw, "POST", "/v1/chat/completions", body)
    assert answer.status == 200 and answer.body.endswith(b"data: [DONE]\n\n")
    last = answer.writes[-1]
    assert b'"usage"' in last and b'"cost"' in last and last.endswith(b"data: [DONE]\n\n")
    lines = [line for line in answer.body.split(b"\n\n") if line.startswith(b"data: {")]
    text = "".join(msgspec.json.decode(x[6:])["choices"][0]["delta"].get("content", "") for x in lines[:-1])
    assert text == "hello"


# ----------------------------------------------------------------------------- messages


async def test_messages_pass_through_sends_the_clients_body_and_returns_the_upstreams_bytes() -> None:
    gw, transport = gateway()
    sent = messages_body(thinking={"type": "enabled", "budget_tokens": 10})
    betas = "prompt-caching-2024-07-31,files-api-2025-04-14"  # the second is not on the default allowlist
    answer = await call(gw, "POST", "/v1/messages", sent, {"anthropic-version": "2023-06-01", "anthropic-beta": betas})
    assert answer.status == 200 and transport.calls == ["n"]
    assert msgspec.json.decode(transport.bodies[0]) == {**sent, "model": "m-n"}  # cache_control, thinking intact
    assert transport.headers[0] == {"anthropic-version": "2023-06-01", "anthropic-beta": "prompt-caching-2024-07-31"}
    # The upstream's own bytes, not a translated Message; only `model` names what the client asked for.
    assert answer.body == ok_body("m-n").replace(b'"model":"m-n"', b'"model":' + msgspec.json.encode(sent["model"]))
    assert answer.headers["request-id"] == answer.headers["x-request-id"]
    assert float(answer.headers["x-modelyard-cost-usd"]) > 0


async def test_messages_without_a_native_adapter_are_translated() -> None:
    gw, _ = gateway(native=False)
    answer = await call(gw, "POST", "/v1/messages", messages_body())
    assert answer.status == 200
    message = answer.json()
    assert message["type"] == "message" and message["content"][0] == {"type": "text", "text": "hi"}
    assert answer.headers["request-id"] == answer.headers["x-request-id"]


async def test_messages_native_stream_is_the_upstreams_events_and_fails_over_to_translated() -> None:
    gw, _ = gateway()
    answer = await call(gw, "POST", "/v1/messages", messages_body(stream=True))
    assert answer.status == 200 and answer.headers["request-id"] == answer.headers["x-request-id"]
    events = [e for e in answer.body.split(b"\n\n") if e]
    assert all(e.startswith(b"event: delta\ndata: ") for e in events) and events[-1].endswith(b"[DONE]")
    gw, transport = gateway({"n": [ErrorKind.CONNECTION]})
    answer = await call(gw, "POST", "/v1/messages", messages_body(stream=True))
    assert transport.calls == ["n", "b"]
    assert answer.body.startswith(b"event: message_start") and answer.body.endswith(b'{"type":"message_stop"}\n\n')


async def test_messages_errors_are_anthropic_shaped_with_a_request_id() -> None:
    gw, _ = gateway()
    answer = await call(gw, "POST", "/v1/messages", {"model": "claude", "messages": []})
    assert answer.status == 400 and answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert answer.headers["request-id"] == answer.headers["x-request-id"]


# ----------------------------------------------------------------------------- models


async def test_models_in_anthropics_shape_when_anthropic_version_is_sent() -> None:
    gw, _ = gateway()
    openai = (await call(gw, "GET", "/v1/models")).json()
    assert openai["object"] == "list" and [m["id"] for m in openai["data"]] == ["chat", "claude"]
    listed = (await call(gw, "GET", "/v1/models", headers={"anthropic-version": "2023-06-01"})).json()
    assert listed["has_more"] is False and listed["first_id"] == "chat" and listed["last_id"] == "claude"
    model = listed["data"][1]
    assert model["type"] == "model" and model["id"] == "claude" and model["display_name"] == "claude"
    assert model["created_at"].endswith("Z") and model["created_at"][4] == "-"
    one = await call(gw, "GET", "/v1/models/claude", headers={"anthropic-version": "2023-06-01"})
    assert one.status == 200 and one.json() == model
    missing = await call(gw, "GET", "/v1/models/nope", headers={"anthropic-version": "2023-06-01"})
    assert missing.status == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert (await call(gw, "GET", "/v1/models/nope")).json()["error"]["code"] == "model_not_found"


# ----------------------------------------------------------------------------- the access log


async def test_error_answers_and_unknown_paths_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    gw, _ = gateway()
    with caplog.at_level(logging.INFO, logger="modelyard.access"):
        await call(gw, "POST", "/v1/chat/completions", {"model": "chat", "messages": "nope"})
        await call(gw, "POST", "/v1/files", {})
    lines = [r.getMessage() for r in caplog.records if r.name == "modelyard.access"]
    assert any(line.startswith("POST /v1/chat/completions model=") and "status=400" in line for line in lines)
    assert "POST /v1/files model=None status=404" in lines


def test_unknown_path_lines_are_rate_limited_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("modelyard.access"), 3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="modelyard.access"):
        for i in range(5):
            limited.warning("line %d", i)
        now[0] += 1.0
        limited.warning("line %d", 5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["line 0", "line 1", "line 2", "2 more such lines suppressed in the last second", "line 5"]
    assert limited.suppressed == 2


async def test_messages_refuse_a_server_tool_the_operator_has_not_allowed() -> None:
    gw, transport = gateway()
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}]
    answer = await call(gw, "POST", "/v1/messages", messages_body(tools=tools))
    assert answer.status == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    assert "web_search_20250305" in answer.json()["error"]["message"] and transport.calls == []
