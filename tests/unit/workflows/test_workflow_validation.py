"""Validation before anything runs: every problem with its file, line and step."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from modelyard.workflows.issues import Issue, WorkflowError
from modelyard.workflows.spec import load_workflow, parse_workflow
from tests.unit.workflows.helpers import HEADER, workflow


def issues_of(body: str, header: bool = True) -> list[Issue]:
    with pytest.raises(WorkflowError) as caught:
        workflow(body, header=header)
    return caught.value.issues


def only(body: str, header: bool = True) -> Issue:
    found = issues_of(body, header)
    assert len(found) == 1, found
    return found[0]


# HEADER is two lines, so the first body line is line 3.


def test_unknown_need_names_file_line_and_step() -> None:
    issue = only(
        """
        steps:
          a: {model: m, prompt: hi}
          b:
            model: m
            needs: [a, ghost]
            prompt: "{{ a }}"
        """
    )
    assert (issue.file, issue.line, issue.step) == ("wf.yaml", 7, "b")
    assert "unknown step 'ghost'" in issue.message
    assert str(issue).startswith("wf.yaml:7: step 'b':")


def test_unknown_need_suggests_a_close_name() -> None:
    issue = only(
        """
        steps:
          plan: {model: m, prompt: hi}
          b: {model: m, needs: [plam], prompt: x}
        """
    )
    assert "did you mean 'plan'" in issue.message


def test_cycle_is_reported_with_its_path() -> None:
    issue = only(
        """
        steps:
          a: {model: m, needs: [c], prompt: "{{ c }}"}
          b: {model: m, needs: [a], prompt: "{{ a }}"}
          c: {model: m, needs: [b], prompt: "{{ b }}"}
        """
    )
    assert "dependency cycle" in issue.message
    assert "a -> c -> b -> a" in issue.message
    assert issue.line == 4 and issue.step == "a"


def test_self_need_is_an_error() -> None:
    issue = only("steps:\n  a: {model: m, needs: [a], prompt: x}\n")
    assert "cannot need itself" in issue.message


def test_template_naming_a_step_it_does_not_need() -> None:
    issue = only(
        """
        steps:
          a: {model: m, prompt: hi}
          b: {model: m, prompt: hi}
          c:
            model: m
            needs: [a]
            prompt: |
              first {{ a }}
              second {{ b }}
        """
    )
    assert (issue.line, issue.step) == (11, "c")
    assert "reads step 'b'" in issue.message and "needs" in issue.message


def test_template_line_inside_a_quoted_scalar() -> None:
    issue = only(
        """
        steps:
          a: {model: m, prompt: hi}
          c: {model: m, prompt: "x {{ a }}"}
        """
    )
    assert issue.line == 5


def test_unknown_name_and_unknown_input() -> None:
    found = issues_of(
        """
        inputs: {goal: string}
        steps:
          a:
            model: m
            prompt: "{{ inputs.gaol }} {{ mystery }}"
        """
    )
    messages = {i.message for i in found}
    assert any("unknown input 'gaol'" in m and "goal" in m for m in messages)
    assert any("unknown name 'mystery'" in m for m in messages)
    assert all(i.line == 7 for i in found)


def test_item_outside_foreach() -> None:
    issue = only("steps:\n  a: {model: m, prompt: '{{ item }}'}\n")
    assert "'item' is only defined" in issue.message


def test_item_inside_foreach_expression_itself() -> None:
    issue = only(
        """
        steps:
          a: {model: m, prompt: hi}
          b: {model: m, needs: [a], foreach: "{{ item }}", prompt: "{{ item }}"}
        """
    )
    assert "'item' is only defined" in issue.message and issue.step == "b"


def test_output_field_not_in_the_needed_step_schema() -> None:
    issue = only(
        """
        steps:
          plan:
            model: m
            prompt: hi
            output: {schema: {type: object, properties: {queries: {type: array}}}}
          search: {model: m, needs: [plan], foreach: "{{ plan.querys }}", prompt: "{{ item }}"}
        """
    )
    assert "'plan' has no field 'querys'" in issue.message and "queries" in issue.message


def test_schema_that_is_not_json_schema() -> None:
    issue = only(
        """
        steps:
          a:
            model: m
            prompt: hi
            output:
              schema: {type: objekt}
        """
    )
    assert issue.step == "a"
    assert "not a valid JSON Schema" in issue.message
    assert issue.line == 8


def test_unknown_key_points_at_the_key_and_suggests() -> None:
    issue = only(
        """
        steps:
          a:
            model: m
            prompt: hi
            need: [b]
        """
    )
    assert (issue.line, issue.step) == (7, "a")
    assert "unknown key 'need'" in issue.message and "did you mean 'needs'" in issue.message


def test_step_needs_exactly_one_kind() -> None:
    issue = only("steps:\n  a: {model: m, prompt: hi, call: 'x.y:z'}\n")
    assert "exactly one of" in issue.message


def test_model_without_prompt() -> None:
    issue = only("steps:\n  a: {model: m}\n")
    assert "needs both `model` and `prompt`" in issue.message


def test_missing_format_version() -> None:
    issue = only("name: t\nsteps:\n  a: {model: m, prompt: hi}\n", header=False)
    assert "schema: modelyard.workflow/v1" in issue.message and issue.line == 1


def test_unsupported_format_version() -> None:
    text = "schema: modelyard.workflow/v9\nname: t\nsteps:\n  a: {model: m, prompt: hi}\n"
    issue = only(text, header=False)
    assert "unsupported format" in issue.message and issue.line == 1


def test_yaml_syntax_error_has_a_line() -> None:
    issue = only("steps:\n  a: {model: m, prompt: [unclosed\n")
    assert issue.message.startswith("YAML syntax") and issue.line >= 3


def test_duplicate_keys_are_reported() -> None:
    issue = only("steps:\n  a: {model: m, prompt: hi}\n  a: {model: m, prompt: again}\n")
    assert "duplicate key 'a'" in issue.message and issue.line == 5


def test_bad_step_name_and_reserved_name() -> None:
    found = issues_of("steps:\n  bad-name: {model: m, prompt: hi}\n")
    assert any("not a valid name" in i.message for i in found)
    issue = only("steps:\n  item: {model: m, prompt: hi}\n")
    assert "reserved" in issue.message


def test_template_syntax_error() -> None:
    issue = only("steps:\n  a: {model: m, prompt: '{{ oops '}\n")
    assert "template syntax" in issue.message and issue.line == 4


def test_tool_that_cannot_be_imported() -> None:
    issue = only("steps:\n  a: {call: 'modelyard.nope.nothing:run'}\n")
    assert issue.step == "a" and "cannot import" in issue.message


def test_loop_steps_may_only_need_siblings_or_loop_needs() -> None:
    issue = only(
        """
        steps:
          a: {model: m, prompt: hi}
          b: {model: m, prompt: hi}
          cycle:
            needs: [a]
            loop:
              steps:
                x: {model: m, needs: [b], prompt: hi}
        """
    )
    assert issue.step == "cycle.x" and "neither a step of this loop" in issue.message


def test_until_and_iteration_scoping() -> None:
    spec = workflow(
        """
        steps:
          a: {model: m, prompt: hi}
          cycle:
            needs: [a]
            loop:
              max_iterations: 2
              until: "{{ check.ok }}"
              steps:
                draft:
                  model: m
                  needs: [a]
                  prompt: "{{ a }} {{ iteration.previous.check if iteration.previous }}"
                check: {model: m, needs: [draft], prompt: "{{ draft }}"}
        outputs: {final: "{{ cycle.draft }}"}
        """
    )
    assert spec.steps["cycle"].loop is not None
    issue = only("steps:\n  a: {model: m, prompt: '{{ iteration.index }}'}\n")
    assert "only defined inside a loop" in issue.message


def test_outputs_see_every_top_level_step_but_check_loop_fields() -> None:
    issue = only(
        """
        steps:
          cycle:
            loop:
              steps:
                draft: {model: m, prompt: hi}
        outputs: {final: "{{ cycle.drfat }}"}
        """
    )
    assert "loop 'cycle' has no step 'drfat'" in issue.message


def test_several_problems_are_reported_together_in_file_order() -> None:
    found = issues_of(
        """
        steps:
          a: {model: m, needs: [zz], prompt: hi}
          b: {model: m, prompt: "{{ a }}"}
        """
    )
    assert [i.line for i in found] == sorted(i.line for i in found)
    assert len(found) == 2


def test_schema_file_beside_the_workflow(tmp_path: Path) -> None:
    (tmp_path / "plan.schema.json").write_text('{"type": "object", "properties": {"q": {"type": "string"}}}')
    text = HEADER + textwrap.dedent(
        """
        steps:
          plan: {model: m, prompt: hi, output: {schema: plan.schema.json}}
        """
    )
    (tmp_path / "wf.yaml").write_text(text)
    spec = load_workflow(tmp_path / "wf.yaml")
    assert spec.steps["plan"].output_schema == {"type": "object", "properties": {"q": {"type": "string"}}}
    (tmp_path / "wf.yaml").write_text(text.replace("plan.schema.json", "missing.json"))
    with pytest.raises(WorkflowError, match=r"cannot read schema file missing\.json"):
        load_workflow(tmp_path / "wf.yaml")


def test_missing_file() -> None:
    with pytest.raises(WorkflowError, match="cannot read the workflow"):
        load_workflow("/nonexistent/wf.yaml")


def test_shipped_examples_are_valid(examples_dir: Path) -> None:
    names = sorted(p.name for p in examples_dir.glob("*.yaml"))
    assert names == ["classify.yaml", "code_review.yaml", "research.yaml", "review.yaml", "write_and_review.yaml"]
    for path in examples_dir.glob("*.yaml"):
        spec = load_workflow(path)
        assert spec.steps


def test_inputs_shorthand_and_full_form() -> None:
    spec = parse_workflow(
        HEADER + "inputs:\n  a: string\n  b: {type: integer, default: 3}\nsteps:\n  s: {model: m, prompt: hi}\n"
    )
    assert spec.inputs["a"].required and spec.inputs["a"].type == "string"
    assert not spec.inputs["b"].required and spec.inputs["b"].default == 3


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{call: 'modelyard.workflows.tools:read_text', system: be nice}", "`system` applies to model steps"),
        ("{model: m, prompt: hi, args: {x: 1}}", "`args` applies to tool steps"),
        ("{foreach: [1], loop: {steps: {x: {model: m, prompt: hi}}}}", "`foreach` applies to model steps"),
        ("{call: 'modelyard.workflows.tools:read_text', output: {schema: {}}}", "`output.schema`"),
    ],
)
def test_keys_that_do_not_apply_to_the_step_kind(step: str, message: str) -> None:
    issue = only(f"steps:\n  s: {step}\n")
    assert message in issue.message and issue.step == "s" and issue.line == 4


def test_a_loop_step_cannot_shadow_what_the_loop_needs() -> None:
    issue = only(
        """
        steps:
          a: {model: m, prompt: hi}
          cycle:
            needs: [a]
            loop:
              steps:
                a: {model: m, prompt: again}
        """
    )
    assert issue.step == "cycle.a" and "also the name of a step this loop needs" in issue.message
