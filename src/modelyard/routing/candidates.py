"""Candidate filters: which deployments may serve this request at all.

Applied before any strategy ranks: kind, context window, capabilities, circuit breaker, concurrency cap
and RPM/TPM headroom. Each exclusion is recorded with its reason so a decision can explain itself and a
"no deployment available" error can say why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelyard.config.model import Deployment
from modelyard.routing.context import DecisionContext
from modelyard.routing.health import BreakerState, HealthTracker
from modelyard.routing.limits import DeploymentLimits

CLOSED = BreakerState.CLOSED


@dataclass(frozen=True, slots=True)
class GroupProfile:
    """Static facts about a model's candidates, computed once, that let most requests skip the loop."""

    kind: str | None
    min_window: float
    any_limits: bool

    @classmethod
    def of(cls, deployments: tuple[Deployment, ...] | list[Deployment]) -> GroupProfile:
        kinds = {dep.kind for dep in deployments}
        windows = [dep.context_window for dep in deployments if dep.context_window is not None]
        return cls(
            kind=kinds.pop() if len(kinds) == 1 else None,
            min_window=float(min(windows)) if windows else math.inf,
            any_limits=any(dep.limits.configured for dep in deployments),
        )


def filter_candidates(
    deployments: list[Deployment],
    ctx: DecisionContext,
    *,
    profile: GroupProfile | None = None,
    check_limits: bool | None = None,
) -> list[Deployment]:
    """The deployments that may serve this request; each exclusion is recorded with its reason.

    This runs for every request, so the common case is O(1): when the group's static profile shows that
    every candidate has the right kind and a large enough window, no capability is needed and no circuit
    is open, the candidates pass as they are. RPM/TPM/concurrency headroom is checked by the executor as
    it reaches each deployment (`limit_reason`), which gives the same outcome as filtering first (no
    strategy ranks by headroom) for one check instead of one per candidate; `check_limits=True` (explain
    mode) checks them all up front so the explanation is complete.
    """
    features = ctx.features
    check_limits = ctx.explain if check_limits is None else check_limits
    needed = features.prompt_tokens + (features.max_output_tokens or 0)
    check_capabilities = (
        features.needs_tools or features.needs_vision or features.needs_audio or features.needs_json_schema
    )
    health = ctx.health
    if (
        profile is not None
        and profile.kind == features.kind
        and needed <= profile.min_window
        and not check_capabilities
        and not health.unhealthy
        and not (check_limits and profile.any_limits)
    ):
        return list(deployments)
    healths = health.all()
    now = ctx.now
    kind = features.kind
    kept: list[Deployment] = []
    for dep in deployments:
        if dep.kind != kind:
            ctx.skip(dep, "serves {}, request is {}", dep.kind, kind)
            continue
        window = dep.context_window
        if window is not None and needed > window:
            ctx.skip(dep, "context window {} < {} tokens (prompt + max_tokens)", window, needed)
            continue
        if check_capabilities:
            missing = _missing_capability(dep, ctx)
            if missing:
                ctx.skip(dep, "lacks capability {}", missing)
                continue
        state = healths.get(dep.name)
        if state is not None and state.state is not CLOSED and not health.available(dep.name, now):
            ctx.skip(dep, "circuit {}", state.state.value)
            continue
        if check_limits and dep.limits.configured:
            reason = limit_reason(dep, health, ctx.limits, now, features.prompt_tokens + features.output_estimate())
            if reason:
                ctx.skip(dep, "{}", reason)
                continue
        kept.append(dep)
    return kept


def limit_reason(
    dep: Deployment, health: HealthTracker, limits: DeploymentLimits, now: float, tokens: int
) -> str | None:
    """Why `dep` has no headroom for one more request of `tokens` now (None when it has)."""
    dep_limits = dep.limits
    cap = dep_limits.max_concurrency
    if cap is not None and health.get(dep.name).in_flight >= cap:
        return f"max_concurrency {cap} reached"
    if dep_limits.rate_limited:
        return limits.headroom(dep.name, dep_limits, now, tokens)
    return None


def _missing_capability(dep: Deployment, ctx: DecisionContext) -> str | None:
    features = ctx.features
    if features.needs_tools and not dep.has("tools"):
        return "tools"
    if features.needs_vision and not dep.has("vision"):
        return "vision"
    if features.needs_audio and not dep.has("audio"):
        return "audio"
    if features.needs_json_schema and not dep.has("json_schema"):
        return "json_schema"
    return None


#: Skip reasons of the acceptance filters (plan.py maps them to a 400: no retry would change them).
NOT_ACCEPTED = "not accepted for {} (pass rate {:.2f} < {:.2f})"
NOT_ACCEPTED_NO_BAR = "not accepted for {} (pass rate {:.2f})"
BELOW_FLOOR = "acceptance pass rate {:.2f} for {} < min_quality {}"


def filter_acceptance(
    deployments: list[Deployment], ctx: DecisionContext, *, require: bool, floor: float | None
) -> tuple[list[Deployment], dict[str, str]]:
    """The deployments an acceptance suite allows for the request's task, and explain notes (explain mode only).

    `require` (`accepted: true`): a deployment whose results say `accepted: false` for the task is skipped;
    `floor` (a `learned` route's `min_quality`): one whose suite pass rate for the task is below it is skipped.
    Untested deployments, and every deployment when the request has no task, are kept: a suite can only
    speak for what it tested, and explain says so.
    """
    task = ctx.features.task
    explain = ctx.explain
    notes: dict[str, str] = {}
    if task is None:
        if explain and require:
            for dep in deployments:
                notes[dep.name] = "no task: acceptance not checked"
        return deployments, notes
    kept: list[Deployment] = []
    for dep in deployments:
        result = dep.acceptance.get(task) if dep.acceptance else None
        if result is None:
            if explain:
                notes[dep.name] = f"untested for {task}: kept"
        elif require and not result.accepted:
            if result.min_pass_rate is not None:
                ctx.skip(dep, NOT_ACCEPTED, task, result.pass_rate, result.min_pass_rate)
            else:
                ctx.skip(dep, NOT_ACCEPTED_NO_BAR, task, result.pass_rate)
            continue
        elif floor is not None and result.pass_rate < floor:
            ctx.skip(dep, BELOW_FLOOR, result.pass_rate, task, floor)
            continue
        elif explain:
            verdict = "accepted" if result.accepted else "not accepted"
            notes[dep.name] = f"{verdict} for {task} (pass rate {result.pass_rate:.2f}, {result.cases} cases)"
        kept.append(dep)
    return kept, notes
