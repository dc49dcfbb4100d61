"""Sub-workflows (`workflow: path.yaml`): validation with file:line, cycles, the nested run, budget, resume,
plan rows and report nesting."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.server.admin_runs import display_order, parent_key, run_detail
from modelyard.workflows import SqliteStore, Workflow, resume_run
from modelyard.workflows.checkpoint import load_run
from modelyard.workflows.include import MAX_DEPTH
from modelyard.workflows.issues import WorkflowError
from modelyard.workflows.keys import depth, top_key
from modelyard.workflows.planner import plan_workflow
from modelyard.workflows.progress import LiveProgress
from modelyard.workflows.records import RunStatus, StepState
from modelyard.workflows.report import print_run, result_from_stored, timeline
from modelyard.workflows.scripted import ScriptedBackend
from modelyard.workflows.spec import load_workflow

HEADER = "schema: modelyard.workflow/v1\n"

CHILD = """
name: child
inputs:
  draft: string
  focus: {type: string, default: clarity}
steps:
  critique: {model: fast, prompt: "Critique for {{ inputs.focus }}: {{ inputs.draft }}"}
  verdict: {model: smart, needs: [critique], prompt: "Verdict on {{ critique }}"}
outputs:
  critique: "{{ critique }}"
  verdict: "{{ verdict }}"
  focus: "{{ inputs.focus }}"
"""

PARENT = """
name: parent
inputs: {topic: string}
steps:
  draft: {model: fast, prompt: "Write on {{ inputs.topic }}"}
  review:
    workflow: child.yaml
    needs: [draft]
    inputs: {draft: "{{ draft }}"}
  revise: {model: smart, needs: [draft, review], prompt: "Revise {{ draft }} with {{ review.critique }}"}
outputs: {text: "{{ revise }}", focus: "{{ review.focus }}"}
"""


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)
    return [str(issue) for issue in caught.value.issues]


def line_of(path: Path, needle: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


# --------------------------------------------------------------------------- validation


def test_the_included_file_is_loaded_relative_to_the_including_one(tmp_path: Path) -> None:
    write(tmp_path / "lib", "child.yaml", CHILD)
    parent = write(tmp_path, "parent.yaml", PARENT.replace("child.yaml", "lib/child.yaml"))
    spec = load_workflow(parent)
    review = spec.steps["review"]
    assert review.kind == "workflow" and review.workflow is not None
    assert review.workflow.path == "lib/child.yaml" and review.workflow.inputs == {"draft": "{{ draft }}"}
    assert review.workflow.spec.name == "child" and list(review.workflow.spec.steps) == ["critique", "verdict"]
    child = tmp_path / "lib" / "child.yaml"
    assert review.workflow.spec.steps["verdict"].line == line_of(child, "verdict:")  # the child's own lines


def test_a_workflow_that_includes_itself_is_refused_at_the_including_step(tmp_path: Path) -> None:
    path = write(
        tmp_path, "self.yaml", "name: self\nsteps:\n  a: {model: m, prompt: hi}\n  again: {workflow: self.yaml}\n"
    )
    assert problems(path) == [
        f"{path}:5: step 'again': sub-workflow cycle: self.yaml -> self.yaml (a workflow cannot include itself)"
    ]


def test_a_cycle_through_another_file_names_the_chain(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "name: a\nsteps:\n  to_b: {workflow: sub/b.yaml}\n")
    b = write(tmp_path / "sub", "b.yaml", "name: b\nsteps:\n  back: {workflow: ../a.yaml}\n")
    found = problems(a)
    assert (
        f"{b}:4: step 'back': sub-workflow cycle: a.yaml -> b.yaml -> a.yaml (a workflow cannot include itself)"
        in found
    )
    assert f"{a}:4: step 'to_b': sub-workflow {b} is invalid (1 problem)" in found


def test_nesting_is_bounded(tmp_path: Path) -> None:
    for level in range(MAX_DEPTH + 2):
        write(tmp_path, f"w{level}.yaml", f"name: w{level}\nsteps:\n  down: {{workflow: w{level + 1}.yaml}}\n")
    write(tmp_path, f"w{MAX_DEPTH + 2}.yaml", "name: leaf\nsteps:\n  a: {model: m, prompt: hi}\n")
    assert any(f"nested deeper than {MAX_DEPTH} levels" in p for p in problems(tmp_path / "w0.yaml"))


def test_an_unreadable_file_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nsteps:\n  a: {model: m, prompt: hi}\n  b:\n    workflow: gone.yaml\n")
    assert problems(path) == [
        f"{path}:6: step 'b': cannot read the sub-workflow {tmp_path / 'gone.yaml'}: No such file or directory"
    ]


def test_the_included_files_own_problems_keep_its_file_and_line(tmp_path: Path) -> None:
    child = write(tmp_path, "child.yaml", "name: c\nsteps:\n  x: {model: m, prompt: hi, needs: [nope]}\n")
    parent = write(tmp_path, "p.yaml", "name: p\nsteps:\n  b: {workflow: child.yaml}\n")
    found = problems(parent)
    assert f"{child}:4: step 'x': needs unknown step 'nope'" in found


def test_inputs_must_match_the_included_declaration(tmp_path: Path) -> None:
    write(tmp_path, "child.yaml", CHILD)
    path = write(
        tmp_path,
        "p.yaml",
        """
        name: p
        steps:
          a: {model: m, prompt: hi}
          b:
            workflow: child.yaml
            inputs:
              focus: "{{ a }}"
              colour: red
        """,
    )
    found = problems(path)
    declared = "declared: draft, focus"
    colour, include = line_of(path, "colour:"), line_of(path, "workflow:")
    assert f"{path}:{colour}: step 'b': sub-workflow child.yaml has no input 'colour' ({declared})" in found
    assert f"{path}:{include}: step 'b': sub-workflow child.yaml needs input 'draft'" in found
    reads = line_of(path, "focus:")
    assert f"{path}:{reads}: step 'b': the template reads step 'a' but the step does not list it in `needs`" in found


def test_reading_an_output_the_sub_workflow_does_not_declare_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "child.yaml", CHILD)
    path = write(tmp_path, "p.yaml", PARENT.replace("review.critique", "review.critic"))
    found = problems(path)
    assert any(
        "sub-workflow 'review' has no output 'critic' (its outputs: critique, verdict, focus)" in p for p in found
    )


def test_inputs_belong_to_workflow_steps_only(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nsteps:\n  a: {model: m, prompt: hi, inputs: {x: y}}\n")
    assert problems(path) == [f"{path}:4: step 'a': `inputs` applies to workflow steps, not to a model step"]


# --------------------------------------------------------------------------- running


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    write(tmp_path, "child.yaml", CHILD)
    return write(tmp_path, "parent.yaml", PARENT)


async def test_the_child_runs_nested_and_its_outputs_are_the_steps_output(parent: Path) -> None:
    backend = ScriptedBackend()
    result = await Workflow.from_yaml(parent).run({"topic": "gateways"}, backend=backend)
    assert result.status is RunStatus.SUCCEEDED
    keys = [c.metadata["step"] for c in backend.calls]
    assert keys == ["draft", "review/critique", "review/verdict", "revise"]
    review = result.records["review"]
    assert review.kind == "workflow" and review.state is StepState.SUCCEEDED
    assert set(review.output) == {"critique", "verdict", "focus"}
    assert review.output["critique"] == result.records["review/critique"].output
    assert review.output["focus"] == "clarity"  # the child's default
    critique_prompt = str(backend.calls[1].messages[-1]["content"])
    assert result.records["draft"].output in critique_prompt  # the child saw its input, rendered
    children = [result.records[k] for k in ("review/critique", "review/verdict")]
    assert review.cost_usd == pytest.approx(sum(r.cost_usd for r in children)) and review.cost_usd > 0
    assert result.cost_usd == pytest.approx(sum(r.cost_usd for r in result.leaves))
    assert result.outputs["focus"] == "clarity"
    assert result.records["review/critique"].order[:-1] == review.order  # nested in the chain's order


async def test_a_fan_out_runs_one_sub_workflow_per_item(tmp_path: Path) -> None:
    write(tmp_path, "child.yaml", CHILD)
    path = write(
        tmp_path,
        "p.yaml",
        """
        name: p
        steps:
          each: {workflow: child.yaml, foreach: [one, two], inputs: {draft: "{{ item }}", focus: "n{{ item_index }}"}}
        outputs: {focuses: "{{ each | map(attribute='focus') | list }}"}
        """,
    )
    backend = ScriptedBackend()
    result = await Workflow.from_yaml(path).run(backend=backend)
    assert result.status is RunStatus.SUCCEEDED and result.outputs["focuses"] == ["n0", "n1"]
    assert {"each[0]/critique", "each[1]/verdict"} <= set(result.records)


async def test_a_failure_inside_fails_the_step_and_blocks_its_dependents(parent: Path) -> None:
    backend = ScriptedBackend(answers={"review/verdict": [ProviderError(ErrorKind.BAD_REQUEST, "no")]})
    result = await Workflow.from_yaml(parent).run({"topic": "t"}, backend=backend)
    assert result.status is RunStatus.PARTIAL
    assert result.records["review"].state is StepState.FAILED
    assert "step 'review/verdict' failed" in (result.records["review"].error or "")
    assert result.records["revise"].state is StepState.BLOCKED


async def test_an_input_of_the_wrong_type_fails_the_step(tmp_path: Path) -> None:
    write(tmp_path, "child.yaml", CHILD)
    path = write(tmp_path, "p.yaml", "name: p\nsteps:\n  b: {workflow: child.yaml, inputs: {draft: '{{ [1] }}'}}\n")
    result = await Workflow.from_yaml(path).run(backend=ScriptedBackend())
    assert result.records["b"].state is StepState.FAILED
    assert "input 'draft' should be string" in (result.records["b"].error or "")


@pytest.fixture
def budgeted(tmp_path: Path) -> Path:
    write(tmp_path, "child.yaml", CHILD)
    return write(tmp_path, "parent.yaml", PARENT.replace("steps:", "budget: {max_cost_usd: 0.01}\nsteps:"))


async def test_the_runs_money_budget_covers_the_childs_calls(budgeted: Path) -> None:
    backend = ScriptedBackend(prices={"fast": (0.01, 0.01), "smart": (1000.0, 1000.0)})
    result = await Workflow.from_yaml(budgeted).run({"topic": "t"}, backend=backend)
    assert result.status is RunStatus.STOPPED
    assert result.records["review/verdict"].state is StepState.STOPPED
    assert "stopped before 'review/verdict'" in (result.message or "")
    assert [c.metadata["step"] for c in backend.calls] == ["draft", "review/critique"]


async def test_resume_continues_inside_the_sub_workflow_paying_nothing_twice(parent: Path, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "runs.db")
    failing = ScriptedBackend(answers={"review/verdict": [ProviderError(ErrorKind.BAD_REQUEST, "once")]})
    first = await Workflow.from_yaml(parent).run({"topic": "t"}, backend=failing, store=store, run_id="sw")
    assert first.status is RunStatus.PARTIAL
    again = ScriptedBackend()
    second = await resume_run("sw", backend=again, store=store)
    assert second.status is RunStatus.SUCCEEDED
    assert [c.metadata["step"] for c in again.calls] == ["review/verdict", "revise"]
    assert second.records["draft"].cached and second.records["review/critique"].cached
    new = second.records["review/verdict"].cost_usd + second.records["revise"].cost_usd
    assert second.cost_usd == pytest.approx(first.cost_usd + new)
    stored = load_run(store, "sw")
    store.close()
    assert stored is not None and stored.cost_usd == pytest.approx(second.cost_usd)


# --------------------------------------------------------------------------- plan


def test_plan_lists_and_prices_the_child_steps_under_the_step(parent: Path) -> None:
    plan = plan_workflow(load_workflow(parent), ScriptedBackend(delay_s=0.5), {"topic": "t"})
    rows = {row.step: row for row in plan.rows}
    assert [row.step for row in plan.rows] == ["draft", "review", "review/critique", "review/verdict", "revise"]
    review = rows["review"]
    assert review.kind == "workflow" and review.calls == 2 and review.depth == 0
    assert rows["review/critique"].depth == 1 and rows["review/verdict"].model == "smart"
    children = rows["review/critique"].cost_usd + rows["review/verdict"].cost_usd
    assert review.cost_usd == pytest.approx(children) and children > 0
    leaves = sum(rows[k].cost_usd for k in ("draft", "review/critique", "review/verdict", "revise"))
    assert plan.cost_usd == pytest.approx(leaves)  # the aggregate row is not counted again
    assert plan.critical_path == ["draft", "review", "revise"] and review.latency_ms == pytest.approx(1000)


def test_plan_multiplies_a_fanned_out_sub_workflow(tmp_path: Path) -> None:
    write(tmp_path, "child.yaml", CHILD)
    path = write(
        tmp_path, "p.yaml", "name: p\nsteps:\n  b: {workflow: child.yaml, foreach: [1, 2, 3], inputs: {draft: x}}\n"
    )
    plan = plan_workflow(load_workflow(path), ScriptedBackend(), {})
    rows = {row.step: row for row in plan.rows}
    assert rows["b/critique"].calls == 3 and rows["b"].calls == 6 and "fan-out x3" in rows["b"].note


# --------------------------------------------------------------------------- report nesting


def test_keys_nest_sub_workflows_loops_and_items() -> None:
    assert parent_key("review/critique") == "review" and top_key("review/critique") == "review"
    assert parent_key("build#2.review/critique") == "build#2.review"
    assert parent_key("review/loop#1.x") == "review/loop" and parent_key("each[1]/verdict") == "each[1]"
    assert parent_key("review/search[3]") == "review/search"
    assert depth("review/critique") == 1 and depth("build#2.review/critique") == 2 and depth("r/s[0]") == 2


async def test_runs_show_and_the_admin_detail_nest_the_child_steps(parent: Path, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "runs.db")
    await Workflow.from_yaml(parent).run({"topic": "t"}, backend=ScriptedBackend(), store=store, run_id="nest")
    stored = load_run(store, "nest")
    store.close()
    assert stored is not None
    result = result_from_stored(stored)
    assert display_order(result) == ["draft", "review", "review/critique", "review/verdict", "revise"]
    detail = {step["key"]: step for step in run_detail(stored, tmp_path / "runs.db")["steps"]}
    assert detail["review/verdict"]["parent"] == "review" and detail["review/verdict"]["depth"] == 1
    assert detail["review"]["parent"] is None and detail["review"]["depth"] == 0
    assert (
        detail["review"]["pass_everything_tokens"]
        == sum(detail[k]["pass_everything_tokens"] for k in ("review/critique", "review/verdict"))
        > 0
    )
    console = Console(record=True, width=200)
    print_run(result, console)
    table = console.export_text()
    assert "│   critique " in table and "│   verdict " in table
    lines = timeline(result)
    assert any(line.startswith("  review/critique ") for line in lines)


async def test_live_progress_counts_a_fanned_out_sub_workflow_by_item(tmp_path: Path) -> None:
    write(tmp_path, "child.yaml", CHILD)
    path = write(
        tmp_path, "p.yaml", "name: p\nsteps:\n  each: {workflow: child.yaml, foreach: [a, b, c], inputs: {draft: x}}\n"
    )
    flow = Workflow.from_yaml(path)
    progress = LiveProgress(flow.spec, Console(width=120), enabled=False)
    await flow.run(backend=ScriptedBackend(), listener=progress.on_event)
    assert list(progress.steps) == ["each"] and progress.done_items == {"each": 3}
    shown = Console(record=True, width=120)
    shown.print(progress.table())
    assert "3/3" in shown.export_text()
