"""`modelyard plan` prices exactly what `modelyard run` sends: one `step_call` builds both, `route:` included.

Against the in-process gateway over the embedded simulator (the demo config): `premium` routes to
large@anthropic first; a step's `route:` override sends it elsewhere, and the plan must say so too.
"""

from __future__ import annotations

import pytest

from modelyard.schema.constraints import Constraints
from modelyard.workflows import Workflow, WorkflowError
from modelyard.workflows.backend import RouteHints, default_backend_factory
from modelyard.workflows.planner import plan_workflow
from modelyard.workflows.records import RunStatus
from tests.unit.workflows.helpers import workflow

OVERRIDDEN = """
steps:
  default:
    model: premium
    max_tokens: 20
    prompt: "Repeat: as configured"
  pinned:
    model: premium
    max_tokens: 20
    route: {candidates: [large@openai]}
    prompt: "Repeat: pinned"
  by_task:
    model: agent
    task: classification
    max_tokens: 20
    prompt: "Repeat: classified"
"""


async def test_the_plan_estimates_the_deployment_the_run_uses() -> None:
    spec = workflow(OVERRIDDEN)
    async with default_backend_factory(None, None) as backend:  # the embedded simulator + demo config
        plan = plan_workflow(spec, backend)
        result = await Workflow(spec).run({}, backend=backend)
    assert result.status is RunStatus.SUCCEEDED, result.errors
    planned = {row.step: row.deployment for row in plan.rows}
    used = {key: record.deployment for key, record in result.records.items()}
    assert planned == used
    # The override is what moved it: the model's own route is another deployment.
    assert used == {"default": "large@anthropic", "pinned": "large@openai", "by_task": "small@openai"}


def test_route_hints_are_typed_when_the_workflow_loads() -> None:
    step = workflow(
        """
        steps:
          a:
            model: m
            task: coding
            route: {strategy: cost, constraints: {min_quality: 0.8}, candidates: [x, y]}
            prompt: hi
        """
    ).steps["a"]
    assert step.route == RouteHints(
        task="coding", strategy="cost", constraints=Constraints(min_quality=0.8), candidates=("x", "y")
    )


def test_a_misspelt_route_constraint_is_a_load_error_at_its_line() -> None:
    with pytest.raises(WorkflowError) as failed:
        workflow(
            """
            steps:
              a:
                model: m
                route:
                  constraints: {min_qualty: 0.8}
                prompt: hi
            """
        )
    (issue,) = failed.value.issues
    assert issue.line == 7 and issue.step == "a" and "min_qualty" in issue.message
