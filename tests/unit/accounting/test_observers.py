"""Metrics (scraped and parsed) and tracing (a fake tracer) fed by request outcomes."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.config.model import Config, Deployment, ModelGroup, Price
from modelyard.routing.attempts import AttemptRecord
from modelyard.routing.router import Router
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind
from modelyard.server.metrics import Metrics
from modelyard.server.observe import Outcome
from modelyard.server.tracing import Tracing


class Ctx:
    def __init__(self, model: str = "smart", endpoint: str = "/v1/chat/completions") -> None:
        self.requested_model = model
        self.endpoint = endpoint
        self.request_id = "req_1"
        self.key_name = "team-a"
        self.authenticated = True


def router() -> Router:
    price = Price(input=1, output=2)
    deps = [Deployment(name=n, provider="openai", model=n, price=price) for n in ("a", "b")]
    return Router(Config(deployments=deps, models={"smart": ModelGroup(candidates=["a", "b"])}))


def outcome(status: str = "ok", **extra: Any) -> Outcome:
    fields: dict[str, Any] = {
        "ctx": Ctx(),
        "status": status,
        "deployment": "a",
        "provider": "openai",
        "records": [AttemptRecord("a", "openai", "ok", 120.0)],
        "usage": Usage(prompt=100, completion=20, cached=40, reasoning=5),
        "cost_usd": 0.0002,
        "latency_ms": 130.0,
        "ttft_ms": None,
    }
    fields.update(extra)
    return Outcome(**fields)


def scrape(metrics: Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}


def sample(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
    values = [s.value for s in families[family].samples if s.name == name and s.labels == labels]
    assert len(values) == 1, (name, labels, families[family].samples)
    return float(values[0])


def test_requests_errors_tokens_cost_and_latency() -> None:
    metrics = Metrics(router(), unpriced=["b"])
    for _ in range(3):
        metrics.on_outcome(outcome())
    metrics.on_outcome(outcome(ttft_ms=40.0, latency_ms=2000.0))
    metrics.on_outcome(
        outcome(
            "error",
            deployment="b",
            error_kind="server",
            usage=Usage(),
            cost_usd=0.0,
            records=[AttemptRecord("b", "openai", "server", 5.0, status=502)],
        )
    )
    f = scrape(metrics)
    assert sample(f, "modelyard_requests", "modelyard_requests_total", model="smart", deployment="a", status="ok") == 4
    assert (
        sample(f, "modelyard_requests", "modelyard_requests_total", model="smart", deployment="b", status="error") == 1
    )
    assert sample(f, "modelyard_errors", "modelyard_errors_total", kind="server") == 1
    assert sample(f, "modelyard_attempts", "modelyard_attempts_total", deployment="b", outcome="server") == 1
    assert sample(f, "modelyard_tokens", "modelyard_tokens_total", model="smart", deployment="a", type="prompt") == 400
    assert sample(f, "modelyard_tokens", "modelyard_tokens_total", model="smart", deployment="a", type="cached") == 160
    assert sample(f, "modelyard_cost_usd", "modelyard_cost_usd_total", model="smart", deployment="a") == pytest.approx(
        0.0008
    )
    latency = "modelyard_request_duration_seconds"
    assert sample(f, latency, latency + "_count", model="smart", deployment="a") == 4
    assert sample(f, latency, latency + "_bucket", model="smart", deployment="a", le="0.25") == 3
    assert sample(f, latency, latency + "_bucket", model="smart", deployment="a", le="2.5") == 4
    assert sample(f, latency, latency + "_sum", model="smart", deployment="a") == pytest.approx(2.39)
    ttft = "modelyard_ttft_seconds"
    assert sample(f, ttft, ttft + "_count", model="smart", deployment="a") == 1
    assert sample(f, "modelyard_price_unknown", "modelyard_price_unknown", deployment="b") == 1


def test_breaker_state_and_in_flight_come_from_the_health_view() -> None:
    r = router()
    metrics = Metrics(r)
    for i in range(5):
        r.health.on_start("b", 100.0 + i)
        r.health.on_failure("b", 100.0 + i, ErrorKind.SERVER)
    r.health.on_start("a", 200.0)
    f = scrape(metrics)
    assert sample(f, "modelyard_breaker_state", "modelyard_breaker_state", deployment="b") == 2
    assert sample(f, "modelyard_breaker_state", "modelyard_breaker_state", deployment="a") == 0
    assert sample(f, "modelyard_in_flight", "modelyard_in_flight", deployment="a") == 1
    assert (
        sample(f, "modelyard_breaker_transitions", "modelyard_breaker_transitions_total", deployment="b", state="open")
        == 1
    )


async def test_each_gateway_has_its_own_registry() -> None:
    first, second = Metrics(router()), Metrics(router())
    first.on_outcome(outcome())
    assert b"modelyard_requests_total" in first.exposition()
    assert b'deployment="a",model="smart"' not in second.exposition()
    await first.close()


class FakeSpan:
    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.name = name
        self.kwargs = kwargs
        self.status: Any = None
        self.end_time: int | None = None

    def set_status(self, status: Any) -> None:
        self.status = status

    def end(self, end_time: int | None = None) -> None:
        self.end_time = end_time

    def get_span_context(self) -> Any:
        from opentelemetry.trace import INVALID_SPAN_CONTEXT

        return INVALID_SPAN_CONTEXT

    def is_recording(self) -> bool:
        return True


class FakeTracer:
    def __init__(self) -> None:
        self.spans: list[FakeSpan] = []

    def start_span(self, name: str, **kwargs: Any) -> FakeSpan:
        span = FakeSpan(name, kwargs)
        self.spans.append(span)
        return span


def test_tracing_builds_a_request_span_and_one_per_attempt() -> None:
    pytest.importorskip("opentelemetry.trace")
    tracer = FakeTracer()
    records = [
        AttemptRecord("b", "openai", "rate_limited", 10.0, status=429),
        AttemptRecord("a", "openai", "ok", 100.0),
        AttemptRecord("c", "anthropic", "cancelled", 60.0, hedge=True),
    ]
    Tracing(tracer).on_outcome(outcome(records=records, at=1000.0, latency_ms=120.0, ttft_ms=30.0))
    request, *attempts = tracer.spans
    attrs = request.kwargs["attributes"]
    assert request.name == "chat smart"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "smart"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (100, 20)
    assert attrs["modelyard.attempts"] == 3 and attrs["modelyard.key_name"] == "team-a"
    start = request.kwargs["start_time"]
    assert request.end_time == 1000 * 10**9 and start == request.end_time - 120 * 10**6
    assert [a.name for a in attempts] == ["chat b", "chat a", "chat c"]
    assert all(a.kwargs["context"] is not None for a in attempts)
    assert attempts[0].kwargs["attributes"]["error.type"] == "rate_limited"
    assert attempts[0].kwargs["attributes"]["http.response.status_code"] == 429
    assert attempts[0].status is not None
    assert attempts[1].kwargs["start_time"] == start + 10 * 10**6  # after the first attempt
    assert attempts[2].kwargs["start_time"] == request.end_time - 60 * 10**6  # a hedge ends with the request
    assert request.status is None


def test_tracing_marks_failed_requests() -> None:
    pytest.importorskip("opentelemetry.trace")
    tracer = FakeTracer()
    Tracing(tracer).on_outcome(outcome("error", error_kind="timeout", ctx=Ctx(endpoint="/v1/embeddings")))
    span = tracer.spans[0]
    assert span.name == "embeddings smart"
    assert span.kwargs["attributes"]["error.type"] == "timeout"
    assert span.status is not None
