"""The in-process backend: workflow steps go through the gateway's own router, with no HTTP hop.

A step's call becomes a canonical chat request, is planned and executed exactly like a gateway request
(same strategies, retries, failover, hedging, prices), and comes back as a `ModelAnswer`. Without a
config, the embedded default runs: the provider simulator plus the demo config, so every example works
with no keys and no network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from modelyard.accounting.prices import cost_usd, estimate_cost_usd
from modelyard.config.loader import load_config
from modelyard.config.model import Config, Deployment
from modelyard.routing.admission import QueueTicket
from modelyard.routing.features import RequestFeatures, chat_features
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest, Usage
from modelyard.schema.errors import GatewayError
from modelyard.workflows.backend import ModelAnswer, ModelCall, ModelEstimate, chat_body, delta_texts

_DEFAULT_OUTPUT_TOKENS = 256


def _price_resolver() -> Any:
    try:
        from modelyard.accounting.price_table import resolve_price
    except ImportError:  # pragma: no cover - the table ships with the package
        return None
    return resolve_price


class GatewayBackend:
    """A `ModelBackend` over a started `Router`."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def _request(self, call: ModelCall, *, stream: bool = False) -> tuple[ChatRequest, dict[str, Any], RequestFeatures]:
        raw = chat_body(call)
        if stream:  # the usage chunk too, so a streamed answer is priced on the provider's own counts
            raw.update(stream=True, stream_options={"include_usage": True})
        try:
            req = msgspec.convert(raw, ChatRequest)
        except msgspec.ValidationError as exc:
            raise GatewayError(400, f"invalid model call: {exc}") from None
        return req, raw, chat_features(req, tags=call.route.tags)

    def _ticket(self, priority: str | None, timeout_s: float | None) -> QueueTicket | None:
        """The admission-queue place of a call that names a class: it waits its turn (weighted fair against
        the gateway's other classes) instead of failing when its model is saturated."""
        if priority is None:
            return None
        settings = self.router.config.queue
        models = self.router.config.models.values()
        if not (settings.enabled or any(g.queue is not None and g.queue.enabled for g in models)):
            return None
        rank = settings.rank(priority)
        if rank is None:
            names = ", ".join(c.name for c in settings.classes)
            raise GatewayError(400, f"unknown priority {priority[:64]!r} (one of: {names})", param="modelyard.priority")
        max_wait_s = settings.max_wait_ms / 1000.0
        if timeout_s is not None:
            max_wait_s = min(max_wait_s, timeout_s)
        return QueueTicket(rank, "workflow", max_wait_s, None, timeout_s)

    async def call(self, call: ModelCall) -> ModelAnswer:
        req, raw, features = self._request(call)
        started = time.perf_counter()
        queue = self._ticket(call.priority, call.timeout_s)
        success = await self.router.complete(req, raw, features, timeout_s=call.timeout_s, queue=queue)
        body = success.completion.body
        message = (body.get("choices") or [{}])[0].get("message") or {}
        return ModelAnswer(
            text=str(message.get("content") or ""),
            model=success.completion.model,
            deployment=success.deployment.name,
            usage=success.completion.usage,
            cost_usd=success.cost_usd,
            latency_ms=(time.perf_counter() - started) * 1000,
            attempts=len(success.records),
        )

    async def call_streaming(self, call: ModelCall, on_text: Callable[[str], None]) -> ModelAnswer:
        """`call` through the gateway's streaming path (`Router.stream`, as a `stream: true` request takes),
        each content delta passed to `on_text` as it arrives."""
        req, raw, features = self._request(call, stream=True)
        started = time.perf_counter()
        queue = self._ticket(call.priority, call.timeout_s)
        result = await self.router.stream(req, raw, features, timeout_s=call.timeout_s, queue=queue)
        parts: list[str] = []
        try:
            async for chunk in result.chunks():
                for text in delta_texts(chunk):
                    parts.append(text)
                    on_text(text)
        finally:
            await result.aclose()  # a no-op after a whole answer; else the upstream call and its slot are freed
        return ModelAnswer(
            text="".join(parts),
            model=result.model,
            deployment=result.deployment.name,
            usage=result.usage,
            cost_usd=result.cost_usd,
            latency_ms=(time.perf_counter() - started) * 1000,
            attempts=len(result.records),
        )

    def _first(self, call: ModelCall) -> tuple[Deployment, RequestFeatures]:
        req, _, features = self._request(call)
        plan = self.router.plan(req.model, features, overrides=req.modelyard)
        if not plan.order:
            reasons = "; ".join(f"{s.deployment}: {s.reason}" for s in plan.ctx.skipped)
            raise GatewayError(503, f"no deployment of `{call.model}` can serve this call ({reasons})")
        return plan.order[0], features

    def estimate(self, call: ModelCall) -> ModelEstimate:
        dep, features = self._first(call)
        output = call.estimate_output_tokens
        if output is None:
            output = call.max_tokens or _DEFAULT_OUTPUT_TOKENS
        return ModelEstimate(
            deployment=dep.name,
            prompt_tokens=features.prompt_tokens,
            output_tokens=output,
            cost_usd=estimate_cost_usd(features.prompt_tokens, output, self.router.price(dep.name)),
            latency_ms=self.expected_latency_ms(dep, output),
        )

    def expected_latency_ms(self, dep: Deployment, output_tokens: int) -> float:
        """Live EWMA when traffic has measured it, else the deployment's configured expectation."""
        health = self.router.health.get(dep.name)
        if health.ewma_total_ms is not None:
            return health.ewma_total_ms
        ttft = dep.expected_ttft_ms if dep.expected_ttft_ms is not None else 500.0
        rate = dep.expected_tokens_per_s or 50.0
        return ttft + output_tokens / rate * 1000.0

    def price(self, model: str, usage: Usage) -> float | None:
        """What `usage` costs on the deployment `model` routes to first (the all-premium comparison)."""
        dep, _ = self._first(ModelCall(model=model, messages=[{"role": "user", "content": "x"}]))
        price = self.router.price(dep.name)
        return None if price is None else cost_usd(usage, price)


@asynccontextmanager
async def open_inprocess_backend(config_path: str | None = None) -> AsyncIterator[GatewayBackend]:
    """The router of `config_path`, or of the embedded simulator demo when no config is given."""
    sim = None
    if config_path:
        config: Config = load_config(config_path)
    else:
        from modelyard.config.demo import demo_config
        from modelyard.sim.server import SimServer

        sim = SimServer()
        await asyncio.to_thread(sim.start)
        config = demo_config(sim.url)
    router = Router(config, resolve_price=_price_resolver())
    try:
        async with router:
            yield GatewayBackend(router)
    finally:
        if sim is not None:
            await asyncio.to_thread(sim.stop)
