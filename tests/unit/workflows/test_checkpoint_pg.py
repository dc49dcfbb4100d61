"""The workflow run store on PostgreSQL: the same log as SQLite, read back by load_run/list_runs unchanged,
resumable, and what `modelyard run/runs --store postgresql://...` opens. Each test has its own schema."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.workflows import Workflow, resume_run
from modelyard.workflows.approval import DecisionError, decide
from modelyard.workflows.checkpoint import RunHeader, SqliteStore, list_runs, load_run, open_run_store
from modelyard.workflows.checkpoint_pg import PostgresRunStore, split_schema
from modelyard.workflows.records import RunStatus, StepState
from modelyard.workflows.scripted import ScriptedBackend
from tests.unit.workflows.helpers import workflow

pytestmark = pytest.mark.postgres

PG = os.environ.get("MODELYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
CHAIN = """
steps:
  a: {model: m, prompt: "first"}
  fan: {model: m, needs: [a], foreach: [1, 2, 3], prompt: "item {{ item }} {{ a }}"}
  c: {model: m, needs: [fan], prompt: "third {{ fan }}"}
outputs: {final: "{{ c }}"}
"""


@pytest.fixture
def dsn() -> Iterator[str]:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
    except OSError:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    chosen = f"{PG}?schema=rt_{uuid.uuid4().hex[:12]}"
    yield chosen
    dropper = PostgresRunStore(chosen)
    dropper.drop()
    dropper.close()


@pytest.fixture
def store(dsn: str) -> Iterator[PostgresRunStore]:
    opened = PostgresRunStore(dsn)
    try:
        yield opened
    finally:
        opened.close()


def test_open_run_store_picks_postgres_for_a_dsn_and_sqlite_otherwise(dsn: str, tmp_path: Path) -> None:
    pg, lite = open_run_store(dsn), open_run_store(tmp_path / "runs.db")
    try:
        assert isinstance(pg, PostgresRunStore) and isinstance(lite, SqliteStore)
    finally:
        pg.close()
        lite.close()
    assert split_schema(f"{PG}?schema=abc&sslmode=disable") == (f"{PG}?sslmode=disable", "abc")


async def test_a_run_is_stored_and_read_back_by_load_run(store: PostgresRunStore) -> None:
    result = await Workflow(workflow(CHAIN)).run(backend=ScriptedBackend(), store=store, run_id="r1")
    stored = load_run(store, "r1")
    assert stored is not None and stored.status is RunStatus.SUCCEEDED
    assert set(stored.records) == set(result.records) and stored.outputs == result.outputs
    assert stored.records["fan[1]"].state is StepState.SUCCEEDED and stored.records["a"].prompt_tokens > 0
    assert stored.cost_usd == pytest.approx(result.cost_usd) and stored.cost_usd > 0
    kinds = [e.kind for e in store.events("r1")]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert [e.seq for e in store.events("r1")] == sorted(e.seq for e in store.events("r1"))
    with pytest.raises(ValueError, match="already exists"):
        store.create_run(RunHeader("r1", "x", "", "", {}, 0.0))


async def test_a_resumed_run_reruns_only_what_failed_and_another_connection_sees_it(
    store: PostgresRunStore, dsn: str
) -> None:
    flow = Workflow(workflow(CHAIN))
    failing = ScriptedBackend(answers={"fan[1]": [ProviderError(ErrorKind.BAD_REQUEST, "flaky once")]})
    first = await flow.run(backend=failing, store=store, run_id="r2")
    assert first.status is RunStatus.PARTIAL
    await asyncio.sleep(0)  # the end of the loop turn: its last events are committed
    again = ScriptedBackend()
    other = PostgresRunStore(dsn)  # another machine: its own connection
    try:
        second = await resume_run("r2", backend=again, store=other)
        assert second.status is RunStatus.SUCCEEDED
        assert sorted(c.metadata["step"] for c in again.calls) == ["c", "fan[1]"]
    finally:
        other.close()
    stored = load_run(store, "r2")
    assert stored is not None and stored.sessions == 2 and stored.status is RunStatus.SUCCEEDED
    assert stored.cost_usd == pytest.approx(second.cost_usd)


async def test_list_runs_newest_first(store: PostgresRunStore) -> None:
    for run_id in ("r1", "r2", "r3"):
        await Workflow(workflow(CHAIN)).run(backend=ScriptedBackend(), store=store, run_id=run_id)
    rows = list_runs(store, limit=2)
    assert [r.run_id for r in rows] == ["r3", "r2"]
    assert all(r.status is RunStatus.SUCCEEDED and r.steps_done == 5 and r.cost_usd > 0 for r in rows)


def test_the_cli_runs_and_lists_runs_in_postgres(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.cli.workflows import app

    spec = tmp_path / "wf.yaml"
    spec.write_text("schema: modelyard.workflow/v1\nname: chain\n" + textwrap.dedent(CHAIN), encoding="utf-8")
    monkeypatch.delenv("MODELYARD_RUNS_DB", raising=False)
    runner = CliRunner()
    done = runner.invoke(app, ["run", str(spec), "--backend", "scripted", "--store", dsn, "--run-id", "cli-1"])
    assert done.exit_code == 0, done.output
    listed = runner.invoke(app, ["runs", "list", "--store", dsn, "--json", "-"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output[listed.output.index("{") :])
    assert [(r["run_id"], r["status"]) for r in data["runs"]] == [("cli-1", "succeeded")]
    monkeypatch.setenv("MODELYARD_RUNS_DB", dsn)  # the environment names PostgreSQL too
    shown = runner.invoke(app, ["runs", "show", "cli-1"])
    assert shown.exit_code == 0 and "cli-1" in shown.output, shown.output
    bad = runner.invoke(app, ["runs", "list", "--store", "postgresql://u:pw@127.0.0.1:1/x?connect_timeout=1"])
    assert bad.exit_code == 2 and "cannot connect" in bad.output and "pw@" not in bad.output


async def test_approval_decisions_are_stored_once_and_resume_the_run(store: PostgresRunStore, dsn: str) -> None:
    gated = 'steps:\n  a: {model: m, prompt: hi}\n  gate: {needs: [a], approve: {prompt: "ok?", show: "{{ a }}"}}\n'
    gated += '  b: {model: m, needs: [gate], prompt: "{{ gate.comment }}"}\n'
    backend = ScriptedBackend()
    first = await Workflow(workflow(gated)).run(backend=backend, store=store, run_id="pg-gate")
    assert first.status is RunStatus.WAITING
    decide(store, "pg-gate", "gate", approved=False, comment="again", decided_by="t")
    with pytest.raises(DecisionError):
        decide(store, "pg-gate", "gate", approved=True, comment=None, decided_by="t")
    again = PostgresRunStore(dsn)  # a second opening: the table exists already (idempotent DDL)
    try:
        done = await resume_run("pg-gate", backend=backend, store=again)
    finally:
        again.close()
    assert done.status is RunStatus.SUCCEEDED and done.records["gate"].output["comment"] == "again"
    assert len(backend.calls) == 2  # `a` was reused, not paid again


async def test_a_typed_outputs_paid_repair_is_reused_on_resume_from_another_connection(
    store: PostgresRunStore, dsn: str
) -> None:
    typed = (
        "steps:\n  pick: {model: m, prompt: p}\n  other: {model: m, prompt: o}\n"
        "outputs:\n  plain: '{{ other }}'\n"
        "  count: {value: '{{ pick }}', schema: {type: object, required: [n], properties: {n: {type: integer}}}}\n"
    )
    failing = ScriptedBackend(
        answers={"pick": ['{"n": "seven"}', '{"n": 7}'], "other": [ProviderError(ErrorKind.BAD_REQUEST, "no")]}
    )
    first = await Workflow(workflow(typed)).run(backend=failing, store=store, run_id="pg-typed")
    assert first.status is RunStatus.PARTIAL and first.outputs["count"] == {"n": 7}
    await asyncio.sleep(0)  # the end of the loop turn: its last events are committed
    again = ScriptedBackend(answers={"pick": ['{"n": 8}']})
    other = PostgresRunStore(dsn)
    try:
        second = await resume_run("pg-typed", backend=again, store=other)
    finally:
        other.close()
    assert second.status is RunStatus.SUCCEEDED and second.outputs["count"] == {"n": 7}
    assert [c.metadata["step"] for c in again.calls] == ["other"]  # the repair was reused, not bought again
    stored = load_run(store, "pg-typed")
    assert stored is not None and stored.records["pick"].output_repairs == {"count": '{"n": 7}'}
