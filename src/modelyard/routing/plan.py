"""The planner: request features + model group + health view → ranked deployments, explained.

Pure: it reads the routing table, the decision context and the per-request overrides; it performs no
I/O and reads no clock. The executor then walks the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msgspec.structs import replace

from modelyard.config.model import Deployment
from modelyard.routing.candidates import (
    BELOW_FLOOR,
    NOT_ACCEPTED,
    NOT_ACCEPTED_NO_BAR,
    GroupProfile,
    filter_acceptance,
    filter_candidates,
)
from modelyard.routing.context import DecisionContext
from modelyard.routing.rules import Rule, first_match
from modelyard.routing.strategies import STRATEGIES
from modelyard.routing.table import RoutingTable
from modelyard.schema.chat import ModelyardOptions
from modelyard.schema.errors import GatewayError

#: The skip reason of a deployment outside the key's scope (planner and executor alike).
OUTSIDE_SCOPE = "outside this key's models"


@dataclass(slots=True)
class Plan:
    """The ranked deployments for one model name, and why."""

    model: str
    strategy: str
    order: list[Deployment]
    ctx: DecisionContext
    rule: Rule | None = None
    fallbacks: tuple[str, ...] = ()
    considered: list[Deployment] = field(default_factory=list)
    hedge_after_ms: float | None = None
    retries: int | None = None

    def explain(self) -> dict[str, Any]:
        """Ranked candidates with the reason each was chosen, kept or skipped."""
        ranked: list[dict[str, Any]] = []
        sticky = self.ctx.sticky
        for i, dep in enumerate(self.order):
            reason = self.ctx.notes.get(dep.name, "")
            if dep.name == sticky:
                reason = f"{reason}; sticky: {sticky}" if reason else f"sticky: {sticky}"
            ranked.append(
                {
                    "deployment": dep.name,
                    "decision": "chosen" if i == 0 else "kept",
                    "rank": i + 1,
                    "reason": reason,
                }
            )
        for skip in self.ctx.skipped:
            ranked.append({"deployment": skip.deployment, "decision": "skipped", "rank": None, "reason": skip.reason})
        features = self.ctx.features
        return {
            "model": self.model,
            "strategy": self.strategy,
            "rule": self.rule.text if self.rule else None,
            "features": {
                "prompt_tokens": features.prompt_tokens,
                "max_tokens": features.max_output_tokens,
                "tools": features.needs_tools,
                "images": features.needs_vision,
                "audio": features.needs_audio,
                "json": features.needs_json,
                "task": features.task,
            },
            "candidates": ranked,
            "fallbacks": list(self.fallbacks),
            "sticky": sticky,
        }


def make_plan(
    table: RoutingTable,
    model: str,
    ctx: DecisionContext,
    overrides: ModelyardOptions | None = None,
    strategy_override: str | None = None,
    _depth: int = 0,
) -> Plan:
    """Rank the deployments that may serve `model` (a model name, a deployment name or an alias)."""
    group = table.groups.get(model)
    if group is None and model not in table.deployments:
        model = table.resolve(model)
        group = table.groups.get(model)
    if group is None:
        return _direct_plan(table, model, ctx)
    options = group.group
    ctx.constraints = (
        options.constraints.overridden_by(overrides.constraints)
        if overrides is not None and overrides.constraints is not None
        else options.constraints
    )
    ctx.options = options.options
    strategy = (
        strategy_override or (overrides.strategy if overrides and overrides.strategy else None) or options.strategy
    )
    candidates = list(group.candidates)
    profile: GroupProfile | None = group.profile
    if overrides and overrides.candidates:
        candidates = _resolve_override(table, overrides.candidates)
        profile = None
    fallbacks = tuple(overrides.fallbacks) if overrides and overrides.fallbacks is not None else group.fallbacks
    rule = None
    if strategy == "rules":
        rule = first_match(group.rules, ctx.features)
        if rule is None:
            raise GatewayError(
                400,
                f"no routing rule of model `{model}` matches this request and it has no default",
                param="model",
                code="no_route",
            )
        if rule.model is not None:
            if _depth > 4:
                raise GatewayError(500, "routing rules delegate too deeply", type="server_error")
            inner = make_plan(table, rule.model, ctx, None, None, _depth + 1)
            inner.rule = rule
            inner.fallbacks = inner.fallbacks or fallbacks
            return inner
        candidates = [table.deployments[name] for name in rule.use]
        profile = None
        strategy = rule.strategy or "priority"
        for dep in candidates:
            ctx.note(dep, f"rule {rule.index}: {rule.text}")
    allowed = ctx.features.allowed
    if allowed is not None and not all(dep.name in allowed for dep in candidates):
        candidates = _within(candidates, allowed, ctx)
        profile = None
    kept = filter_candidates(candidates, ctx, profile=profile)
    if profile is not None and len(kept) == len(candidates):
        ctx.static_cache = group.cache
    kept, acceptance_notes = _acceptance(kept, ctx, strategy)
    if strategy == "learned":
        _learned_defaults(ctx)
    ranker = STRATEGIES.get(strategy)
    if ranker is None:
        raise GatewayError(400, f"unknown routing strategy `{strategy}`", param="strategy", code="bad_strategy")
    order = ranker(kept, ctx) if kept else []
    if acceptance_notes:
        _add_notes(ctx, acceptance_notes)
    return Plan(
        model,
        strategy,
        order,
        ctx,
        rule,
        fallbacks,
        candidates,
        hedge_after_ms=_hedge_after(group.hedge_after_ms, group.hedge_p95, order, ctx),
        retries=options.retries,
    )


def _learned_defaults(ctx: DecisionContext) -> None:
    """A `learned` route that sets neither `min_quality` nor `options.lambda` gets the router's calibrated knob."""
    if ctx.constraints.min_quality is None and ctx.options.lambda_ is None:
        if ctx.default_lambda is not None:
            ctx.options = replace(ctx.options, lambda_=ctx.default_lambda)
        elif ctx.default_min_quality is not None:
            ctx.constraints = replace(ctx.constraints, min_quality=ctx.default_min_quality)


def _acceptance(kept: list[Deployment], ctx: DecisionContext, strategy: str) -> tuple[list[Deployment], dict[str, str]]:
    """`accepted: true` and a `learned` route's `min_quality` as a floor on acceptance pass rates (quality_from);
    nothing to do, and nothing done, for the other routes."""
    constraints = ctx.constraints
    floor = constraints.min_quality if strategy == "learned" else None
    if not constraints.accepted and floor is None:
        return kept, {}
    allowed, notes = filter_acceptance(kept, ctx, require=bool(constraints.accepted), floor=floor)
    if len(allowed) != len(kept):
        ctx.static_cache = None  # the cached per-model work assumed every candidate
    return allowed, notes


def _add_notes(ctx: DecisionContext, extra: dict[str, str]) -> None:
    """Put the acceptance filter's notes after the strategy's own (explain mode only)."""
    notes = ctx.notes
    for name, text in extra.items():
        notes[name] = f"{notes[name]}; {text}" if notes.get(name) else text


def _direct_plan(table: RoutingTable, model: str, ctx: DecisionContext) -> Plan:
    """A request that names a deployment rather than a model."""
    dep = table.deployments.get(model)
    if dep is None:
        raise GatewayError(
            404,
            f"The model `{model[:256]}` does not exist (not a configured model or deployment)",
            type="invalid_request_error",
            param="model",
            code="model_not_found",
        )
    allowed = ctx.features.allowed
    if allowed is not None and dep.name not in allowed:
        raise GatewayError(
            403,
            f"This key may not use deployment `{model}`.",
            type="permission_error",
            param="model",
            code="model_not_allowed",
        )
    ctx.note(dep, "named directly in the request")
    return Plan(model, "direct", filter_candidates([dep], ctx), ctx, considered=[dep])


def _within(candidates: list[Deployment], allowed: frozenset[str], ctx: DecisionContext) -> list[Deployment]:
    """The candidates a restricted key may reach; the others are skipped, with the reason."""
    kept = []
    for dep in candidates:
        if dep.name in allowed:
            kept.append(dep)
        else:
            ctx.skip(dep, OUTSIDE_SCOPE)
    return kept


def _resolve_override(table: RoutingTable, names: list[str]) -> list[Deployment]:
    resolved = []
    for name in names:
        dep = table.deployments.get(name)
        if dep is None:
            raise GatewayError(400, f"modelyard.candidates: unknown deployment `{name}`", param="modelyard.candidates")
        resolved.append(dep)
    return resolved


def _hedge_after(fixed: float | None, p95: bool, order: list[Deployment], ctx: DecisionContext) -> float | None:
    if fixed is not None:
        return fixed
    if p95 and order:
        observed = ctx.health.get(order[0].name).p95_ms
        if observed is not None:
            health = ctx.health.get(order[0].name)
            # Hedge on time to first token when streaming, else on the whole answer's p95.
            if ctx.features.stream and health.ewma_ttft_ms is not None:
                return max(health.ewma_ttft_ms * 2.0, 1.0)
            return observed
    return None


#: Skip reasons that the request itself causes: no retry, no other moment, no other replica would serve it,
#: so "nothing can serve it" is the client's error (a 400), not an outage (a 503 that SDKs retry).
_REQUEST_REASONS = {
    "serves {}, request is {}": "wrong_model_kind",
    "context window {} < {} tokens (prompt + max_tokens)": "context_length_exceeded",
    "lacks capability {}": "unsupported_capability",
    "estimated cost ${:.6f} > max_cost_per_request ${}": "over_max_cost",
    OUTSIDE_SCOPE: "model_not_allowed",
    NOT_ACCEPTED: "not_accepted",
    NOT_ACCEPTED_NO_BAR: "not_accepted",
    BELOW_FLOOR: "below_quality_floor",
}


def no_deployment_error(plan: Plan, what: str = "this request") -> GatewayError:
    """Why no deployment of the plan's model can serve the request: a 400 when every candidate was ruled out
    by the request itself (wrong kind, too long, a missing capability, over the client's cost cap), else a 503
    (circuits open, limits reached: it may pass later or elsewhere)."""
    skipped = plan.ctx.skipped
    reasons = "; ".join(f"{s.deployment}: {s.reason}" for s in skipped[:16]) or "no candidates"
    message = f"no deployment of `{plan.model[:256]}` can serve {what} ({reasons})"
    codes = {_REQUEST_REASONS.get(s.template) for s in skipped}
    if skipped and None not in codes:
        code = codes.pop() if len(codes) == 1 else "no_deployment_fits"
        return GatewayError(400, message, param="model", code=code or "no_deployment_fits")
    return GatewayError(503, message, type="service_unavailable", code="no_deployment_available")
