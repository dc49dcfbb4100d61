"""Candidate filters: which deployments may serve this request at all.

Applied before any strategy ranks: kind, context window, capabilities, circuit breaker, concurrency cap
and RPM/TPM headroom. Each exclusion is recorded with its reason so a decision can explain itself and a
"no deployment available" error can say why.
"""

from __future__ import annotations

from modelyard.config.model import Deployment
from modelyard.routing.context import DecisionContext


def filter_candidates(deployments: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    features = ctx.features
    health = ctx.health
    limits = ctx.limits
    now = ctx.now
    needed = features.prompt_tokens + (features.max_output_tokens or 0)
    kept: list[Deployment] = []
    for dep in deployments:
        if dep.kind != features.kind:
            ctx.skip(dep, f"serves {dep.kind}, request is {features.kind}")
            continue
        if dep.context_window is not None and needed > dep.context_window:
            ctx.skip(dep, f"context window {dep.context_window} < {needed} tokens (prompt + max_tokens)")
            continue
        missing = _missing_capability(dep, ctx)
        if missing:
            ctx.skip(dep, f"lacks capability {missing}")
            continue
        if not health.available(dep.name, now):
            ctx.skip(dep, f"circuit {health.get(dep.name).state.value}")
            continue
        dep_limits = dep.limits
        if dep_limits.max_concurrency is not None and health.get(dep.name).in_flight >= dep_limits.max_concurrency:
            ctx.skip(dep, f"max_concurrency {dep_limits.max_concurrency} reached")
            continue
        if dep_limits.rpm is not None or dep_limits.tpm is not None:
            reason = limits.headroom(dep.name, now, dep_limits.rpm, dep_limits.tpm,
                                     features.prompt_tokens + features.output_estimate())
            if reason:
                ctx.skip(dep, reason)
                continue
        kept.append(dep)
    return kept


def _missing_capability(dep: Deployment, ctx: DecisionContext) -> str | None:
    features = ctx.features
    if features.needs_tools and not dep.has("tools"):
        return "tools"
    if features.needs_vision and not dep.has("vision"):
        return "vision"
    if features.needs_json_schema and not dep.has("json_schema"):
        return "json_schema"
    return None
