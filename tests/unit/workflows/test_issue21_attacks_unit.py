"""Attacks on issue 21's workflow features, in process: approval decisions addressed by an ambiguous name,
gates inside sub-workflows (alone and fanned out), `next:` given junk, sub-workflow files that are not
workflows (cycles through symlinks, devices, oversized), and hostile text in step names, models, templates
and outputs drawn by `modelyard graph` (Mermaid, DOT, SVG) and `runs show --html`, each parsed back."""

from __future__ import annotations

import asyncio
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from modelyard.server.admin_runs import run_detail
from modelyard.workflows import MemoryStore, Workflow
from modelyard.workflows.approval import DecisionError, decide
from modelyard.workflows.checkpoint import load_run
from modelyard.workflows.include import MAX_BYTES
from modelyard.workflows.issues import WorkflowError
from modelyard.workflows.records import RunStatus, StepState
from modelyard.workflows.render_graph import render
from modelyard.workflows.run_html import run_html
from modelyard.workflows.scripted import ScriptedBackend
from modelyard.workflows.spec import WorkflowSpec, parse_workflow
from tests.unit.workflows.helpers import workflow

HEADER = "schema: modelyard.workflow/v1\nname: {name}\n"
CHILD_GATE = HEADER.format(name="child") + (
    "inputs: {topic: {type: string}}\nsteps:\n  gate: {approve: {prompt: 'ok {{ inputs.topic }}?'}}\n"
)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path) -> WorkflowSpec:
    return parse_workflow(path.read_text(encoding="utf-8"), str(path))


def run(spec: WorkflowSpec, store: MemoryStore, backend: ScriptedBackend | None = None, run_id: str = "r1") -> Any:
    return asyncio.run(Workflow(spec).run(backend=backend or ScriptedBackend(), store=store, run_id=run_id))


# --------------------------------------------------------------------------- gates inside sub-workflows


def fanned_gates(tmp_path: Path) -> WorkflowSpec:
    write(tmp_path, "child.yaml", CHILD_GATE)
    parent = HEADER.format(name="parent") + (
        "steps:\n"
        "  draft: {model: m, prompt: Write.}\n"
        "  review: {needs: [draft], foreach: \"{{ ['a', 'b'] }}\", workflow: child.yaml,\n"
        "           inputs: {topic: '{{ item }}'}}\n"
        "  after: {model: m, needs: [review], prompt: '{{ review }}'}\n"
    )
    return load(write(tmp_path, "parent.yaml", parent))


def test_a_name_shared_by_two_waiting_gates_is_refused_not_guessed(tmp_path: Path) -> None:
    store = MemoryStore()
    assert run(fanned_gates(tmp_path), store).status is RunStatus.WAITING
    with pytest.raises(DecisionError) as refused:
        decide(store, "r1", "gate", approved=True, comment=None, decided_by="t")
    assert refused.value.status == 409 and refused.value.code == "ambiguous_step"
    assert "review[0]/gate" in refused.value.message and "review[1]/gate" in refused.value.message
    assert store.decisions("r1") == {}  # nothing decided on a guess
    key, _ = decide(store, "r1", "review[0]/gate", approved=False, comment="no", decided_by="t")
    assert key == "review[0]/gate"
    key, _ = decide(store, "r1", "gate", approved=True, comment=None, decided_by="t")  # one left: the name is enough
    assert key == "review[1]/gate"


def test_a_step_whose_sub_workflow_waits_is_waiting_not_failed(tmp_path: Path) -> None:
    write(tmp_path, "child.yaml", CHILD_GATE)
    parent = HEADER.format(name="parent") + (
        "steps:\n"
        "  review: {workflow: child.yaml, inputs: {topic: x}}\n"
        "  after: {model: m, needs: [review], prompt: '{{ review.gate.comment }}'}\n"
    )
    store = MemoryStore()
    result = run(load(write(tmp_path, "parent.yaml", parent)), store)
    assert result.status is RunStatus.WAITING
    assert result.records["review/gate"].state is StepState.WAITING
    assert result.records["review"].state is StepState.WAITING, result.records["review"].error
    assert result.records["after"].state is StepState.STOPPED  # not "blocked" by a failure


def test_fanned_out_sub_workflow_gates_wait_then_resume_with_each_decision(tmp_path: Path) -> None:
    from modelyard.workflows.api import resume_run

    store, backend = MemoryStore(), ScriptedBackend()
    first = run(fanned_gates(tmp_path), store, backend)
    assert first.records["review"].state is StepState.WAITING, first.records["review"].error
    assert first.records["after"].state is StepState.STOPPED
    decide(store, "r1", "review[0]/gate", approved=False, comment="no", decided_by="t")
    decide(store, "r1", "review[1]/gate", approved=True, comment="fine", decided_by="t")
    done = asyncio.run(resume_run("r1", backend=backend, store=store))
    assert done.status is RunStatus.SUCCEEDED
    assert [item["gate"]["comment"] for item in done.records["review"].output] == ["no", "fine"]
    assert [c.metadata.get("step_name") for c in backend.calls].count("draft") == 1  # the draft was not paid twice
    stored = load_run(store, "r1")
    assert stored is not None and stored.status is RunStatus.SUCCEEDED


# --------------------------------------------------------------------------- next: given junk

NEXT = """
steps:
  pick: {{model: m, prompt: p, next: "{choice}"}}
  a: {{model: m, needs: [pick], prompt: a}}
  b: {{model: m, needs: [pick], prompt: b}}
"""


@pytest.mark.parametrize(
    ("choice", "ran", "error"),
    [
        ("{{ 'a' }}", {"a"}, None),
        ("{{ ['a', 'a', 'b', 'b'] }}", {"a", "b"}, None),  # duplicates run once
        ("{{ none }}", set(), None),  # nothing chosen: both skipped
        ("{{ 'pick' }}", set(), "not a successor"),  # itself
        ("{{ 7 }}", set(), "must give a step id"),
        ("{{ [1, 2] }}", set(), "must give a step id"),
        ("{{ ['a'] * 100000 }}", {"a"}, None),  # a huge list of one successor
        ("{{ ['c'] * 100000 }}", set(), "not a successor"),
        ("{{ 'x' * 100000 }}", set(), "not a successor"),
    ],
)
def test_next_choices_are_checked_against_declared_successors(choice: str, ran: set[str], error: str | None) -> None:
    backend = ScriptedBackend()
    result = run(workflow(NEXT.format(choice=choice)), MemoryStore(), backend)
    called = {c.metadata.get("step_name") for c in backend.calls} - {"pick"}
    assert called == ran
    pick = result.records["pick"]
    if error is None:
        assert pick.state is StepState.SUCCEEDED
    else:
        assert pick.state is StepState.FAILED and error in (pick.error or "")
        assert len(pick.error or "") < 400  # the huge choice is cut in the message


def test_next_inside_a_loop_chooses_per_round() -> None:
    spec = workflow(
        """
        steps:
          lp:
            loop:
              max_iterations: 3
              steps:
                pick: {model: m, prompt: p, next: "{{ 'a' if iteration.first else 'b' }}"}
                a: {model: m, needs: [pick], prompt: a}
                b: {model: m, needs: [pick], prompt: b}
        """
    )
    backend = ScriptedBackend()
    result = run(spec, MemoryStore(), backend)
    assert result.status is RunStatus.SUCCEEDED
    ran = sorted(k for k, r in result.records.items() if r.state is StepState.SUCCEEDED and k[-2:] in (".a", ".b"))
    assert ran == ["lp#1.a", "lp#2.b", "lp#3.b"]


# --------------------------------------------------------------------------- sub-workflow files


def test_sub_workflow_cycles_through_symlinks_and_three_files_are_refused(tmp_path: Path) -> None:
    steps = "steps:\n  s: {{workflow: {target}}}\n"
    write(tmp_path, "self.yaml", HEADER.format(name="self") + steps.format(target="link.yaml"))
    os.symlink(tmp_path / "self.yaml", tmp_path / "link.yaml")
    with pytest.raises(WorkflowError, match=r"self\.yaml:4: step 's': sub-workflow cycle"):
        load(tmp_path / "self.yaml")
    for name, target in (("a", "b"), ("b", "c"), ("c", "a")):
        write(tmp_path, f"{name}.yaml", HEADER.format(name=name) + steps.format(target=f"{target}.yaml"))
    with pytest.raises(WorkflowError, match=r"sub-workflow cycle: a\.yaml -> b\.yaml -> c\.yaml -> a\.yaml"):
        load(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/dev/zero", "is not a regular file"),  # read to the end, this never ends
        (".", "is not a regular file"),
        ("nope.yaml", "No such file or directory"),
        ("bin.yaml", "is not UTF-8 text"),
        ("notwf.yaml", "a workflow is a YAML mapping"),
        ("big.yaml", f"larger than {MAX_BYTES // 1024 // 1024} MiB"),
    ],
)
def test_a_sub_workflow_file_that_is_no_workflow_is_refused_with_its_line(
    tmp_path: Path, target: str, message: str
) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\x00\xff\xfe" * 100)
    write(tmp_path, "notwf.yaml", "- a\n- b\n")
    write(
        tmp_path,
        "big.yaml",
        HEADER.format(name="big") + "#" * (MAX_BYTES + 10) + "\nsteps: {s: {model: m, prompt: x}}\n",
    )
    parent = write(tmp_path, "p.yaml", HEADER.format(name="p") + f"steps:\n  s: {{workflow: {target}}}\n")
    with pytest.raises(WorkflowError) as refused:
        load(parent)
    assert message in str(refused.value) and re.search(r"\.yaml:\d+: ", str(refused.value))


# --------------------------------------------------------------------------- hostile text in pictures

HOSTILE = r"""
steps:
  end: {model: "m\"]; x-->y }<script>alert(1)</script>]]>", prompt: "a --> b } \" \n c"}
  click: {model: "m\x01\x0b\u2028", needs: [end], prompt: "x", foreach: "{{ ['a}-->\"', 2] }}"}
  style: {needs: [click], approve: {prompt: "<script>"}, next: "{{ 'subgraph' }}"}
  subgraph: {needs: [style], model: "m|x", prompt: "y"}
"""


def test_graph_svg_is_well_formed_xml_whatever_the_model_names_hold() -> None:
    spec = workflow(HOSTILE + '  long: {model: "' + "w" * 10_000 + '", prompt: p}\n')
    root = ET.fromstring(render(spec, "svg"))
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "<script>" in texts  # shown as text, escaped in the file
    assert not root.findall(".//{http://www.w3.org/2000/svg}script")
    assert max(len(t.text or "") for t in root.iter("{http://www.w3.org/2000/svg}text")) < 200


def test_mermaid_ids_never_are_mermaid_keywords_and_labels_stay_quoted() -> None:
    chart = render(workflow(HOSTILE), "mermaid")
    lines = chart.splitlines()[1:]
    statements = {"end", "subgraph", "graph", "flowchart", "style", "class", "classdef", "click", "linkstyle"}
    for line in lines:
        first = re.match(r"\s*([A-Za-z0-9_]+)", line)
        assert first is not None and first.group(1).lower() not in statements, line
        label = re.search(r'\["(.*)"\]$|\{"(.*)"\}$', line)
        if label:
            inner = label.group(1) or label.group(2)
            assert '"' not in inner and "<" not in inner.replace("<br/>", "") and "\n" not in inner
    assert "end_ --> click_" in chart and 'style_ -.->|"next"| subgraph_' in chart


def test_dot_strings_stay_closed() -> None:
    text = render(workflow(HOSTILE), "dot")
    body = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # every quoted string closes on its own line
    assert '"' not in body.replace('""', "")
    assert body.count("{") == body.count("}") == 1
    assert all(line.rstrip().endswith((";", "{", "}")) for line in body.splitlines()[1:])


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def test_run_html_escapes_hostile_outputs_errors_and_keys(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>]]>\"'--> } \x01 </pre></td><img src=x onerror=alert(1)>"
    spec = workflow(HOSTILE.replace('approve: {prompt: "<script>"}, ', "model: m, prompt: p, "))
    backend = ScriptedBackend(answers={"end": [evil], "click": [evil, evil], "style": ["subgraph"], "subgraph": [evil]})
    store = MemoryStore()
    run(spec, store, backend)
    stored = load_run(store, "r1")
    assert stored is not None
    page = run_html(run_detail(stored, tmp_path / "runs.db"))
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags and "img" not in parser.tags
    assert page.count("&lt;script&gt;") >= 3


# --------------------------------------------------------------------------- a stream nobody reads


def test_a_stream_that_is_not_read_holds_a_bounded_number_of_events() -> None:
    spec = workflow(
        """
        steps:
          fan: {model: m, foreach: "{{ range(100) | list }}", prompt: "x {{ item }}"}
        """
    )

    async def never_read_again() -> int:
        stream = Workflow(spec).stream(tokens=True, backend=ScriptedBackend(answer_words=2000))
        await stream.__anext__()  # the run starts; then the consumer goes away without closing it
        assert stream._task is not None
        try:  # a fix may hold the run back (backpressure) instead of finishing it: either way, measure
            await asyncio.wait_for(asyncio.shield(stream._task), 10)
        except TimeoutError:
            pass
        held = stream._queue.qsize()
        stream._task.cancel()
        return held

    assert asyncio.run(never_read_again()) <= 10_000


# --------------------------------------------------------------------------- next: and inputs in sub-workflows

CHOOSER = HEADER.format(name="chooser") + (
    "inputs: {x: {type: string}}\n"
    "steps:\n"
    "  pick: {model: m, prompt: p, next: \"{{ 'b' if inputs.x == 'go' else 'zzz' }}\"}\n"
    "  a: {model: m, needs: [pick], prompt: a}\n"
    "  b: {model: m, needs: [pick], prompt: b}\n"
)


@pytest.mark.parametrize(
    ("given", "states", "error"),
    [
        ("go", {"s/pick": "succeeded", "s/a": "skipped", "s/b": "succeeded"}, None),
        ("other", {"s/pick": "failed", "s/a": "blocked", "s/b": "blocked"}, "chose 'zzz', which is not a successor"),
    ],
)
def test_next_inside_a_sub_workflow_chooses_among_the_childs_successors(
    tmp_path: Path, given: str, states: dict[str, str], error: str | None
) -> None:
    write(tmp_path, "chooser.yaml", CHOOSER)
    parent = write(
        tmp_path,
        "p.yaml",
        HEADER.format(name="p") + f"steps:\n  s: {{workflow: chooser.yaml, inputs: {{x: {given}}}}}\n",
    )
    result = run(load(parent), MemoryStore())
    assert {k: result.records[k].state.value for k in states} == states
    assert error is None or error in (result.records["s"].error or "")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ nosuch.out }}", "step 's': unknown name 'nosuch'"),
        ("{{ a }}", "step 's': the template reads step 'a' but the step does not list it in `needs`"),
    ],
)
def test_sub_workflow_inputs_reading_undeclared_steps_are_refused_at_their_line(
    tmp_path: Path, template: str, message: str
) -> None:
    write(tmp_path, "chooser.yaml", CHOOSER)
    body = f"steps:\n  a: {{model: m, prompt: p}}\n  s: {{workflow: chooser.yaml, inputs: {{x: '{template}'}}}}\n"
    with pytest.raises(WorkflowError, match=r"p\.yaml:5: " + re.escape(message)):
        load(write(tmp_path, "p.yaml", HEADER.format(name="p") + body))
