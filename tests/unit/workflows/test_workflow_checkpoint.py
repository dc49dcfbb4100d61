"""The run store: an append-only log that is checkpoint, resume point and cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.workflows import MemoryStore, SqliteStore, Workflow, resume_run
from modelyard.workflows.api import ResumeError
from modelyard.workflows.checkpoint import RunHeader, list_runs, load_run
from modelyard.workflows.records import RunStatus, StepState
from modelyard.workflows.scripted import ScriptedBackend
from tests.unit.workflows.helpers import workflow

CHAIN = """
steps:
  a: {model: m, prompt: "first"}
  b: {model: m, needs: [a], prompt: "second {{ a }}"}
  fan: {model: m, needs: [a], foreach: [1, 2, 3], prompt: "item {{ item }} {{ a }}"}
  c: {model: m, needs: [b, fan], prompt: "third {{ b }} {{ fan }}"}
outputs: {final: "{{ c }}"}
"""


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    chosen = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "runs.db")
    yield chosen
    chosen.close()


async def test_every_finished_step_is_stored_with_its_record(store) -> None:  # type: ignore[no-untyped-def]
    result = await Workflow(workflow(CHAIN)).run(backend=ScriptedBackend(), store=store, run_id="r1")
    stored = load_run(store, "r1")
    assert stored is not None and stored.status is RunStatus.SUCCEEDED
    assert set(stored.records) == set(result.records)
    a = stored.records["a"]
    assert a.state is StepState.SUCCEEDED and a.deployment == "m@scripted" and a.inputs_hash
    assert a.output == result.records["a"].output and a.prompt_tokens > 0 and a.cost_usd > 0
    assert a.started_at and a.finished_at and a.finished_at >= a.started_at
    assert stored.cost_usd == pytest.approx(result.cost_usd)
    assert stored.outputs == result.outputs
    kinds = [e.kind for e in store.events("r1")]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("step_finished") == len(result.records)


async def test_resume_reruns_only_what_did_not_finish(store) -> None:  # type: ignore[no-untyped-def]
    flow = Workflow(workflow(CHAIN))
    failing = ScriptedBackend(answers={"fan[1]": [ProviderError(ErrorKind.BAD_REQUEST, "flaky once")]})
    first = await flow.run(backend=failing, store=store, run_id="r2")
    assert first.status is RunStatus.PARTIAL
    assert first.records["c"].state is StepState.BLOCKED
    paid_first = first.cost_usd

    again = ScriptedBackend()
    second = await resume_run("r2", backend=again, store=store)
    assert second.status is RunStatus.SUCCEEDED
    assert sorted(c.metadata["step"] for c in again.calls) == ["c", "fan[1]"]
    for key in ("a", "b", "fan[0]", "fan[2]"):
        assert second.records[key].cached
    new_spend = sum(second.records[k].cost_usd for k in ("c", "fan[1]"))
    assert second.cost_usd == pytest.approx(paid_first + new_spend)
    stored = load_run(store, "r2")
    assert stored is not None and stored.sessions == 2 and stored.status is RunStatus.SUCCEEDED
    assert stored.cost_usd == pytest.approx(second.cost_usd)
    assert second.sessions == 2


async def test_resume_of_a_finished_run_calls_nothing(store) -> None:  # type: ignore[no-untyped-def]
    await Workflow(workflow(CHAIN)).run(backend=ScriptedBackend(), store=store, run_id="r3")
    backend = ScriptedBackend()
    result = await resume_run("r3", backend=backend, store=store)
    assert backend.calls == [] and result.status is RunStatus.SUCCEEDED
    stored = load_run(store, "r3")
    assert stored is not None
    first_cost = sum(e.cost_usd for e in store.events("r3") if e.kind in ("step_finished", "step_failed"))
    assert stored.cost_usd == pytest.approx(first_cost)


async def test_changed_inputs_are_not_reused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "runs.db")
    flow = Workflow(workflow(CHAIN))
    await flow.run(backend=ScriptedBackend(answers={"a": ["one"]}), store=store, run_id="r4")
    changed = Workflow(workflow(CHAIN.replace('"second {{ a }}"', '"second, reworded {{ a }}"')))
    backend = ScriptedBackend(answers={"a": ["one"]})
    await resume_run("r4", backend=backend, store=store, spec=changed.spec)
    assert [c.metadata["step"] for c in backend.calls] == ["b", "c"]  # b's prompt changed, c needs b
    store.close()


async def test_resume_refuses_a_live_run_and_unknown_ids(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "runs.db")
    spec = workflow(CHAIN)
    store.create_run(RunHeader("live", spec.name, spec.source, spec.text, {}, 0.0, spec.deps()))
    store.append("live", "run_started", None, {"pid": os.getpid(), "host": os.uname().nodename})
    with pytest.raises(ResumeError, match="still looks alive"):
        await resume_run("live", backend=ScriptedBackend(), store=store)
    with pytest.raises(ResumeError, match="no run"):
        await resume_run("ghost", backend=ScriptedBackend(), store=store)
    store.close()


def test_a_dead_process_marks_the_run_and_its_running_steps_interrupted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "runs.db")
    spec = workflow(CHAIN)
    code = "import os; print(os.getpid())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dead_pid = int(child.stdout)
    store.create_run(RunHeader("dead", spec.name, spec.source, spec.text, {}, 1.0, spec.deps()))
    store.append("dead", "run_started", None, {"pid": dead_pid, "host": os.uname().nodename})
    running = {"key": "a", "step": "a", "kind": "model", "state": "running"}
    store.append("dead", "step_started", "a", {"record": running})
    stored = load_run(store, "dead")
    assert stored is not None and stored.status is RunStatus.INTERRUPTED
    assert stored.records["a"].state is StepState.INTERRUPTED
    store.close()


async def test_list_runs_newest_first_with_cost(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "runs.db")
    flow = Workflow(workflow(CHAIN))
    await flow.run(backend=ScriptedBackend(), store=store, run_id="older")
    failing = ScriptedBackend(answers={"a": [ProviderError(ErrorKind.BAD_REQUEST, "no")]})
    await flow.run(backend=failing, store=store, run_id="newer")
    rows = list_runs(store)
    assert [r.run_id for r in rows] == ["newer", "older"]
    assert rows[0].status is RunStatus.FAILED and rows[0].steps_done == 0 and rows[0].cost_usd == 0
    assert rows[1].status is RunStatus.SUCCEEDED and rows[1].steps_done == 6 and rows[1].cost_usd > 0
    store.close()


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "runs.db"
    first = SqliteStore(path)
    first.create_run(RunHeader("x", "wf", "wf.yaml", "text", {"goal": "g"}, 5.0, {"a": []}))
    first.append("x", "step_finished", "a", {"record": {"key": "a", "step": "a", "kind": "tool"}}, 0.5)
    first.close()
    second = SqliteStore(path)
    header = second.header("x")
    assert header is not None and header.inputs == {"goal": "g"} and header.deps == {"a": []}
    events = second.events("x")
    assert len(events) == 1 and events[0].cost_usd == 0.5 and events[0].key == "a"
    with pytest.raises(Exception, match="UNIQUE"):
        second.create_run(RunHeader("x", "wf", "wf.yaml", "text", {}, 5.0))
    second.close()
