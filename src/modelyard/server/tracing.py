"""Optional OpenTelemetry traces: one span per request, one child span per provider attempt.

Needs the `otel` extra (opentelemetry-api; the SDK and exporter are the operator's choice, configured the
usual way, e.g. `opentelemetry-instrument` or OTEL_* variables). Spans are built from the request's
outcome after it ends, so tracing adds nothing to the request path but this observer's callback.
Attributes follow the OpenTelemetry GenAI semantic conventions (gen_ai.*); attempt start times are
reconstructed from their latencies (sequential attempts end to end; a hedge ends with the request).
"""

from __future__ import annotations

from typing import Any

from modelyard.server.observe import Outcome

#: gen_ai.operation.name by path (chat otherwise); the non-chat endpoints use the names OpenTelemetry's GenAI
#: conventions leave open, after OpenAI's own resource names.
_OPERATION = {
    "/v1/embeddings": "embeddings",
    "/embeddings": "embeddings",
    "/v1/audio/transcriptions": "audio.transcriptions",
    "/v1/audio/translations": "audio.translations",
    "/v1/audio/speech": "audio.speech",
    "/v1/images/generations": "images.generations",
    "/v1/rerank": "rerank",
    "/v2/rerank": "rerank",
}


class Tracing:
    """An Observer that turns outcomes into spans on `tracer` (default: the global tracer provider's)."""

    def __init__(self, tracer: Any = None, *, service_name: str = "modelyard") -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("tracing needs OpenTelemetry: pip install 'modelyard[otel]'") from exc
        self._trace = trace
        self.tracer = tracer if tracer is not None else trace.get_tracer(service_name)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def on_outcome(self, outcome: Outcome) -> None:
        trace = self._trace
        ctx = outcome.ctx
        end_ns = int(outcome.at * 1e9)
        start_ns = end_ns - int(outcome.latency_ms * 1e6)
        operation = _OPERATION.get(ctx.endpoint, "chat")
        model = ctx.requested_model or "-"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": outcome.usage.prompt,
            "gen_ai.usage.output_tokens": outcome.usage.completion,
            "modelyard.request_id": ctx.request_id,
            "modelyard.status": outcome.status,
            "modelyard.cost_usd": outcome.cost_usd,
            "modelyard.attempts": len(outcome.records),
        }
        if outcome.provider:
            attributes["gen_ai.provider.name"] = outcome.provider
        if outcome.deployment:
            attributes["modelyard.deployment"] = outcome.deployment
        if outcome.ttft_ms is not None:
            attributes["modelyard.ttft_ms"] = outcome.ttft_ms
        if outcome.error_kind:
            attributes["error.type"] = outcome.error_kind
        if ctx.key_name:
            attributes["modelyard.key_name"] = ctx.key_name
        span = self.tracer.start_span(
            f"{operation} {model}", start_time=start_ns, attributes=attributes, kind=trace.SpanKind.SERVER
        )
        parent = trace.set_span_in_context(span)
        cursor = start_ns
        for record in outcome.records:
            length = int(record.latency_ms * 1e6)
            begin = end_ns - length if record.hedge else cursor
            if not record.hedge:
                cursor = begin + length
            child_attributes: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": record.provider,
                "modelyard.deployment": record.deployment,
                "modelyard.outcome": record.outcome,
                "modelyard.hedge": record.hedge,
                "modelyard.cost_usd": record.cost_usd,
            }
            if record.status is not None:
                child_attributes["http.response.status_code"] = record.status
            if record.outcome not in ("ok", "cancelled"):
                child_attributes["error.type"] = record.outcome
            child = self.tracer.start_span(
                f"{operation} {record.deployment}",
                context=parent,
                start_time=begin,
                attributes=child_attributes,
                kind=trace.SpanKind.CLIENT,
            )
            if record.outcome not in ("ok", "cancelled"):
                child.set_status(trace.Status(trace.StatusCode.ERROR, record.outcome))
            child.end(end_time=min(begin + length, end_ns))
        if outcome.status != "ok":
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error_kind or outcome.status))
        span.end(end_time=end_ns)
