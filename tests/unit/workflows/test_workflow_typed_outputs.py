"""Typed workflow outputs: declared, validated at their lines, checked at the end of a run, repaired once by
the model step they come from, and failing the run with a message that names the output when still wrong."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.workflows import Workflow, resume_run
from modelyard.workflows.checkpoint import MemoryStore, RunStore, SqliteStore, load_run
from modelyard.workflows.issues import WorkflowError
from modelyard.workflows.records import RunResult, RunStatus
from modelyard.workflows.scripted import ScriptedBackend
from modelyard.workflows.spec import load_workflow
from tests.unit.workflows.helpers import HEADER, workflow

COUNT = "{type: object, required: [n], properties: {n: {type: integer}}}"


def typed(value: str, schema: str = COUNT, step_output: str = "") -> str:
    return (
        "steps:\n"
        f"  pick: {{model: m, prompt: choose{step_output}}}\n"
        "  other: {model: m, prompt: other}\n"
        "outputs:\n"
        "  plain: '{{ other }}'\n"
        f"  count: {{value: '{value}', schema: {schema}}}\n"
    )


async def run(body: str, backend: ScriptedBackend, store: RunStore | None = None) -> RunResult:
    return await Workflow(workflow(body)).run(backend=backend, store=store, run_id="r")


def test_typed_outputs_fill_the_spec_and_plain_ones_stay_templates() -> None:
    spec = workflow(typed("{{ pick }}"))
    assert spec.outputs == {"plain": "{{ other }}", "count": "{{ pick }}"}
    assert spec.output_schemas == {
        "count": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    }


async def test_a_valid_output_is_parsed_from_fenced_json_without_any_repair() -> None:
    backend = ScriptedBackend(answers={"pick": ['```json\n{"n": 3}\n```'], "other": ["free text"]})
    result = await run(typed("{{ pick }}"), backend)
    assert result.status is RunStatus.SUCCEEDED, result.errors
    assert result.outputs == {"plain": "free text", "count": {"n": 3}}
    assert len(backend.calls) == 2


async def test_a_string_schema_takes_a_plain_string() -> None:
    backend = ScriptedBackend(answers={"pick": ["just words"]})
    result = await run(typed("{{ pick }}", schema="{type: string, minLength: 3}"), backend)
    assert result.status is RunStatus.SUCCEEDED and result.outputs["count"] == "just words"


async def test_an_invalid_output_is_repaired_once_by_its_step_and_the_repair_is_paid_once() -> None:
    backend = ScriptedBackend(answers={"pick": ['{"n": "seven"}', '{"n": 7}']})
    store = MemoryStore()
    result = await run(typed("{{ pick }}"), backend, store)
    assert result.status is RunStatus.SUCCEEDED, result.errors
    assert result.outputs["count"] == {"n": 7}
    picks = [c for c in backend.calls if c.metadata["step"] == "pick"]
    assert len(picks) == 2 and picks[1].metadata["repair"] == "output"
    assert picks[1].messages[:-2] == picks[0].messages  # the step's own call, then its answer and the repair
    assert picks[1].messages[-2] == {"role": "assistant", "content": '{"n": "seven"}'}
    assert "workflow output 'count'" in picks[1].messages[-1]["content"] and "at n" in picks[1].messages[-1]["content"]
    assert picks[1].response_format is not None  # the output's schema is asked for
    record = result.records["pick"]
    assert record.repaired and record.attempts == 2 and record.output == '{"n": "seven"}'
    stored = load_run(store, "r")
    assert stored is not None and stored.records["pick"].cost_usd == record.cost_usd
    assert stored.cost_usd == pytest.approx(result.cost_usd) and result.cost_usd == pytest.approx(
        sum(r.cost_usd for r in result.leaves)
    )


async def test_a_field_output_is_repaired_from_the_steps_whole_answer() -> None:
    step_schema = ", output: {schema: {type: object, properties: {n: {}}}}"
    backend = ScriptedBackend(answers={"pick": ['{"n": "seven"}', '{"n": 7}']})
    result = await run(typed("{{ pick.n }}", schema="{type: integer}", step_output=step_schema), backend)
    assert result.status is RunStatus.SUCCEEDED, result.errors
    assert result.outputs["count"] == 7
    assert "the field `n` of your answer" in backend.calls[-1].messages[-1]["content"]


async def test_an_output_still_invalid_after_its_repair_fails_the_run_naming_it() -> None:
    backend = ScriptedBackend(answers={"pick": ['{"n": "seven"}', '{"n": "still seven"}']})
    result = await run(typed("{{ pick }}"), backend)
    assert result.status is RunStatus.FAILED
    assert result.message is not None
    assert result.message.startswith("output 'count' does not match its schema, even after step 'pick' repaired it")
    assert "at n: 'still seven' is not of type 'integer'" in result.message


async def test_an_output_built_from_a_template_is_not_repaired_and_fails() -> None:
    backend = ScriptedBackend(answers={"pick": ["7"], "other": ["x"]})
    result = await run(typed("{{ pick }} and {{ other }}", schema="{type: integer}"), backend)
    assert result.status is RunStatus.FAILED
    assert (
        result.message
        == "output 'count' does not match its schema: the answer is not JSON (Extra data: line 1 column 3 (char 2))"
    )
    assert len(backend.calls) == 2  # no repair call


def test_an_output_schema_that_is_not_json_schema_is_reported_at_its_line() -> None:
    with pytest.raises(WorkflowError) as caught:
        workflow(typed("{{ pick }}", schema="{type: objekt}"))
    (issue,) = caught.value.issues
    assert issue.line == 8 and issue.step is None
    assert "outputs.count.schema is not a valid JSON Schema" in issue.message


def test_an_output_value_template_is_checked_at_its_line() -> None:
    with pytest.raises(WorkflowError) as caught:
        workflow(typed("{{ nowhere }}"))
    (issue,) = caught.value.issues
    assert issue.line == 8 and "unknown name 'nowhere'" in issue.message


def test_an_output_schema_file_is_read_beside_the_workflow(tmp_path: Path) -> None:
    (tmp_path / "count.json").write_text('{"type": "integer"}')
    text = HEADER + textwrap.dedent(typed("{{ pick }}", schema="count.json"))
    (tmp_path / "wf.yaml").write_text(text)
    assert load_workflow(tmp_path / "wf.yaml").output_schemas == {"count": {"type": "integer"}}
    (tmp_path / "wf.yaml").write_text(text.replace("count.json", "missing.json"))
    with pytest.raises(WorkflowError, match=r"wf\.yaml:8: cannot read schema file missing\.json"):
        load_workflow(tmp_path / "wf.yaml")


async def test_a_repair_that_would_pass_the_money_budget_is_not_made() -> None:
    body = (
        "budget: {max_cost_usd: 0.0008}\n"  # room for the step's estimate, not for a repair's on top of it
        "steps:\n  pick: {model: m, prompt: choose}\n"
        f"outputs:\n  count: {{value: '{{{{ pick }}}}', schema: {COUNT}}}\n"
    )
    backend = ScriptedBackend(answers={"pick": ['{"n": "seven"}', '{"n": 7}']})
    result = await run(body, backend)
    assert result.status is RunStatus.FAILED and len(backend.calls) == 1  # the step ran; no repair call
    assert result.message is not None and "its repair failed: stopped before 'pick'" in result.message
    assert "over the $0.0008 budget" in result.message


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_run_that_failed_after_a_repair_is_resumed_with_the_repair_it_paid_for(
    kind: str, tmp_path: Path
) -> None:
    store: RunStore = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "runs.db")
    try:
        failing = ScriptedBackend(
            answers={"pick": ['{"n": "seven"}', '{"n": 7}'], "other": [ProviderError(ErrorKind.BAD_REQUEST, "no")]}
        )
        first = await run(typed("{{ pick }}"), failing, store)
        assert first.status is RunStatus.PARTIAL and first.outputs["count"] == {"n": 7}  # repaired; `other` failed
        await asyncio.sleep(0)  # the loop turn ends: its events are committed
        stored = load_run(store, "r")
        assert stored is not None and stored.records["pick"].output_repairs == {"count": '{"n": 7}'}
        again = ScriptedBackend(answers={"pick": ['{"n": 8}'], "other": ["free text"]})
        second = await resume_run("r", backend=again, store=store)
        assert second.status is RunStatus.SUCCEEDED, second.errors
        assert [c.metadata["step"] for c in again.calls] == ["other"]  # no second repair of `pick`
        assert second.outputs == {"plain": "free text", "count": {"n": 7}}  # the value that was paid for
        assert second.cost_usd == pytest.approx(first.cost_usd + second.records["other"].cost_usd)
    finally:
        store.close()


async def test_a_repair_still_invalid_is_reused_on_resume_and_fails_the_same_way() -> None:
    store = MemoryStore()
    first = await run(typed("{{ pick }}"), ScriptedBackend(answers={"pick": ['{"n": "a"}', '{"n": "b"}']}), store)
    assert first.status is RunStatus.FAILED
    again = ScriptedBackend(answers={"pick": ['{"n": 9}']})
    second = await resume_run("r", backend=again, store=store)
    assert again.calls == [] and second.status is RunStatus.FAILED
    assert second.message == first.message and "'b' is not of type 'integer'" in (second.message or "")
