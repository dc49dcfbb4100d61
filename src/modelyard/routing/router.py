"""The router: one object that turns a canonical request into an answer, for the server and for workflows.

It wires the pure planner to the executor and owns the per-process state (health, RPM/TPM windows, the
connection pool). The HTTP server and the in-process workflow backend both call `complete`/`stream`, so
a workflow step takes exactly the path of a gateway request, minus the HTTP hop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from modelyard.config.model import Config, Deployment, Price
from modelyard.providers import load_adapters
from modelyard.providers.transport import Transport, make_transport
from modelyard.routing.admission import AdmissionQueues, Admitted, Grant, QueueTicket
from modelyard.routing.attempts import RetryPolicy
from modelyard.routing.context import DecisionContext, QualityFn
from modelyard.routing.executor import Executor, NativeBody, StreamResult, Success, VetAnswer, VetChunks
from modelyard.routing.features import RequestFeatures
from modelyard.routing.health import BreakerPolicy, HealthTracker
from modelyard.routing.limits import DeploymentLimits
from modelyard.routing.plan import Plan, make_plan
from modelyard.routing.table import PriceResolver, RoutingTable
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, ModelyardOptions
from modelyard.schema.endpoints import EndpointRequest

if TYPE_CHECKING:
    from modelyard.state.redis_health import SharedHealth

_R = TypeVar("_R")


def deployment_identity(dep: Deployment) -> tuple[str, str, str | None, str, bytes]:
    """What makes two deployments of the same name the same upstream (a reload keeps its health then)."""
    return (dep.provider, dep.model, dep.api_base, dep.kind, msgspec.json.encode(dep.options))


def breaker_policy(config: Config) -> BreakerPolicy:
    b = config.routing.breaker
    return BreakerPolicy(
        failures=b.failures,
        window_s=b.window_s,
        cooldown_s=b.cooldown_s,
        error_rate=b.error_rate,
        min_requests=b.min_requests,
    )


def retry_policy(config: Config) -> RetryPolicy:
    r = config.routing
    return RetryPolicy(
        retries=r.retries,
        base_s=r.backoff_base_s,
        max_backoff_s=r.max_backoff_s,
        retry_after_cap_s=r.retry_after_cap_s,
        max_attempts=r.max_attempts,
        failover_on_content_filter=r.failover_on_content_filter,
    )


class Router:
    """Plans and executes requests over the deployments of one config."""

    def __init__(
        self,
        config: Config,
        *,
        resolve_price: PriceResolver | None = None,
        seed: int | None = None,
        predecessor: Router | None = None,
    ) -> None:
        """`predecessor`: the router this one replaces on a reload, whose process state it takes over
        (`successor`)."""
        self.config = config
        self.table = RoutingTable.from_config(config, resolve_price)
        previous_release: Callable[[str], None] | None = None
        if predecessor is None:
            self.health = HealthTracker(breaker_policy(config), alpha=config.routing.latency_alpha)
            self.limits = DeploymentLimits()
        else:
            old_ids = {dep.name: deployment_identity(dep) for dep in predecessor.config.deployments}
            keep = {dep.name for dep in config.deployments if old_ids.get(dep.name) == deployment_identity(dep)}
            self.health = predecessor.health
            self.health.reconfigure(breaker_policy(config), alpha=config.routing.latency_alpha, keep=keep)
            self.limits = predecessor.limits
            self.limits.forget(set(old_ids) - keep)
            previous_release = self.health.on_release
        for group in config.models.values():
            bound = group.constraints.max_latency_ms
            if bound is not None:
                self.health.watch_latency(bound)
        self.admission = AdmissionQueues(config.queue, self.table, self.health, self.limits)
        if predecessor is not None:
            self.admission.rates = predecessor.admission.rates
            if previous_release is not None and predecessor.admission.has_waiters:
                poke = self.admission.poke
                earlier = previous_release

                def wake_both(deployment: str) -> None:
                    poke(deployment)
                    earlier(deployment)

                self.health.on_release = wake_both
        self.adapters = load_adapters({dep.provider for dep in config.deployments})
        seed = seed if seed is not None else config.routing.seed
        self.rng: random.Random = predecessor.rng if predecessor is not None and seed is None else random.Random(seed)
        self.policy = retry_policy(config)
        #: The health view's sync with the other replicas (state/redis_health.py), when configured.
        self.shared_health: SharedHealth | None = predecessor.shared_health if predecessor is not None else None
        self.deployment_names = frozenset(dep.name for dep in config.deployments)
        if self.shared_health is not None:
            self.shared_health.names = self.names  # the fleet's verdicts for names this replica now serves
        self._transport: Transport | None = predecessor._transport if predecessor is not None else None
        self._executor: Executor | None = None
        if self._transport is not None:
            self._executor = self._make_executor(self._transport)

    def successor(self, config: Config, *, resolve_price: PriceResolver | None = None) -> Router:
        """The router of a reloaded config, sharing this one's process state (docs/operations.md).

        Kept: the connection pool, the health view (breakers, latency statistics) and the RPM/TPM buckets of
        every deployment whose identity (provider, model, endpoint, options) did not change, the shared Redis
        buckets and health sync. New: the routing table, prices, policies, adapters and admission queues;
        requests already waiting in this router's queues drain under the plan they were admitted with (its
        queues keep being woken until they are empty). This router is not closed: requests in flight finish on
        it, and what it shares lives on in the successor.
        """
        return Router(config, resolve_price=resolve_price, predecessor=self)

    def names(self) -> frozenset[str]:
        """The deployments this router serves (the shared health view adopts verdicts for these only)."""
        return self.deployment_names

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        state = self.config.state
        if state.redis_url and self.admission.rates is None:
            from modelyard.state.redis_rates import SharedRates

            # Per-deployment RPM/TPM shared by the replicas: each dispatch to a rate-limited deployment is
            # confirmed there (routing/admission.py); the queue itself stays per replica.
            self.admission.rates = SharedRates(state.redis_url, prefix=state.prefix, timeout_s=state.redis_timeout_s)
        if state.redis_url and state.shared_health and self.shared_health is None:
            from modelyard.state.redis_health import SharedHealth

            # Breakers, probes and latency statistics shared by the replicas, synced in the background: the
            # request path reads and writes only the local tracker.
            self.shared_health = SharedHealth(
                self.health,
                state.redis_url,
                prefix=state.prefix,
                sync_s=state.health_sync_s,
                timeout_s=state.redis_timeout_s,
                names=self.names,
            )
            await self.shared_health.start()
        if self._transport is None:
            server = self.config.server
            self._transport = make_transport(server.http_client, max_answer_bytes=server.max_answer_bytes)
            self._executor = self._make_executor(self._transport)

    def _make_executor(self, transport: Transport) -> Executor:
        return Executor(
            transport=transport,
            adapters=self.adapters,
            health=self.health,
            limits=self.limits,
            prices=self.table.prices,
            policy=self.policy,
            rng=self.rng,
        )

    async def close(self) -> None:
        if self.shared_health is not None:
            shared, self.shared_health = self.shared_health, None
            await shared.close()
        rates = self.admission.rates
        if rates is not None:
            self.admission.rates = None
            await rates.close()
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
            self._executor = None

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise RuntimeError("Router.start() has not been awaited")
        return self._executor

    @property
    def started(self) -> bool:
        return self._executor is not None

    # ------------------------------------------------------------------ decisions

    def context(
        self, features: RequestFeatures, *, explain: bool = False, quality: QualityFn | None = None
    ) -> DecisionContext:
        return DecisionContext(
            features=features,
            health=self.health,
            limits=self.limits,
            now=time.monotonic(),
            rng=self.rng,
            prices=self.table.prices,
            explain=explain,
            quality=quality,
        )

    def plan(
        self,
        model: str,
        features: RequestFeatures,
        *,
        overrides: ModelyardOptions | None = None,
        strategy: str | None = None,
        explain: bool = False,
        quality: QualityFn | None = None,
        default_min_quality: float | None = None,
        default_lambda: float | None = None,
        explored: str | None = None,
    ) -> Plan:
        """Rank the deployments for `model`. `quality` carries learned per-deployment quality, if any;
        `explored` names the deployment recalibration explores with this request (recorded in the trace)."""
        ctx = self.context(features, explain=explain, quality=quality)
        ctx.default_min_quality = default_min_quality
        ctx.default_lambda = default_lambda
        ctx.explored = explored
        return make_plan(self.table, model, ctx, overrides, strategy)

    def replanner(self, features: RequestFeatures, explain: bool = False) -> Any:
        def replan(name: str) -> Plan:
            return make_plan(self.table, name, self.context(features, explain=explain))

        return replan

    # ------------------------------------------------------------------ execution

    async def complete(
        self,
        req: ChatRequest,
        raw: dict[str, Any],
        features: RequestFeatures,
        *,
        plan: Plan | None = None,
        timeout_s: float | None = None,
        native: NativeBody | None = None,
        vet: VetAnswer | None = None,
        queue: QueueTicket | None = None,
    ) -> Success:
        """A whole answer. `native`: the client's own body, sent as is to a deployment whose adapter speaks
        its format (the answer's `completion.native` then holds the provider's bytes). `vet`: judges each
        attempt's answer (output guardrails; a rejection fails over). `queue`: how the request may wait
        when its model is saturated (without one it fails at once, as before the queue)."""
        plan = plan or self.plan(req.model, features, overrides=req.modelyard)
        replan = self.replanner(features)

        def run(chosen: Plan, timeout: float | None, grant: Grant | None) -> Awaitable[Success]:
            return self.executor.complete(
                chosen, replan, req, raw, features, timeout_s=timeout, native=native, vet=vet, grant=grant
            )

        if self._straight_on(plan, features, queue):
            return await run(plan, timeout_s, None)
        success, waited_ms = await self._admitted(plan, features, queue, timeout_s, run)
        success.queue_ms = waited_ms
        return success

    async def stream(
        self,
        req: ChatRequest,
        raw: dict[str, Any],
        features: RequestFeatures,
        *,
        plan: Plan | None = None,
        timeout_s: float | None = None,
        native: NativeBody | None = None,
        vet_chunks: VetChunks | None = None,
        queue: QueueTicket | None = None,
    ) -> StreamResult:
        """A stream whose first chunks are in hand; with `vet_chunks`, read whole and vetted first."""
        plan = plan or self.plan(req.model, features, overrides=req.modelyard)
        replan = self.replanner(features)

        def run(chosen: Plan, timeout: float | None, grant: Grant | None) -> Awaitable[StreamResult]:
            return self.executor.open_stream(
                chosen,
                replan,
                req,
                raw,
                features,
                timeout_s=timeout,
                native=native,
                vet_chunks=vet_chunks,
                grant=grant,
            )

        if self._straight_on(plan, features, queue):
            return await run(plan, timeout_s, None)
        result, waited_ms = await self._admitted(plan, features, queue, timeout_s, run)
        result.queue_ms = waited_ms
        return result

    def _straight_on(self, plan: Plan, features: RequestFeatures, queue: QueueTicket | None) -> bool:
        """The common case, checked without a coroutine: no ticket, or local buckets and headroom now (the
        queue's one check); anything else goes through `_admitted` (a wait, a tier, a shared bucket)."""
        if queue is None:
            return True
        admission = self.admission
        return admission.rates is None and not admission.must_wait(
            plan, features.prompt_tokens + features.output_estimate(), queue
        )

    async def _admitted(
        self,
        plan: Plan,
        features: RequestFeatures,
        queue: QueueTicket | None,
        timeout_s: float | None,
        run: Callable[[Plan, float | None, Grant | None], Awaitable[_R]],
    ) -> tuple[_R, float]:
        """`run` once the request is admitted (at once, or after its wait), with what is left of the client's
        timeout and the queue's grant, which is given back if no attempt used it; and the time it waited."""
        admitted = await self._admit(plan, features, queue)
        grant = admitted.grant
        waited_ms = admitted.waited_ms
        if timeout_s is not None and waited_ms:
            timeout_s = max(0.001, timeout_s - waited_ms / 1000)  # the client's bound covers the wait
        try:
            return await run(admitted.plan, timeout_s, grant), waited_ms
        finally:
            if grant is not None:
                self.admission.release(grant)  # a no-op once an attempt used it

    async def _admit(self, plan: Plan, features: RequestFeatures, queue: QueueTicket | None) -> Admitted:
        """Wait in the admission queue, or go to a saturation tier, or a 429 (routing/admission.py); with shared
        buckets, each dispatch confirmed there."""
        if queue is None:
            return Admitted(plan)
        tokens = features.prompt_tokens + features.output_estimate()
        return await self.admission.admit(plan, tokens, queue, self.replanner(features))

    async def embed(
        self,
        req: EmbeddingRequest,
        raw: dict[str, Any],
        features: RequestFeatures,
        *,
        plan: Plan | None = None,
        timeout_s: float | None = None,
    ) -> Success:
        """Embeddings: the executor's one attempt loop (retry policy, failover, RPM/TPM windows, error
        attribution), never hedged."""
        plan = plan or self.plan(req.model, features)
        return await self.executor.embed(plan, self.replanner(features), req, raw, features, timeout_s=timeout_s)

    async def call_endpoint(
        self,
        req: EndpointRequest,
        features: RequestFeatures,
        *,
        plan: Plan | None = None,
        timeout_s: float | None = None,
    ) -> Success:
        """A non-chat endpoint (audio, images, rerank; `features.kind` names the deployment kind that serves
        it): the executor's one attempt loop, never hedged."""
        plan = plan or self.plan(req.model, features)
        return await self.executor.call_endpoint(plan, self.replanner(features), req, features, timeout_s=timeout_s)

    def price(self, deployment: str) -> Price | None:
        return self.table.prices.get(deployment)
