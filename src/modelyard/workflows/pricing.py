"""The report's counterfactual: what the run's own token counts would have cost on a premium model.

"Smart routing" is what the run paid. "All-premium" prices every model call's real prompt and completion
tokens at `report.premium_model`: with the backend's `price(model, usage)` when it has one (the price table
of the deployment that name routes to first), else with an `estimate` of a call of the same size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelyard.accounting.tokens import count_message_dicts, filler
from modelyard.schema.chat import Usage
from modelyard.workflows.backend import ModelBackend, ModelCall, PricingBackend

if TYPE_CHECKING:
    from modelyard.workflows.records import RunResult
    from modelyard.workflows.spec import WorkflowSpec


def price_usage(backend: ModelBackend, model: str, usage: Usage) -> float | None:
    """What `usage` costs at `model`, or None when the backend can neither price nor estimate."""
    if isinstance(backend, PricingBackend):
        try:
            return backend.price(model, usage)
        except Exception:
            return None
    overhead = count_message_dicts([{"role": "user", "content": ""}])  # framing, role and reply priming
    call = ModelCall(
        model=model,
        messages=[{"role": "user", "content": filler(usage.prompt - overhead)}],
        max_tokens=max(1, usage.completion),
        estimate_output_tokens=usage.completion,
    )
    try:
        return backend.estimate(call).cost_usd
    except Exception:
        return None


def premium_comparison(spec: WorkflowSpec, result: RunResult, backend: ModelBackend) -> dict[str, Any] | None:
    """Cost per `per_tasks` tasks, as run and all-premium; None when the workflow asks for no comparison."""
    premium = spec.report.premium_model
    if not premium:
        return None
    records = result.records.values()
    calls = [r for r in records if r.kind == "model" and (r.prompt_tokens or r.completion_tokens)]
    if not calls:
        return None
    routed = sum(r.cost_usd for r in calls)
    premium_cost = 0.0
    for record in calls:
        usage = Usage(prompt=record.prompt_tokens, completion=record.completion_tokens)
        price = price_usage(backend, premium, usage)
        if price is None:
            return {"premium_model": premium, "error": f"the backend cannot price '{premium}'"}
        premium_cost += price
    tasks_record = result.records.get(spec.report.tasks_step or "")
    tasks = tasks_record.items if tasks_record is not None and tasks_record.items else len(calls)
    per = spec.report.per_tasks
    scale = per / tasks if tasks else 0.0
    return {
        "premium_model": premium,
        "tasks": tasks,
        "per_tasks": per,
        "routed_cost_usd": routed,
        "premium_cost_usd": premium_cost,
        "routed_per_tasks_usd": routed * scale,
        "premium_per_tasks_usd": premium_cost * scale,
        "saving_pct": (1 - routed / premium_cost) * 100 if premium_cost > 0 else None,
    }
