"""Admin API: the deployments and models of this gateway now (the dashboard's Deployments page reads the same
query function).

    GET /admin/deployments   every deployment's breaker, cooldown, recent error rate, latency, requests in
                             flight, limits and their headroom now, and the price in use with its source;
                             every model's strategy, candidates, fallbacks, rules and the aliases naming it

Why one function answers both: the page is a client of the API, so what an operator sees in the browser is
exactly what a script gets. This is this replica's view: breakers, latencies and buckets live in each process
(with `state.redis_url` the breakers and latency statistics are the fleet's, synced; the RPM/TPM buckets
show this replica's share, the shared ones being in Redis).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.routing.health import BreakerState, DeploymentHealth
from modelyard.server.admin import _services
from modelyard.server.http import Request, send_json

if TYPE_CHECKING:
    from modelyard.config.model import Deployment
    from modelyard.routing.router import Router
    from modelyard.routing.table import CompiledGroup
    from modelyard.server.admin_routes import AdminRoutes
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

DEPLOYMENTS_PATH = "/admin/deployments"
#: The breaker states as the API and the page's badges name them.
BREAKER_NAMES = {BreakerState.CLOSED: "closed", BreakerState.OPEN: "open", BreakerState.HALF_OPEN: "half-open"}


def _now(router: Router) -> float:
    """The executor's clock (the one breakers and buckets are kept on); monotonic before it starts."""
    return router.executor.clock() if router.started else time.monotonic()


def _finite(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None and math.isfinite(value) else None


def _price(dep: Deployment, router: Router) -> dict[str, Any]:
    """The price the routing table uses (USD per 1M tokens) and where it came from."""
    price = router.table.prices.get(dep.name)
    if price is None:
        return {"source": "unknown"}
    values = {k: v for k, v in msgspec.structs.asdict(price).items() if v is not None}
    return {**values, "source": "config" if dep.price is not None else "price table"}


def _errors(router: Router, health: DeploymentHealth | None, now: float) -> dict[str, Any]:
    """Counted failures inside the breaker window, and an error rate: over the window when the breaker keeps
    outcomes (`error_rate:` set), else over every attempt since the process started (say which)."""
    if health is None:
        return {"error_rate": None, "errors_recent": 0, "error_rate_over": "window"}
    policy = router.health.policy_for(health.name)
    start = now - policy.window_s
    recent = sum(1 for at in list(health.recent_failures) if at >= start)
    outcomes = [failed for at, failed in list(health.recent_outcomes) if at >= start]
    if policy.error_rate is not None:
        rate = sum(outcomes) / len(outcomes) if outcomes else None
        return {"error_rate": _finite(rate, 4), "errors_recent": recent, "error_rate_over": "window"}
    total = health.successes + health.failures
    rate = health.failures / total if total else None
    return {"error_rate": _finite(rate, 4), "errors_recent": recent, "error_rate_over": "since start"}


def _deployment(router: Router, dep: Deployment, now: float) -> dict[str, Any]:
    tracker = router.health
    health = tracker.all().get(dep.name)  # no entry made for a deployment never called
    state = health.state if health is not None else BreakerState.CLOSED
    cooldown = 0.0
    if health is not None and state is BreakerState.OPEN:
        cooldown = max(0.0, health.opened_at + tracker.policy_for(dep.name).cooldown_s - now)
    in_flight = health.in_flight if health is not None else 0
    limits = dep.limits
    rpm_left, tpm_left, rpm_capacity, tpm_capacity = router.limits.room(dep.name, limits, now)
    concurrency_left = max(0, limits.max_concurrency - in_flight) if limits.max_concurrency is not None else None
    return {
        "name": dep.name,
        "provider": dep.provider,
        "model": dep.model,
        "kind": dep.kind,
        "breaker": BREAKER_NAMES[state],
        "cooldown_s": round(cooldown, 3),
        **_errors(router, health, now),
        "requests_ok": health.successes if health is not None else 0,
        "requests_failed": health.failures if health is not None else 0,
        "latency": {
            "ewma_ms": _finite(health.ewma_total_ms if health else None, 1),
            "p95_ms": _finite(health.p95_ms if health else None, 1),
            "ttft_ms": _finite(health.ewma_ttft_ms if health else None, 1),
        },
        "in_flight": in_flight,
        "limits": {
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "max_concurrency": limits.max_concurrency,
            "burst_s": limits.burst_s,
        },
        "headroom": {
            "rpm_left": _finite(rpm_left, 2),
            "tpm_left": _finite(tpm_left, 0),
            "concurrency_left": concurrency_left,
            "rpm_capacity": _finite(rpm_capacity, 2),
            "tpm_capacity": _finite(tpm_capacity, 0),
        },
        "price": _price(dep, router),
    }


def _model(name: str, group: CompiledGroup, aliases: dict[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "strategy": group.group.strategy,
        "candidates": [dep.name for dep in group.candidates],
        "fallbacks": list(group.fallbacks),
        "saturation_fallbacks": list(group.saturation_tiers),
        "aliases": sorted(alias for alias, target in aliases.items() if target == name),
    }
    if group.rules:
        entry["rules"] = [rule.text for rule in group.rules]
    return entry


async def deployments_data(gw: Gateway) -> dict[str, Any]:
    """Every deployment's health, limits' headroom and price now, and every model's routing (JSON-able)."""
    router = gw.router
    now = _now(router)
    config = router.config
    shared = router.shared_health is not None
    return {
        "object": "deployments",
        "view": "fleet (shared health, synced through Redis)" if shared else "this replica",
        "shared_health": shared,
        "data": [_deployment(router, dep, now) for dep in config.deployments],
        "models": [_model(name, group, config.aliases) for name, group in router.table.groups.items()],
    }


async def deployments(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    await send_json(request.send, 200, await deployments_data(gw))


def install(routes: AdminRoutes) -> None:
    """Register this module's endpoints."""
    routes.add("GET", DEPLOYMENTS_PATH, deployments)
