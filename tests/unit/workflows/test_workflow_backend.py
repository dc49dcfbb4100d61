"""The seam: the HTTP gateway backend against a local fake gateway, factories, JSON outputs, schema export."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from modelyard.schema.constraints import Constraints
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError
from modelyard.workflows.backend import (
    BackendUnavailable,
    HttpBackend,
    ModelCall,
    RouteHints,
    default_backend_factory,
    load_backend_factory,
)
from modelyard.workflows.jsonout import AnswerInvalid, example_for_schema, parse_structured, response_format
from modelyard.workflows.schema import workflow_json_schema
from modelyard.workflows.scripted import ScriptedBackend, scripted_backend_factory
from tests.unit.workflows.helpers import served

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("authorization")})
        if body["model"] == "limited":
            detail = {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"}
            error = {"error": detail}
            return web.json_response(error, status=429, headers={"retry-after": "2"})
        if body["model"] == "unknown":
            unknown = {"error": {"message": "no such model", "type": "invalid_request_error"}}
            return web.json_response(unknown, status=400)
        if body["model"] == "down":
            return web.Response(status=502, text="bad gateway")
        headers = {
            "x-modelyard-model": "gpt-4o-mini@openai",
            "x-modelyard-cost-usd": "0.000123",
            "x-modelyard-latency-ms": "42.5",
            "x-modelyard-attempts": "2",
        }
        return web.json_response(COMPLETION, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    async with served(app) as url:
        yield url, seen


async def test_http_backend_reads_answer_usage_and_modelyard_headers(gateway: Any) -> None:
    url, seen = gateway
    call = ModelCall(
        model="fast",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=20,
        temperature=0.1,
        response_format=response_format("plan", {"type": "object"}),
        route=RouteHints(
            task="classification", constraints=Constraints(min_quality=0.7), tags=("workflow:wf", "step:plan")
        ),
        metadata={"workflow": "wf", "step": "plan"},
    )
    async with HttpBackend(url, api_key="sk-test") as backend:
        answer = await backend.call(call)
    assert answer.text == "hello" and answer.model == "gpt-4o-mini"
    assert answer.deployment == "gpt-4o-mini@openai"
    assert answer.cost_usd == pytest.approx(0.000123) and answer.latency_ms == 42.5 and answer.attempts == 2
    assert (answer.usage.prompt, answer.usage.completion, answer.usage.cached) == (12, 3, 4)
    body = seen[0]["body"]
    assert seen[0]["auth"] == "Bearer sk-test"
    assert body["model"] == "fast" and body["max_tokens"] == 20 and body["temperature"] == 0.1
    assert body["response_format"]["type"] == "json_schema"
    assert body["modelyard"] == {
        "task": "classification",
        "constraints": {"min_quality": 0.7},
        "tags": ["workflow:wf", "step:plan"],
    }


async def test_http_backend_maps_errors(gateway: Any) -> None:
    url, _ = gateway
    async with HttpBackend(url + "/v1") as backend:
        with pytest.raises(ProviderError) as limited:
            await backend.call(ModelCall(model="limited", messages=[]))
        assert limited.value.kind is ErrorKind.RATE_LIMITED and limited.value.retry_after == 2.0
        assert limited.value.retryable and "slow down" in limited.value.message
        with pytest.raises(GatewayError) as unknown:
            await backend.call(ModelCall(model="unknown", messages=[]))
        assert unknown.value.status == 400 and unknown.value.message == "no such model"
        with pytest.raises(ProviderError) as down:
            await backend.call(ModelCall(model="down", messages=[]))
        assert down.value.kind is ErrorKind.SERVER
        with pytest.raises(NotImplementedError):
            backend.estimate(ModelCall(model="x", messages=[]))


async def test_http_backend_connection_refused() -> None:
    async with HttpBackend("http://127.0.0.1:9") as backend:
        with pytest.raises(ProviderError) as failed:
            await backend.call(ModelCall(model="x", messages=[]))
    assert failed.value.kind is ErrorKind.CONNECTION


async def test_default_factory_is_remote_with_a_url_else_the_inprocess_gateway(gateway: Any) -> None:
    url, _ = gateway
    async with default_backend_factory(None, url) as remote:
        assert isinstance(remote, HttpBackend)
    from modelyard.workflows.inprocess import GatewayBackend

    async with default_backend_factory(None, None) as local:  # the embedded simulator + demo config
        assert isinstance(local, GatewayBackend)
        call = ModelCall(model="balanced", messages=[{"role": "user", "content": "Repeat: in process"}], max_tokens=20)
        estimate = local.estimate(call)
        answer = await local.call(call)
        assert answer.text == "in process"
        assert answer.deployment == estimate.deployment  # the plan and the call agree on the route
        assert answer.cost_usd > 0 and answer.usage.prompt > 0 and answer.attempts == 1
        assert estimate.cost_usd > 0 and estimate.latency_ms > 0
        premium = local.price("smart", answer.usage)
        cheap = local.price("balanced", answer.usage)
        assert premium is not None and cheap is not None and premium > cheap


async def test_backend_factory_references() -> None:
    assert load_backend_factory("scripted") is scripted_backend_factory
    assert load_backend_factory(None) is default_backend_factory
    named = load_backend_factory("modelyard.workflows.scripted:scripted_backend_factory")
    assert named is scripted_backend_factory
    with pytest.raises(BackendUnavailable):
        load_backend_factory("modelyard.nothing:here")


async def test_scripted_backend_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELYARD_SCRIPTED_DELAYS", '{"slow": 0.5}')
    monkeypatch.setenv("MODELYARD_SCRIPTED_PRICES", '{"m": [2, 4]}')
    monkeypatch.setenv("MODELYARD_SCRIPTED_LOG", str(tmp_path / "calls.jsonl"))
    async with scripted_backend_factory() as backend:
        assert backend.delay_for(ModelCall(model="slow", messages=[])) == 0.5
        answer = await backend.call(ModelCall(model="m", messages=[{"role": "user", "content": "hi"}]))
    assert answer.cost_usd == pytest.approx((answer.usage.prompt * 2 + answer.usage.completion * 4) / 1e6)
    events = [json.loads(line)["event"] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert events == ["started", "finished"]


# --------------------------------------------------------------------------- JSON outputs


def test_parse_structured_accepts_fences_and_reports_the_path() -> None:
    integers = {"type": "array", "items": {"type": "integer"}}
    schema = {"type": "object", "required": ["a"], "properties": {"a": integers}}
    assert parse_structured('```json\n{"a": [1]}\n```', schema) == {"a": [1]}
    with pytest.raises(AnswerInvalid, match="not JSON"):
        parse_structured("sure! here it is", schema)
    with pytest.raises(AnswerInvalid, match="at a/1"):
        parse_structured('{"a": [1, "x"]}', schema)
    with pytest.raises(AnswerInvalid, match="'a' is a required property"):
        parse_structured("{}", schema)


SCHEMAS = st.sampled_from(
    [
        {
            "type": "object",
            "required": ["q"],
            "properties": {"q": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
        },
        {
            "type": "object",
            "properties": {"label": {"enum": ["a", "b"]}, "p": {"type": "number", "minimum": 0}},
        },
        {"type": "array", "items": {"type": "integer", "minimum": 5}, "maxItems": 2},
        {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
        {"type": ["null", "boolean"]},
        {"const": 7},
    ]
)


@given(SCHEMAS)
def test_generated_examples_validate_against_their_schema(schema: dict[str, Any]) -> None:
    Draft202012Validator(schema).validate(example_for_schema(schema))


def test_response_format_names_are_safe() -> None:
    fmt = response_format("my step!", {"type": "object"})
    expected = {"name": "my_step_", "schema": {"type": "object"}, "strict": False}
    assert fmt == {"type": "json_schema", "json_schema": expected}


# --------------------------------------------------------------------------- exported schema


def test_exported_schema_is_committed_and_valid() -> None:
    schema = workflow_json_schema()
    Draft202012Validator.check_schema(schema)
    committed = Path(__file__).resolve().parents[3] / "docs" / "workflow.schema.json"
    assert json.loads(committed.read_text()) == schema, "regenerate: python -m modelyard.workflows.schema"


def test_examples_validate_against_the_exported_schema() -> None:
    import yaml

    validator = Draft202012Validator(workflow_json_schema())
    for path in (Path(__file__).resolve().parents[3] / "examples" / "workflows").glob("*.yaml"):
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path


def test_scripted_is_a_pricing_backend() -> None:
    from modelyard.workflows.backend import PricingBackend

    assert isinstance(ScriptedBackend(), PricingBackend)
