"""The Runs API's pieces without a server: the read-only reader, where the store is, ids and limits, one run's
JSON (loops, fan-outs inside loops, pending steps), the bounded read, and the SVG graph and timeline."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from markupsafe import escape

from modelyard.config.loader import parse_config
from modelyard.schema.errors import GatewayError
from modelyard.server import admin_runs
from modelyard.server.admin_runs import (
    display_order,
    parent_key,
    parse_limit,
    resume_command,
    run_detail,
    runs_store_path,
    valid_run_id,
)
from modelyard.server.ui.graphs import dag, gantt, layers, state_class
from modelyard.server.ui.runs import MAX_BARS, timeline_bars
from modelyard.workflows import MemoryStore, SqliteStore, Workflow
from modelyard.workflows.checkpoint import DEFAULT_STORE, RunHeader, SqliteReader, list_runs, load_run
from modelyard.workflows.report import result_from_stored
from modelyard.workflows.scripted import ScriptedBackend
from tests.unit.workflows.helpers import workflow

XSS = "<script>alert(1)</script>"
LOOPED = """
steps:
  a: {model: m, prompt: "first"}
  refine:
    needs: [a]
    loop:
      max_iterations: 2
      steps:
        draft: {model: m, prompt: "draft {{ iteration.index }}"}
        fan: {model: m, needs: [draft], foreach: [1, 2], prompt: "item {{ item }} {{ draft }}"}
  last: {model: m, needs: [refine], prompt: "done {{ refine }}"}
"""
MINIMAL = "deployments:\n  - {name: d, provider: openai, model: m, api_base: 'http://127.0.0.1:9/v1'}\n"


def _run(spec_text: str, store: Any, run_id: str) -> None:
    asyncio.run(Workflow(workflow(spec_text)).run(backend=ScriptedBackend(), store=store, run_id=run_id))


# --------------------------------------------------------------------------- the reader


def test_the_reader_lists_what_the_writer_lists_and_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = SqliteStore(path)
    for index in range(3):
        _run(LOOPED, store, f"r{index}")
    expected = [vars(r) for r in list_runs(store, 2)]
    store.close()
    outlines = SqliteReader(path, outlines=True)
    try:
        assert [vars(r) for r in list_runs(outlines, 2)] == expected  # the same list without the outputs
        assert all("output" not in e.data.get("record", {}) for e in outlines.events("r2"))
    finally:
        outlines.close()
    reader = SqliteReader(path)
    try:
        assert [vars(r) for r in list_runs(reader, 2)] == expected
        stored = load_run(reader, "r0")
        assert stored is not None and stored.records["last"].output
        assert reader.header("nope") is None and reader.events("nope") == []
        with pytest.raises(PermissionError):
            reader.append("r0", "step_finished", "x", {})
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._db.execute("DELETE FROM events")
    finally:
        reader.close()


def test_the_reader_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SqliteReader(tmp_path / "none" / "runs.db")
    assert not (tmp_path / "none").exists()


def test_interrupting_a_closed_reader_does_nothing(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "runs.db").close()
    reader = SqliteReader(tmp_path / "runs.db")
    reader.close()
    reader.interrupt()


# --------------------------------------------------------------------------- where, ids, limits


def test_the_store_path_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(MINIMAL + "ui: {runs_store: data/runs.db}\n", source=str(tmp_path / "gw.yaml"), env={})
    assert runs_store_path(config) == tmp_path / "data" / "runs.db"
    absolute = parse_config(MINIMAL + f"ui: {{runs_store: {tmp_path}/x.db}}\n", source="gw.yaml", env={})
    assert runs_store_path(absolute) == tmp_path / "x.db"
    monkeypatch.setenv("MODELYARD_RUNS_DB", str(tmp_path / "env.db"))
    assert runs_store_path(parse_config(MINIMAL, source="gw.yaml", env={})) == tmp_path / "env.db"
    monkeypatch.delenv("MODELYARD_RUNS_DB")
    assert runs_store_path(parse_config(MINIMAL, source="gw.yaml", env={})) == DEFAULT_STORE.expanduser()


def test_the_resume_command_is_quoted_and_names_a_store_that_is_not_the_default(tmp_path: Path) -> None:
    assert resume_command("r-1", DEFAULT_STORE.expanduser()) == "modelyard run --resume r-1"
    odd = tmp_path / "my runs" / "r.db"
    assert resume_command("r-1", odd) == f"modelyard run --resume r-1 --store '{odd}'"


@pytest.mark.parametrize("run_id", ["20261204-224429-ab12cd", "my_run.v2", "a:b", "x" * 128])
def test_valid_run_ids(run_id: str) -> None:
    assert valid_run_id(run_id)


@pytest.mark.parametrize("run_id", ["", "..", "a..b", ".x", "a/b", "a b", "<x>", "x" * 129, "é"])
def test_invalid_run_ids(run_id: str) -> None:
    assert not valid_run_id(run_id)


def test_limits() -> None:
    assert parse_limit(None) == parse_limit("") == 50 and parse_limit("200") == 200 and parse_limit("1") == 1
    for bad in ("0", "201", "-1", "1.5", "nan", "1" * 40):
        with pytest.raises(GatewayError) as caught:
            parse_limit(bad)
        assert caught.value.status == 400 and caught.value.param == "limit"


# --------------------------------------------------------------------------- one run


def test_loops_and_fan_outs_inside_loops(tmp_path: Path) -> None:
    store = MemoryStore()
    _run(LOOPED, store, "loop")
    stored = load_run(store, "loop")
    assert stored is not None
    body = run_detail(stored, tmp_path / "runs.db")
    steps = {s["key"]: s for s in body["steps"]}
    assert body["rows"] == ["a", "refine", "refine#1.draft", "refine#1.fan", "refine#2.draft", "refine#2.fan", "last"]
    assert display_order(result_from_stored(stored)) == body["rows"]
    assert steps["refine#2.fan"]["depth"] == 1 and steps["refine#2.fan[1]"]["depth"] == 2
    assert steps["refine#2.fan[1]"]["parent"] == "refine#2.fan" and steps["refine#2.fan"]["parent"] == "refine"
    assert [i["key"] for i in steps["refine#1.fan"]["fanout"]] == ["refine#1.fan[0]", "refine#1.fan[1]"]
    leaves = [s for s in body["steps"] if s["kind"] == "model"]
    assert steps["refine"]["pass_everything_tokens"] == sum(
        s["pass_everything_tokens"] for s in leaves if s["key"].startswith("refine#")
    )
    assert body["summary"]["context_tokens_full"] == sum(s["pass_everything_tokens"] for s in leaves)
    assert {n["id"]: n["kind"] for n in body["dag"]["nodes"]} == {"a": "model", "refine": "loop", "last": "model"}
    assert all(s["started_offset_s"] >= 0 for s in body["steps"])


def test_a_run_cut_short_lists_its_unstarted_steps_as_pending(tmp_path: Path) -> None:
    store = MemoryStore()
    store.create_run(RunHeader("cut", "wf", "x.yaml", "", {}, time.time(), {"a": [], "b": ["a"]}))
    store.append("cut", "run_started", None, {"pid": -1, "host": "elsewhere"})
    stored = load_run(store, "cut")
    assert stored is not None
    body = run_detail(stored, tmp_path / "runs.db")
    assert body["status"] == "interrupted" and body["rows"] == ["a", "b"]
    assert [(s["key"], s["state"], s["duration_s"]) for s in body["steps"]] == [
        ("a", "pending", None),
        ("b", "pending", None),
    ]
    assert [n["state"] for n in body["dag"]["nodes"]] == ["pending", "pending"]


def test_long_outputs_are_cut(tmp_path: Path) -> None:
    store = MemoryStore()
    long = "x" * 10_000
    _run('steps:\n  a: {model: m, prompt: "hi"}\noutputs: {o: "{{ a }}"}\n', store, "long")
    stored = load_run(store, "long")
    assert stored is not None
    stored.records["a"].output = long
    stored.records["a"].output_repairs = {"o": long}  # a typed output's repair reply is as long as an output
    stored.outputs = {"o": long}
    body = run_detail(stored, tmp_path / "r.db")
    step = body["steps"][0]
    assert step["output_truncated"] is True and len(step["output"]) <= admin_runs.MAX_OUTPUT_CHARS + 1
    assert len(step["output_repairs"]["o"]) <= admin_runs.MAX_OUTPUT_CHARS + 1
    assert len(body["outputs"]["o"]) <= admin_runs.MAX_OUTPUT_CHARS + 1


def test_parent_keys() -> None:
    assert parent_key("a") is None and parent_key("fan[3]") == "fan" and parent_key("loop#2.x") == "loop"
    assert parent_key("outer#1.inner#2.fan[0]") == "outer#1.inner#2.fan"


# --------------------------------------------------------------------------- the bounded read


def _gateway(path: Path, timeout_s: float = 5.0) -> Any:
    config = SimpleNamespace(ui=SimpleNamespace(runs_store=str(path)), state=SimpleNamespace(store_timeout_s=timeout_s))
    config.source = "<memory>"
    return SimpleNamespace(config=config)


def test_a_read_past_the_timeout_is_503_and_a_broken_file_is_503(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    SqliteStore(path).close()
    with pytest.raises(GatewayError) as caught:
        asyncio.run(admin_runs.read_run_store(_gateway(path, 0.05), lambda reader, store: time.sleep(0.5), None))
    assert caught.value.status == 503 and caught.value.code == "runs_store_unavailable"
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    with pytest.raises(GatewayError) as caught:
        asyncio.run(admin_runs.runs_data(_gateway(broken)))
    assert caught.value.status == 503
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    empty.write_bytes(b"")
    assert asyncio.run(admin_runs.runs_data(_gateway(empty))) == {"object": "list", "data": []}


# --------------------------------------------------------------------------- SVG


def test_state_classes() -> None:
    assert state_class("succeeded") == "state-finished" and state_class("failed") == "state-failed"
    assert state_class("running") == "state-running" and state_class("skipped") == "state-skipped"
    assert state_class("blocked") == "state-skipped" and state_class("whatever") == "state-pending"


def test_layers_follow_the_longest_chain_and_survive_a_cycle() -> None:
    assert layers(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("a", "c"), ("a", "d")]) == {
        "a": 0,
        "b": 1,
        "c": 2,
        "d": 1,
    }
    cyclic = layers(["a", "b"], [("a", "b"), ("b", "a")])
    assert max(cyclic.values()) < 2


def test_the_graph_escapes_every_label_and_colours_by_state() -> None:
    nodes: list[dict[str, Any]] = [
        {"id": XSS, "state": "failed", "kind": "model"},
        {"id": "fan", "state": "succeeded", "kind": "foreach", "items": 3},
        {"id": "x\"'&", "state": "running", "kind": "loop", "iterations": 2},
    ]
    svg = str(dag(nodes, [{"from": XSS, "to": "fan"}, {"from": "fan", "to": "x\"'&"}, {"from": "ghost", "to": "fan"}]))
    assert "<script" not in svg and str(escape(XSS)) in svg
    assert 'data-node="x&#34;&#39;&amp;"' in svg and "fan-out: 3 items" in svg and "loop: 2 rounds" in svg
    assert svg.count('class="edge"') == 2
    assert re.search(r'data-state="failed">.*?class="state-failed"', svg)
    assert "style=" not in svg and "<svg" in str(dag([], []))


def test_the_timeline_draws_a_bar_per_timed_entry_and_escapes() -> None:
    bars: list[dict[str, Any]] = [
        {"key": "a", "label": "a", "state": "succeeded", "start_s": 0.0, "end_s": 1.0, "depth": 0},
        {"key": XSS, "label": XSS, "state": "failed", "start_s": 0.5, "end_s": 2.0, "depth": 1},
        {"key": "never", "label": "never", "state": "blocked", "start_s": None, "end_s": None, "depth": 0},
        {"key": "nan", "label": "nan", "state": "running", "start_s": float("nan"), "end_s": 1.0, "depth": 0},
    ]
    svg = str(gantt(bars))
    assert "<script" not in svg and svg.count("data-bar=") == 2 and ">never<" in svg
    assert "gbar state-finished" in svg and "gbar state-failed" in svg


def test_timeline_bars_are_capped() -> None:
    items = [
        {"key": f"f[{i}]", "state": "succeeded", "started_offset_s": 0, "finished_offset_s": 1} for i in range(500)
    ]
    rows = [
        {"key": "f", "state": "succeeded", "depth": 0, "fanout": items, "fanout_total": 700},
        {"key": "g", "state": "succeeded", "depth": 0},
    ]
    bars, hidden = timeline_bars(rows)
    assert len(bars) == MAX_BARS and hidden == 1 + 700 + 1 - MAX_BARS
    assert bars[1]["label"] == "[0]" and bars[1]["depth"] == 1


def test_the_gateway_starts_without_the_workflow_package() -> None:
    """The Runs API imports the workflow engine (jsonschema, rich) on its first request, not at start."""
    code = (
        "import sys\n"
        "from modelyard.config.loader import parse_config\n"
        "from modelyard.server.factory import create_app\n"
        f"create_app(parse_config({MINIMAL!r} + 'access: {{master_key: sk-x}}\\n', source='x.yaml', env={{}}))\n"
        "print('modelyard.workflows' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
