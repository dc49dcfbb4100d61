"""Prometheus metrics at GET /metrics, fed by request outcomes, on a registry of this gateway's own.

The request path only bumps plain dict counters and histogram buckets (`on_outcome`, a few µs); the
prometheus-client families are built when /metrics is scraped, by a custom collector on a per-gateway
`CollectorRegistry` (never the global one, so two gateways in one process, as in tests and benchmarks,
do not mix). In-flight requests and circuit-breaker states are read from the router's health view at
scrape time; breaker transitions are counted as they happen (a `router.health.listeners` subscriber).
The admission queue reports its dispatches and sheds as they happen (`Metrics` is its `QueueListener`);
queue depths are read from it at scrape time.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from modelyard.routing.health import BreakerState
from modelyard.server.http import send_bytes
from modelyard.server.observe import Outcome

if TYPE_CHECKING:
    from modelyard.accounting.spend import SpendWriter
    from modelyard.routing.recalibration import Recalibration
    from modelyard.routing.router import Router
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext
    from modelyard.server.guards import RequestGuards
    from modelyard.server.http import Request

#: Seconds; from a cache hit to a long reasoning answer.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
_TOKEN_KINDS = ("prompt", "completion", "cached", "cache_write", "reasoning")
#: Seconds in the admission queue; a request may wait up to an hour (`queue.max_wait_ms`).
QUEUE_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
#: Why the queue refused or dropped a request (routing/admission.py); anything else is counted as `other`.
SHED_REASONS = frozenset({"full", "key_full", "deadline", "timeout", "left"})


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0.0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class _Series:
    """Everything counted for one (requested model, deployment): one dict probe per request."""

    __slots__ = ("cost", "latency", "statuses", "tokens", "ttft")

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.latency = _Histogram()
        self.ttft: _Histogram | None = None
        self.tokens = [0, 0, 0, 0, 0]  # _TOKEN_KINDS
        self.cost = 0.0


class Metrics:
    """An Observer that keeps the gateway's counters, and the /metrics endpoint that exposes them."""

    def __init__(self, router: Router, *, spend: SpendWriter | None = None, unpriced: list[str] | None = None) -> None:
        self.router = router
        self.spend = spend
        self.unpriced = list(unpriced or [])
        #: The key counters (state/counters.py), for modelyard_state_unavailable; set by build_services.
        self.counters: Any = None
        #: The root gateway (set by it): its reloader, response cache and current generation's semantic cache.
        self.gateway: Any = None
        self.series: dict[tuple[str, str], _Series] = {}
        #: Label values a client can choose are limited to these names (anything else is `other`), so the
        #: number of series is bounded by the config, never by traffic.
        self.known_models = frozenset(router.config.models) | {d.name for d in router.config.deployments}
        self.errors: dict[str, int] = {}
        self.attempts: dict[tuple[str, str], int] = {}
        self.transitions: dict[tuple[str, str], int] = {}
        #: Guardrail checks: (label, stage, action, result: pass | fired | error) → count, and seconds per label.
        self.guard_checks: dict[tuple[str, str, str, str], int] = {}
        self.guard_seconds: dict[str, float] = {}
        #: Admission queue: (model, class) → seconds waited before dispatch; (model, class, reason) → sheds.
        self.queue_waits: dict[tuple[str, str], _Histogram] = {}
        self.queue_sheds: dict[tuple[str, str, str], int] = {}
        self.known_classes = frozenset(c.name for c in router.config.queue.classes)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        router.health.listeners.append(self.on_breaker)
        router.admission.listener = self

    def adopt(self, router: Router) -> None:
        """A reload: scrape the new router; labels may name its models and classes too (the names of every
        config this process has served: still bounded by the operator's files, never by traffic)."""
        if self.router.admission.listener is self:
            self.router.admission.listener = None
        self.router = router
        config = router.config
        self.known_models = self.known_models | frozenset(config.models) | {d.name for d in config.deployments}
        self.known_classes = self.known_classes | frozenset(c.name for c in config.queue.classes)
        if self.on_breaker not in router.health.listeners:
            router.health.listeners.append(self.on_breaker)
        router.admission.listener = self

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        listeners = self.router.health.listeners
        if self.on_breaker in listeners:
            listeners.remove(self.on_breaker)
        if self.router.admission.listener is self:
            self.router.admission.listener = None

    # ------------------------------------------------------------------ hot path

    def on_outcome(self, outcome: Outcome) -> None:
        ctx = outcome.ctx
        model = ctx.requested_model
        if model is None or not ctx.authenticated:
            model = "-"
        elif model not in self.known_models:
            model = "other"
        pair = (model, outcome.deployment or "-")
        series = self.series.get(pair)
        if series is None:
            series = self.series[pair] = _Series()
        statuses = series.statuses
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        series.latency.observe(outcome.latency_ms / 1000.0)
        if outcome.ttft_ms is not None:
            if series.ttft is None:
                series.ttft = _Histogram()
            series.ttft.observe(outcome.ttft_ms / 1000.0)
        usage = outcome.usage
        if usage.prompt or usage.completion:
            tokens = series.tokens
            tokens[0] += usage.prompt
            tokens[1] += usage.completion
            tokens[2] += usage.cached
            tokens[3] += usage.cache_write
            tokens[4] += usage.reasoning
        series.cost += outcome.cost_usd
        kind = outcome.error_kind
        if kind is not None:
            self.errors[kind] = self.errors.get(kind, 0) + 1
        attempts = self.attempts
        for record in outcome.records:
            slot = (record.deployment, record.outcome)
            attempts[slot] = attempts.get(slot, 0) + 1
        guards = outcome.guards
        if guards is not None and guards.findings:
            self._guardrails(guards)

    def _guardrails(self, guards: RequestGuards) -> None:
        """Each check's result; labels are configured names or built-in checks only (bounded by the config)."""
        checks, seconds = self.guard_checks, self.guard_seconds
        label_of = guards.index.metric_label
        for finding in guards.findings:
            label = label_of(finding)
            result = "error" if finding.error is not None else ("fired" if finding.fired else "pass")
            slot = (label, finding.stage, finding.action, result)
            checks[slot] = checks.get(slot, 0) + 1
            seconds[label] = seconds.get(label, 0.0) + finding.elapsed_ms / 1000.0

    def on_breaker(self, deployment: str, old: BreakerState, new: BreakerState) -> None:
        slot = (deployment, new.value)
        self.transitions[slot] = self.transitions.get(slot, 0) + 1

    def on_dispatch(self, model: str, cls: str, waited_s: float) -> None:
        """A queued request got its turn after `waited_s` (routing/admission.py, QueueListener)."""
        slot = self._queue_labels(model, cls)
        histogram = self.queue_waits.get(slot)
        if histogram is None:
            histogram = self.queue_waits[slot] = _Histogram(QUEUE_BUCKETS)
        histogram.observe(max(0.0, waited_s))

    def on_shed(self, model: str, cls: str, reason: str) -> None:
        """The queue refused a request (full, key_full, deadline) or dropped a waiting one (timeout, left)."""
        slot = (*self._queue_labels(model, cls), reason if reason in SHED_REASONS else "other")
        self.queue_sheds[slot] = self.queue_sheds.get(slot, 0) + 1

    def _queue_labels(self, model: str, cls: str) -> tuple[str, str]:
        """Configured names only, so the series are bounded by the config."""
        return (
            model if model in self.known_models else "other",
            cls if cls in self.known_classes else "other",
        )

    # ------------------------------------------------------------------ scrape

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> Iterator[Metric]:
        yield from self._traffic()
        yield from self._timing()
        yield from self._state()
        yield from self._queue()

    def _traffic(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modelyard_requests",
            "Requests by requested model, serving deployment and status (ok, error, stream_error, cancelled).",
            labels=["model", "deployment", "status"],
        )
        series_now = list(self.series.items())  # scraped on a worker thread: iterate over snapshots
        for (model, deployment), series in series_now:
            for status, count in list(series.statuses.items()):
                requests.add_metric([model, deployment, status], count)
        errors = CounterMetricFamily("modelyard_errors", "Failed requests by error kind.", labels=["kind"])
        for kind, value in list(self.errors.items()):
            errors.add_metric([kind], value)
        attempts = CounterMetricFamily(
            "modelyard_attempts", "Provider attempts by deployment and outcome.", labels=["deployment", "outcome"]
        )
        for (deployment, outcome), value in list(self.attempts.items()):
            attempts.add_metric([deployment, outcome], value)
        tokens = CounterMetricFamily(
            "modelyard_tokens",
            "Tokens by model, deployment and kind (prompt "
            "includes cached and cache_write; completion includes reasoning).",
            labels=["model", "deployment", "type"],
        )
        for (model, deployment), series in series_now:
            for kind, count in zip(_TOKEN_KINDS, series.tokens, strict=True):
                tokens.add_metric([model, deployment, kind], count)
        cost = CounterMetricFamily(
            "modelyard_cost_usd", "Cost in USD of the answers, from actual usage.", labels=["model", "deployment"]
        )
        for (model, deployment), series in series_now:
            cost.add_metric([model, deployment], series.cost)
        yield from (requests, errors, attempts, tokens, cost)
        yield from self._guardrail_families()

    def _guardrail_families(self) -> Iterator[Metric]:
        checks = CounterMetricFamily(
            "modelyard_guardrail_checks",
            "Guardrail checks by label, stage, action and result (pass, fired, error: the check itself failed).",
            labels=["label", "stage", "action", "result"],
        )
        for (label, stage, action, result), count in list(self.guard_checks.items()):
            checks.add_metric([label, stage, action, result], count)
        seconds = CounterMetricFamily(
            "modelyard_guardrail_seconds", "Time spent in guardrail checks, by label.", labels=["label"]
        )
        for label, spent in list(self.guard_seconds.items()):
            seconds.add_metric([label], spent)
        yield from (checks, seconds)

    def _timing(self) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            "modelyard_request_duration_seconds", "Request latency, end to end.", labels=["model", "deployment"]
        )
        ttft = HistogramMetricFamily(
            "modelyard_ttft_seconds", "Time to first token of streamed answers.", labels=["model", "deployment"]
        )
        for (model, deployment), series in list(self.series.items()):
            latency.add_metric([model, deployment], series.latency.cumulative(), series.latency.sum)
            if series.ttft is not None:
                ttft.add_metric([model, deployment], series.ttft.cumulative(), series.ttft.sum)
        yield from (latency, ttft)

    def _state(self) -> Iterator[Metric]:
        health = self.router.health.all()
        in_flight = GaugeMetricFamily(
            "modelyard_in_flight", "Provider attempts in flight per deployment.", labels=["deployment"]
        )
        breaker = GaugeMetricFamily(
            "modelyard_breaker_state",
            "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"],
        )
        for dep in self.router.config.deployments:
            state = health.get(dep.name)
            in_flight.add_metric([dep.name], state.in_flight if state else 0)
            breaker.add_metric([dep.name], _BREAKER_VALUE[state.state] if state else 0)
        transitions = CounterMetricFamily(
            "modelyard_breaker_transitions", "Circuit breaker state changes.", labels=["deployment", "state"]
        )
        for (deployment, state_name), value in list(self.transitions.items()):
            transitions.add_metric([deployment, state_name], value)
        unknown = GaugeMetricFamily(
            "modelyard_price_unknown",
            "1 for deployments whose price is unknown (their cost is counted as 0).",
            labels=["deployment"],
        )
        for name in self.unpriced:
            unknown.add_metric([name], 1)
        yield from (in_flight, breaker, transitions, unknown)
        if self.counters is not None:
            yield from _redis_part(
                ("modelyard_state_unavailable", "modelyard_state_outages"),
                "the shared counters",
                "state.on_unavailable applies",
                self.counters.degraded,
                getattr(self.counters, "outages", 0),
            )
        yield from self._replica_metrics()
        rates = self.router.admission.rates
        if rates is not None:
            yield from _redis_part(
                ("modelyard_shared_buckets_unavailable", "modelyard_shared_buckets_outages"),
                "the per-deployment RPM/TPM buckets",
                "each replica keeps to the whole limit by itself",
                getattr(rates, "degraded", False),
                getattr(rates, "outages", 0),
            )
        if self.spend is not None:
            spend = self.spend
            yield CounterMetricFamily("modelyard_spend_log_written", "Spend records written.", value=spend.written)
            yield CounterMetricFamily(
                "modelyard_spend_log_dropped",
                "Spend records dropped (no spool and a full queue, or the store down at shutdown).",
                value=spend.dropped,
            )
            yield GaugeMetricFamily(
                "modelyard_spend_log_pending", "Spend records waiting to be written.", value=spend.pending
            )
            yield CounterMetricFamily(
                "modelyard_spend_log_dead_letters",
                "Spend records the store refused even sanitised, set aside in modelyard_spend_dead.",
                value=spend.dead_letters,
            )
            yield CounterMetricFamily(
                "modelyard_spend_log_replayed",
                "Spend records replayed from the spool at start (left by a crash).",
                value=spend.replayed,
            )
            yield CounterMetricFamily(
                "modelyard_spend_spool_errors",
                "Failed spool writes (their records were only in memory).",
                value=spend.spool_errors,
            )

    def _replica_metrics(self) -> Iterator[Metric]:
        """What many replicas share: reloads, the shared health view, the response and semantic caches."""
        gateway = self.gateway
        if gateway is None:
            return
        reloader = gateway.reloader
        if reloader is not None:
            reloads = CounterMetricFamily(
                "modelyard_config_reloads",
                "Config reloads by outcome (an error keeps the old config).",
                labels=["outcome"],
            )
            reloads.add_metric(["ok"], reloader.ok)
            reloads.add_metric(["error"], reloader.failed)
            yield reloads
            yield GaugeMetricFamily(
                "modelyard_config_generation", "Reloads applied since the process started.", value=reloader.generation
            )
            yield GaugeMetricFamily(
                "modelyard_config_last_reload_timestamp_seconds",
                "When the config in use was loaded (Unix time).",
                value=reloader.last_ok_at,
            )
        shared = self.router.shared_health
        if shared is not None:
            yield from _redis_part(
                ("modelyard_shared_health_unavailable", "modelyard_shared_health_outages"),
                "the shared health view",
                "this replica decides on its own view alone",
                shared.unavailable,
                shared.outages,
            )
            for name, help_text, value in (
                (
                    "modelyard_shared_health_remote_opens",
                    "Breakers opened here by another replica's verdict.",
                    shared.remote_opens,
                ),
                (
                    "modelyard_shared_health_probes_won",
                    "Half-open probes this replica took for the fleet.",
                    shared.probes_won,
                ),
                (
                    "modelyard_shared_health_probes_lost",
                    "Half-open probes another replica took first.",
                    shared.probes_lost,
                ),
            ):
                yield CounterMetricFamily(name, help_text, value=value)
        cache = gateway.response_cache
        if cache is not None:
            stats = cache.stats
            for name, help_text, value in (
                ("modelyard_response_cache_hits", "Answers served from the response cache.", stats.hits),
                ("modelyard_response_cache_misses", "Cacheable requests the cache did not have.", stats.misses),
                ("modelyard_response_cache_stores", "Answers stored in the response cache.", stats.stores),
                (
                    "modelyard_response_cache_evictions",
                    "Entries dropped to keep within the cache's bounds.",
                    stats.evictions,
                ),
                (
                    "modelyard_response_cache_too_large",
                    "Answers not cached: over cache.max_entry_bytes.",
                    stats.too_large,
                ),
                (
                    "modelyard_response_cache_errors",
                    "Cache backend (Redis) calls that failed: a miss or no store.",
                    stats.redis_errors,
                ),
                ("modelyard_response_cache_written_bytes", "Bytes stored in the response cache.", stats.bytes_written),
            ):
                yield CounterMetricFamily(name, help_text, value=value)
            yield GaugeMetricFamily(
                "modelyard_response_cache_bytes", "Bytes the in-memory response cache holds now.", value=stats.bytes
            )
            yield _flag(
                "modelyard_response_cache_unavailable",
                "1 while the shared response cache (Redis) is unreachable: this replica's own cache serves alone.",
                cache.unavailable,
            )
        sharing = getattr(gateway.current.intelligence, "sharing", None)
        if sharing is not None:
            yield from _redis_part(
                ("modelyard_semantic_cache_shared_unavailable", "modelyard_semantic_cache_shared_outages"),
                "the shared semantic cache",
                "this replica's cache is local only",
                sharing.unavailable,
                sharing.outages,
            )
            yield CounterMetricFamily(
                "modelyard_semantic_cache_shared_received",
                "Entries received from other replicas.",
                value=sharing.received,
            )
        yield from _recalibration_metrics(getattr(gateway.current.intelligence, "recalibration", None))
        feedback = gateway.current.feedback
        verdicts = CounterMetricFamily(
            "modelyard_feedback",
            "POST /v1/feedback verdicts by outcome (stored, or no such request).",
            labels=["outcome"],
        )
        verdicts.add_metric(["accepted"], feedback.accepted)
        verdicts.add_metric(["not_found"], feedback.not_found)
        yield verdicts

    def _queue(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "modelyard_queue_depth",
            "Requests waiting in the admission queue, by model and priority class (this replica).",
            labels=["model", "class"],
        )
        depths: dict[tuple[str, str], int] = {}
        for model, cls, waiting in self.router.admission.depths():  # a copy, safe off the loop
            slot = self._queue_labels(model, cls)
            depths[slot] = depths.get(slot, 0) + waiting
        for (model, cls), waiting in depths.items():
            depth.add_metric([model, cls], waiting)
        waits = HistogramMetricFamily(
            "modelyard_queue_wait_seconds",
            "Time queued requests waited for their turn, by model and priority class.",
            labels=["model", "class"],
        )
        for (model, cls), histogram in list(self.queue_waits.items()):
            waits.add_metric([model, cls], histogram.cumulative(), histogram.sum)
        sheds = CounterMetricFamily(
            "modelyard_queue_shed",
            "Requests the admission queue refused (full, key_full, deadline) or dropped while they waited "
            "(timeout, left: the client went away).",
            labels=["model", "class", "reason"],
        )
        for (model, cls, reason), count in list(self.queue_sheds.items()):
            sheds.add_metric([model, cls, reason], count)
        yield from (depth, waits, sheds)


def _recalibration_metrics(recal: Recalibration | None) -> Iterator[Metric]:
    """Per recalibrated route: the quality feedback estimates next to its target, the knob's shift, the weight
    of evidence behind the estimate (docs/feedback.md); read at scrape time from the folded state."""
    if recal is None:
        return
    gauges = {
        name: GaugeMetricFamily(name, help_text, labels=["model"])
        for name, help_text in (
            ("modelyard_recalibration_estimated_quality", "Mean feedback score of the route's last folded window."),
            ("modelyard_recalibration_target", "The quality the route's knob is calibrated to reach."),
            ("modelyard_recalibration_knob_shift", "How far feedback has moved the route's calibrated knob."),
            ("modelyard_recalibration_weight", "Effective number of feedback samples behind the estimate."),
        )
    }
    for route, spec in recal.specs.items():
        state = recal.state.get(route)
        if state is None:
            continue
        if state.quality is not None:
            gauges["modelyard_recalibration_estimated_quality"].add_metric([route], state.quality)
        if spec.target is not None:
            gauges["modelyard_recalibration_target"].add_metric([route], spec.target)
        gauges["modelyard_recalibration_knob_shift"].add_metric([route], state.knob_shift)
        gauges["modelyard_recalibration_weight"].add_metric([route], state.weight)
    yield from gauges.values()
    yield CounterMetricFamily(
        "modelyard_recalibration_refresh_errors", "Recalibration refreshes that failed (the store).", value=recal.errors
    )


def _flag(name: str, help_text: str, value: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=int(value))


def _redis_part(names: tuple[str, str], what: str, meanwhile: str, unavailable: bool, outages: int) -> Iterator[Metric]:
    """Every part that keeps state in Redis reports the same two series: an `_unavailable` gauge (1 while Redis
    is unreachable for it) and an `_outages` counter (how often it became unreachable). The names are written
    out whole where they are used, so each metric name stands in this file as it is exported."""
    flag, count = names
    yield _flag(flag, f"1 while {what} (Redis) is unreachable: {meanwhile}.", unavailable)
    yield CounterMetricFamily(count, f"Times {what} became unreachable.", value=outages)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()


async def metrics_endpoint(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    metrics: Any = gw.services.metrics if gw.services is not None else None
    if metrics is None:
        await send_bytes(request.send, 404, b"metrics are off\n", [(b"content-type", b"text/plain")])
        return
    headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
    body = await asyncio.to_thread(metrics.exposition)  # rendering never holds the event loop
    await send_bytes(request.send, 200, body, headers)
