"""Approval steps: validation, waiting, deciding (once), resuming without paying twice, loops, timeouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.workflows import Workflow
from modelyard.workflows.api import resume_run
from modelyard.workflows.approval import DecisionError, decide
from modelyard.workflows.checkpoint import MemoryStore, SqliteStore, list_runs, load_run
from modelyard.workflows.issues import WorkflowError
from modelyard.workflows.planner import plan_workflow
from modelyard.workflows.records import RunStatus, StepState
from modelyard.workflows.scripted import ScriptedBackend
from tests.unit.workflows.helpers import workflow

GATED = """
steps:
  draft: {model: m, prompt: "Write a draft."}
  side: {model: m, prompt: "Independent work."}
  gate:
    needs: [draft]
    approve: {prompt: "Publish it?", show: "Draft: {{ draft }}", timeout: 3600}
  publish: {model: m, needs: [gate, draft], prompt: "Publish ({{ gate.approved }}, {{ gate.comment }}): {{ draft }}"}
"""

LOOPED = """
steps:
  build:
    loop:
      max_iterations: 3
      until: "{{ gate.approved }}"
      steps:
        code:
          model: m
          prompt: "Write code.{% if iteration.previous %} Fix: {{ iteration.previous.gate.comment }}{% endif %}"
        gate: {needs: [code], approve: {prompt: "Merge?", show: "{{ code }}"}}
"""


def problems(body: str) -> list[str]:
    with pytest.raises(WorkflowError) as caught:
        workflow(body)
    return [f"{i.line}: {i.step}: {i.message}" for i in caught.value.issues]


def test_the_builder_fills_the_approval_spec() -> None:
    spec = workflow(GATED)
    gate = spec.steps["gate"]
    assert gate.kind == "approval" and gate.approve is not None
    assert gate.approve.prompt == "Publish it?" and gate.approve.timeout == 3600
    assert gate.approve.on_timeout == "reject" and gate.approve.show == "Draft: {{ draft }}"


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ('{needs: [draft], approve: {prompt: ok, show: "{{ side }}"}}', "does not list it in `needs`"),
        ("{needs: [draft], approve: {prompt: ok, timeout: .inf}}", "finite number of seconds"),
        ("{needs: [draft], approve: {prompt: ok, timeout: 0}}", "approve.timeout"),
        ("{needs: [draft], approve: {prompt: ok, on_timeout: maybe}}", "on_timeout"),
        ("{needs: [draft], approve: {show: x}}", "'prompt' is a required property"),
        ("{needs: [draft], retries: 2, approve: {prompt: ok}}", "`retries` applies to model steps and tool steps"),
        ("{model: m, prompt: hi, approve: {prompt: ok}}", "exactly one of"),
    ],
)
def test_invalid_approval_steps_are_reported_at_their_line(gate: str, message: str) -> None:
    found = problems(f"steps:\n  draft: {{model: m, prompt: d}}\n  side: {{model: m, prompt: s}}\n  gate: {gate}\n")
    assert any(message in p and p.startswith("6: gate") for p in found), found


async def test_the_run_waits_after_independent_branches_finish_and_a_decision_resumes_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "runs.db")
    backend = ScriptedBackend()
    result = await Workflow(workflow(GATED)).run(backend=backend, store=store, run_id="r1")
    assert result.status is RunStatus.WAITING
    assert result.records["side"].state is StepState.SUCCEEDED  # the independent branch ran to completion
    gate = result.records["gate"]
    assert gate.state is StepState.WAITING and gate.output["prompt"] == "Publish it?"
    assert gate.output["show"].startswith("Draft: [m] Write a draft.")
    assert result.records["publish"].state is StepState.STOPPED
    assert [r.run_id for r in list_runs(store) if r.status is RunStatus.WAITING] == ["r1"]
    assert len(backend.calls) == 2

    key, made = decide(store, "r1", "gate", approved=False, comment="Too long", decided_by="tester")
    assert key == "gate" and made["approved"] is False and made["decided_by"] == "tester"
    resumed = await resume_run("r1", backend=backend, store=store)
    assert resumed.status is RunStatus.SUCCEEDED
    assert resumed.records["gate"].output == made
    assert len(backend.calls) == 3  # only `publish` was called: draft and side were reused, not paid again
    assert "Publish (False, Too long)" in str(backend.calls[-1].messages)
    stored = load_run(store, "r1")
    assert stored is not None and stored.cost_usd == pytest.approx(resumed.cost_usd)
    store.close()


async def test_a_decision_is_refused_twice_and_for_unknown_or_not_waiting_steps() -> None:
    store = MemoryStore()
    await Workflow(workflow(GATED)).run(backend=ScriptedBackend(), store=store, run_id="r2")
    with pytest.raises(DecisionError) as unknown_run:
        decide(store, "nope", "gate", approved=True, comment=None, decided_by="t")
    assert unknown_run.value.status == 404
    with pytest.raises(DecisionError) as unknown_step:
        decide(store, "r2", "gatee", approved=True, comment=None, decided_by="t")
    assert unknown_step.value.status == 404 and unknown_step.value.code == "step_not_found"
    with pytest.raises(DecisionError) as not_waiting:
        decide(store, "r2", "draft", approved=True, comment=None, decided_by="t")
    assert not_waiting.value.status == 409 and "not waiting" in not_waiting.value.message
    with pytest.raises(DecisionError) as too_long:
        decide(store, "r2", "gate", approved=True, comment="x" * 5000, decided_by="t")
    assert too_long.value.status == 400
    decide(store, "r2", "gate", approved=True, comment=None, decided_by="first")
    with pytest.raises(DecisionError) as twice:
        decide(store, "r2", "gate", approved=False, comment="late", decided_by="second")
    assert twice.value.status == 409 and "already decided" in twice.value.message
    assert store.decisions("r2")["gate"]["decided_by"] == "first"  # the first decision stands


async def test_each_loop_round_has_its_own_decision_and_reads_the_last_comment() -> None:
    store = MemoryStore()
    backend = ScriptedBackend()
    first = await Workflow(workflow(LOOPED)).run(backend=backend, store=store, run_id="loop")
    assert first.status is RunStatus.WAITING and first.records["build"].state is StepState.WAITING
    assert first.records["build#1.gate"].state is StepState.WAITING
    decide(store, "loop", "build.gate", approved=False, comment="Handle empty lists", decided_by="t")
    second = await resume_run("loop", backend=backend, store=store)
    assert second.status is RunStatus.WAITING and second.records["build#2.gate"].state is StepState.WAITING
    assert "Fix: Handle empty lists" in str(backend.calls[-1].messages)
    decide(store, "loop", "build#2.gate", approved=True, comment=None, decided_by="t")
    done = await resume_run("loop", backend=backend, store=store)
    assert done.status is RunStatus.SUCCEEDED and done.records["build"].iterations == 2
    assert [c.metadata["step"] for c in backend.calls] == ["build#1.code", "build#2.code"]  # each round paid once


async def test_a_timeout_passed_when_the_run_is_resumed_applies_on_timeout(tmp_path: Path) -> None:
    body = GATED.replace("timeout: 3600", "timeout: 0.2, on_timeout: approve")
    store = SqliteStore(tmp_path / "runs.db")
    backend = ScriptedBackend()
    spec = workflow(body)
    first = await Workflow(spec).run(backend=backend, store=store, run_id="t1")
    assert first.status is RunStatus.WAITING
    await asyncio.sleep(0.3)
    with pytest.raises(DecisionError) as late:
        decide(store, "t1", "gate", approved=False, comment="too late", decided_by="t")
    assert late.value.code == "approval_timed_out"
    resumed = await resume_run("t1", backend=backend, store=store)
    assert resumed.status is RunStatus.SUCCEEDED
    gate = resumed.records["gate"].output
    assert gate["approved"] is True and gate["decided_by"] == "timeout"
    store.close()


async def test_resuming_without_a_decision_keeps_waiting_from_the_first_wait() -> None:
    store = MemoryStore()
    backend = ScriptedBackend()
    await Workflow(workflow(GATED)).run(backend=backend, store=store, run_id="w")
    again = await resume_run("w", backend=backend, store=store)
    assert again.status is RunStatus.WAITING and len(backend.calls) == 2  # nothing paid twice
    first_wait = next(e for e in store.events("w") if e.kind == "step_waiting" and e.key == "gate")
    assert again.records["gate"].output["waiting_since"] == first_wait.data["record"]["output"]["waiting_since"]


def test_the_plan_counts_no_call_and_no_money_for_an_approval_step() -> None:
    plan = plan_workflow(workflow(GATED), ScriptedBackend(delay_s=1.0))
    rows = {row.step: row for row in plan.rows}
    assert rows["gate"].kind == "approval" and rows["gate"].calls == 0 and rows["gate"].cost_usd == 0
    assert "waits for a person" in rows["gate"].note
    assert plan.cost_usd == pytest.approx(sum(rows[s].cost_usd for s in ("draft", "side", "publish")))
