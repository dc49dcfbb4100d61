"""The row runner: one row is one workflow run, checkpointed per step into the batch store, resumable."""

from __future__ import annotations

import textwrap
from typing import cast

import pytest

from modelyard.batch.model import RowResult, RowTask
from modelyard.batch.runner import RowRunner
from modelyard.batch.store import BatchStore
from modelyard.workflows.api import Workflow
from modelyard.workflows.engine import EngineOptions
from modelyard.workflows.records import StepRecord
from modelyard.workflows.scripted import ScriptedBackend

TWO_STEPS = """
schema: modelyard.workflow/v1
name: triage
inputs: {ticket: string, lang: {type: string, default: en}}
steps:
  classify: {model: fast, prompt: "Classify {{ inputs.ticket }}"}
  reply: {model: smart, needs: [classify], prompt: "Reply in {{ inputs.lang }} to {{ classify }}"}
outputs: {label: "{{ classify }}", reply: "{{ reply }}"}
"""


class RecordingStore:
    """The two BatchStore calls a runner makes (save_row, save_step), recorded; first write wins."""

    def __init__(self) -> None:
        self.rows: dict[int, RowResult] = {}
        self.saved_steps: list[tuple[int, StepRecord]] = []

    def save_row(self, batch_id: str, result: RowResult) -> bool:
        if result.row in self.rows:
            return False
        self.rows[result.row] = result
        return True

    def save_step(self, batch_id: str, row: int, record: StepRecord) -> None:
        self.saved_steps.append((row, record))


def runner(backend: ScriptedBackend, store: RecordingStore, text: str = TWO_STEPS) -> RowRunner:
    workflow = Workflow.from_string(textwrap.dedent(text), "triage.yaml")
    options = EngineOptions(backoff_s=0.001, backoff_max_s=0.01)
    return RowRunner(workflow, backend, cast(BatchStore, store), "b-1", options=options)


async def test_a_row_runs_the_workflow_and_is_saved_with_its_per_step_sums() -> None:
    backend, store = ScriptedBackend(answers={"classify": ["billing"], "reply": ["Dear customer"]}), RecordingStore()
    result = await runner(backend, store).run(RowTask(7, {"ticket": "I was charged twice"}))
    assert result.status == "succeeded" and result.row == 7
    assert result.outputs == {"label": "billing", "reply": "Dear customer"}
    assert store.rows[7] is result
    assert result.calls == 2 and result.reused == 0
    assert set(result.steps) == {"classify", "reply"}
    assert result.steps["classify"].calls == 1 and result.steps["classify"].prompt_tokens > 0
    paid = sum(t.cost_usd for t in result.steps.values())
    assert result.cost_usd == pytest.approx(paid) and result.session_cost_usd == pytest.approx(paid) and paid > 0
    assert [(row, r.key) for row, r in store.saved_steps] == [(7, "classify"), (7, "reply")]
    assert "I was charged twice" in backend.calls[0].messages[-1]["content"]


async def test_every_model_call_of_a_row_asks_for_the_batch_class() -> None:
    backend = ScriptedBackend()
    await runner(backend, RecordingStore()).run(RowTask(0, {"ticket": "x"}))
    assert [c.priority for c in backend.calls] == ["batch", "batch"]


async def test_a_resumed_row_reuses_its_finished_steps_and_pays_only_the_rest() -> None:
    first_store = RecordingStore()
    failing = ScriptedBackend(answers={"classify": ["billing"], "reply": [RuntimeError("upstream died")]})
    first = await runner(failing, first_store).run(RowTask(3, {"ticket": "refund please"}))
    assert first.status == "partial" and "upstream died" in (first.error or "")
    prior = {r.key: r.to_dict() for _, r in first_store.saved_steps}
    assert list(prior) == ["classify"]  # the failed step is not a checkpoint

    backend, store = ScriptedBackend(answers={"reply": ["Refunded"]}), RecordingStore()
    resumed = await runner(backend, store).run(RowTask(3, {"ticket": "refund please"}, prior=prior))
    assert [c.metadata["step"] for c in backend.calls] == ["reply"]  # classify was not called again
    assert resumed.status == "succeeded" and resumed.outputs == {"label": "billing", "reply": "Refunded"}
    assert resumed.reused == 1 and resumed.calls == 1 and set(resumed.steps) == {"reply"}
    classify_cost = prior["classify"]["cost_usd"]
    assert classify_cost > 0
    assert resumed.cost_usd == pytest.approx(classify_cost + resumed.session_cost_usd)
    assert resumed.session_cost_usd == pytest.approx(resumed.steps["reply"].cost_usd)
    assert store.saved_steps and all(r.key == "reply" for _, r in store.saved_steps)


async def test_a_prior_step_with_other_inputs_is_not_reused() -> None:
    store = RecordingStore()
    await runner(ScriptedBackend(answers={"classify": ["billing"]}), store).run(RowTask(1, {"ticket": "old text"}))
    prior = {r.key: r.to_dict() for _, r in store.saved_steps}
    backend = ScriptedBackend()
    await runner(backend, RecordingStore()).run(RowTask(1, {"ticket": "new text"}, prior=prior))
    assert [c.metadata["step"] for c in backend.calls] == ["classify", "reply"]


async def test_a_row_whose_inputs_do_not_fit_is_invalid_and_calls_nothing() -> None:
    backend, store = ScriptedBackend(), RecordingStore()
    result = await runner(backend, store).run(RowTask(5, {"ticket": 42, "colour": "red"}))
    assert result.status == "invalid" and backend.calls == []
    assert result.error is not None and "unknown input 'colour'" in result.error and "\n" not in result.error
    assert store.rows[5].status == "invalid" and result.cost_usd == 0


async def test_a_failed_first_step_fails_the_row_with_its_error_and_counts_the_failed_call() -> None:
    backend = ScriptedBackend(answers={"classify": [RuntimeError("model exploded " + "x" * 900)]})
    result = await runner(backend, RecordingStore()).run(RowTask(0, {"ticket": "x"}))
    assert result.status == "failed" and result.error is not None and "model exploded" in result.error
    assert len(result.error) <= 500
    assert result.steps["classify"].failed == 1 and "reply" not in result.steps
