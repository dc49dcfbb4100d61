"""`next:` — a step choosing which of its successors run: validation, the chosen branch, the others skipped."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.workflows import Workflow
from modelyard.workflows.checkpoint import MemoryStore, load_run
from modelyard.workflows.issues import WorkflowError
from modelyard.workflows.records import RunResult, RunStatus, StepState
from modelyard.workflows.scripted import ScriptedBackend
from tests.unit.workflows.helpers import workflow

TRIAGE = """
steps:
  triage:
    model: m
    prompt: classify
    output: {schema: {type: object, required: [route], properties: {route: {type: string}}}}
    next: "{{ triage.route }}"
  fix:
    model: m
    needs: [triage]
    prompt: fix it
  log:
    model: m
    needs: [triage]
    prompt: log it
  after:
    model: m
    needs: [log]
    prompt: "after {{ log }}"
outputs:
  fixed: "{{ fix }}"
"""


async def run_triage(answer: str, **kw: Any) -> tuple[RunResult, ScriptedBackend]:
    backend = ScriptedBackend(answers={"triage": [answer]})
    result = await Workflow(workflow(TRIAGE)).run({}, backend=backend, **kw)
    return result, backend


def called(backend: ScriptedBackend) -> list[str]:
    return [call.metadata["step"] for call in backend.calls]


def test_builder_fills_next_and_successors() -> None:
    spec = workflow(TRIAGE)
    assert spec.steps["triage"].next == "{{ triage.route }}"
    assert spec.steps["triage"].successors == ("fix", "log")
    assert spec.steps["fix"].successors == ()


def test_next_without_successors_is_an_error_at_its_line() -> None:
    body = "steps:\n  a: {model: m, prompt: hi}\n  b:\n    model: m\n    prompt: hi\n    next: a\n"
    with pytest.raises(WorkflowError) as caught:
        workflow(body)
    (issue,) = caught.value.issues
    assert issue.line == 8 and issue.step == "b"
    assert "`next`" in issue.message and "no step needs it" in issue.message


def test_next_template_may_read_only_its_scope() -> None:
    body = TRIAGE.replace("{{ triage.route }}", "{{ fix }}")
    with pytest.raises(WorkflowError, match="does not list it in `needs`"):
        workflow(body)


async def test_chosen_branch_runs_and_the_other_is_skipped() -> None:
    result, backend = await run_triage('{"route": "fix"}')
    assert result.status is RunStatus.SUCCEEDED
    assert sorted(called(backend)) == ["after", "fix", "triage"]
    assert result.records["fix"].state is StepState.SUCCEEDED
    log = result.records["log"]
    assert log.state is StepState.SKIPPED and log.output is None
    assert log.note == "skipped: 'triage' chose next: fix"
    assert result.records["triage"].note == "next: fix"
    # A step needing only the skipped branch follows the `when: false` rule: it runs, reading null.
    assert result.records["after"].state is StepState.SUCCEEDED


async def test_the_other_branch_and_a_list_of_both() -> None:
    result, backend = await run_triage('{"route": "log"}')
    assert result.records["fix"].state is StepState.SKIPPED
    assert result.outputs["fixed"] is None
    assert "log" in called(backend) and "fix" not in called(backend)
    spec = workflow(TRIAGE.replace("{{ triage.route }}", "{{ ['fix', 'log'] }}"))
    backend = ScriptedBackend(answers={"triage": ['{"route": "x"}']})
    both = await Workflow(spec).run({}, backend=backend)
    assert both.records["fix"].state is StepState.SUCCEEDED
    assert both.records["log"].state is StepState.SUCCEEDED


async def test_a_choice_that_is_not_a_successor_fails_the_step_clearly_and_is_paid_once() -> None:
    store = MemoryStore()
    result, backend = await run_triage('{"route": "after"}', store=store)
    triage = result.records["triage"]
    assert triage.state is StepState.FAILED
    assert triage.error == "next: chose 'after', which is not a successor of 'triage' (its successors: fix, log)"
    assert result.records["fix"].state is StepState.BLOCKED
    assert result.status is RunStatus.FAILED
    assert called(backend) == ["triage"]
    stored = load_run(store, result.run_id)
    assert stored is not None
    assert stored.records["triage"].state is StepState.FAILED
    assert stored.cost_usd == pytest.approx(triage.cost_usd) and triage.cost_usd > 0


async def test_a_choice_of_the_wrong_type_fails_the_step() -> None:
    spec = workflow(TRIAGE.replace("{{ triage.route }}", "{{ 3 }}"))
    result = await Workflow(spec).run({}, backend=ScriptedBackend(answers={"triage": ['{"route": "fix"}']}))
    error = result.records["triage"].error or ""
    assert error.startswith("next: must give a step id or a list of step ids, got 3")


async def test_next_inside_a_loop_chooses_per_round() -> None:
    body = """
    steps:
      rounds:
        loop:
          max_iterations: 2
          steps:
            pick:
              model: m
              prompt: "round {{ iteration.index }}"
              next: "{{ 'odd' if iteration.index == 1 else 'even' }}"
            odd: {model: m, needs: [pick], prompt: odd}
            even: {model: m, needs: [pick], prompt: even}
    """
    result = await Workflow(workflow(body)).run({}, backend=ScriptedBackend())
    states = {key: r.state for key, r in result.records.items()}
    assert states["rounds#1.odd"] is StepState.SUCCEEDED and states["rounds#1.even"] is StepState.SKIPPED
    assert states["rounds#2.odd"] is StepState.SKIPPED and states["rounds#2.even"] is StepState.SUCCEEDED
