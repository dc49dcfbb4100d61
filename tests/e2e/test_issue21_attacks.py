"""Attacks on issue 21's decision paths with real processes: the admin decision route against a real server
(no key, a non-admin key, hostile paths and bodies, a gate inside a sub-workflow addressed as `review%2Fgate`,
a name two fanned-out gates share, a run that lives in another store) and two decisions racing from two
`modelyard runs approve|reject` processes and two HTTP clients at once: exactly one wins, the other is told so."""

from __future__ import annotations

import asyncio
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.workflows import SqliteStore, Workflow
from modelyard.workflows.records import RunStatus
from modelyard.workflows.scripted import ScriptedBackend
from modelyard.workflows.spec import parse_workflow
from tests.e2e.test_workflow_cli import CLI, ROOT, env

MASTER = "sk-master-issue21-attacks"
GATEWAY = """
deployments:
  - {{name: small, provider: openai, model: sim-small, api_base: "http://127.0.0.1:9/v1",
     price: {{input: 1, output: 1}}}}
models:
  m: {{candidates: [small]}}
access: {{master_key: {master}}}
ui: {{runs_store: {runs}}}
"""
HEADER = "schema: modelyard.workflow/v1\nname: {name}\n"
CHILD = HEADER.format(name="child") + "steps:\n  gate: {approve: {prompt: 'ok?'}}\n"
PARENT = HEADER.format(name="parent") + (
    "steps:\n"
    "  draft: {model: m, prompt: Write.}\n"
    "  review: {needs: [draft], workflow: child.yaml}\n"
    '  fan: {needs: [draft], foreach: "{{ [1, 2] }}", workflow: child.yaml}\n'
    "  lp:\n"
    "    loop:\n"
    "      max_iterations: 2\n"
    "      steps:\n"
    "        gate: {approve: {prompt: 'round ok?'}}\n"
)
GATED = HEADER.format(name="gated") + "steps:\n  gate: {approve: {prompt: 'OK?'}}\n"


def waiting_run(directory: Path, store: Path, run_id: str, text: str = PARENT) -> None:
    (directory / "child.yaml").write_text(CHILD, encoding="utf-8")
    source = directory / f"{run_id}.yaml"
    source.write_text(text, encoding="utf-8")
    runs = SqliteStore(store)
    try:
        spec = parse_workflow(text, str(source))
        result = asyncio.run(Workflow(spec).run(backend=ScriptedBackend(), store=runs, run_id=run_id))
    finally:
        runs.close()
    assert result.status is RunStatus.WAITING


def post(
    url: str, path: str, *, auth: str | None = MASTER, body: Any = None, raw: bytes | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {auth}"} if auth is not None else {}
    if raw is not None:
        return httpx.post(url + path, content=raw, headers=headers, timeout=30)
    return httpx.post(url + path, json={} if body is None else body, headers=headers, timeout=30)


@pytest.fixture
def gateway(tmp_path: Path) -> Any:
    runs = tmp_path / "runs.db"
    waiting_run(tmp_path, runs, "r1")
    config = parse_config(GATEWAY.format(master=MASTER, runs=runs), source=str(tmp_path / "gw.yaml"), env={})
    with BackgroundServer(create_app(config)) as server:
        yield server.url


def test_hostile_decisions_get_clear_errors_and_nested_gates_can_be_decided(gateway: str, tmp_path: Path) -> None:
    url = gateway
    made = post(url, "/admin/keys", body={"name": "plain-user"})
    assert made.status_code == 200, made.text
    plain = str(made.json()["key"])
    gate = "/admin/runs/r1/steps/review%2Fgate/approve"
    assert post(url, gate, auth=None).status_code == 401
    assert post(url, gate, auth="sk-wrong").status_code in (401, 403)
    assert post(url, gate, auth=plain).status_code in (401, 403)  # a virtual key without role admin
    for raw in (b'{"comment": NaN}', b'{"comment": 1e999}', b"\xff\xfe\x00", b'{"comment": "\xff"}', b"[" * 5000):
        answer = post(url, gate, raw=raw)
        assert answer.status_code == 400 and "error" in answer.json(), (raw[:20], answer.text)
    assert post(url, gate, raw=b"[" * 100_000).status_code == 413
    assert post(url, gate, body={"comment": "x", "evil": 1}).status_code == 400
    for step in ("..%2F..%2Fetc", "ga%00te", "a" * 10_000, "%ff", "review%2F..%2Fgate"):
        answer = post(url, f"/admin/runs/r1/steps/{step}/approve")
        assert answer.status_code == 404 and "error" in answer.json(), (step[:20], answer.text)
    assert post(url, "/admin/runs/..%2Fr1/steps/gate/approve").status_code == 404
    assert post(url, "/admin/runs/other-run/steps/gate/approve").status_code == 404  # another store's run

    ambiguous = post(url, "/admin/runs/r1/steps/gate/approve")  # review/gate, fan[0]/gate, fan[1]/gate, lp#1.gate
    assert ambiguous.status_code == 409 and ambiguous.json()["error"]["code"] == "ambiguous_step"
    for key in ("review%2Fgate", "fan%5B1%5D%2Fgate", "lp%231.gate"):
        decided = post(url, f"/admin/runs/r1/steps/{key}/reject", body={"comment": "a\u0000b <script>"})
        assert decided.status_code == 200, (key, decided.text)
    assert decided.json()["step"] == "lp#1.gate"
    twice = post(url, gate)
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "already_decided"
    store = SqliteStore(tmp_path / "runs.db")
    try:
        assert set(store.decisions("r1")) == {"review/gate", "fan[1]/gate", "lp#1.gate"}
    finally:
        store.close()


def test_two_http_decisions_at_once_one_wins(gateway: str) -> None:
    paths = ["/admin/runs/r1/steps/review%2Fgate/approve", "/admin/runs/r1/steps/review%2Fgate/reject"] * 4
    with ThreadPoolExecutor(len(paths)) as pool:
        answers = list(pool.map(lambda p: post(gateway, p, body={"comment": p[-6:]}), paths))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * (len(paths) - 1), [a.text for a in answers]
    assert all(a.json()["error"]["code"] == "already_decided" for a in answers if a.status_code == 409)


@pytest.mark.parametrize("attempt", range(3))
def test_two_cli_processes_deciding_at_once_one_wins(tmp_path: Path, attempt: int) -> None:
    runs = tmp_path / "runs.db"
    waiting_run(tmp_path, runs, "race", GATED)
    verbs = ("approve", "reject", "approve", "reject")
    procs = [
        subprocess.Popen(
            [*CLI, "runs", verb, "race", "gate", "--no-resume", "--comment", f"{verb}-{i}", "--store", str(runs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=ROOT,
        )
        for i, verb in enumerate(verbs)
    ]
    outcomes = [
        (p.wait(timeout=120), p.stdout.read() if p.stdout else "", p.stderr.read() if p.stderr else "") for p in procs
    ]
    winners = [o for o in outcomes if o[0] == 0]
    losers = [o for o in outcomes if o[0] != 0]
    assert len(winners) == 1, outcomes
    assert all(rc == 2 and "error: step 'gate' of run race was already decided" in err for rc, _, err in losers), (
        outcomes
    )
    assert all("Traceback" not in out + err for _, out, err in outcomes)
    store = SqliteStore(runs)
    try:
        held = store.decisions("race")["gate"]
    finally:
        store.close()
    verdict = "approved" if held["approved"] else "rejected"
    assert f"{verdict} step gate of run race" in winners[0][1] and held["comment"] in {
        f"{v}-{i}" for i, v in enumerate(verbs)
    }


# --------------------------------------------------------------------------- kill -9 at the new pause points

LOOP_CHILD = HEADER.format(name="inner") + (
    "inputs: {n: {type: integer}}\n"
    "steps:\n"
    "  a: {model: m, prompt: 'a {{ inputs.n }}'}\n"
    "  b: {model: m, needs: [a], prompt: 'b {{ a }}'}\n"
)
SUB_IN_LOOP = HEADER.format(name="subloop") + (
    "steps:\n"
    "  lp:\n"
    "    loop:\n"
    "      max_iterations: 2\n"
    "      steps:\n"
    "        sub: {workflow: inner.yaml, inputs: {n: '{{ iteration.index }}'}}\n"
    "  last: {model: m, needs: [lp], prompt: '{{ lp.sub.b }}'}\n"
)
SUB_FANNED = HEADER.format(name="subfan") + (
    "steps:\n"
    "  fan: {foreach: '{{ [0, 1, 2, 3] }}', max_parallel: 1, workflow: inner.yaml, inputs: {n: '{{ item }}'}}\n"
    "  last: {model: m, needs: [fan], prompt: '{{ fan | length }}'}\n"
)
AFTER_GATE = HEADER.format(name="aftergate") + (
    "steps:\n"
    "  draft: {model: m, prompt: Write.}\n"
    "  gate: {needs: [draft], approve: {prompt: 'OK?'}}\n"
    "  ship: {model: m, needs: [gate], prompt: '{{ gate.comment }}'}\n"
)


def _log(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cli_env(log: Path, delays: dict[str, float]) -> dict[str, str]:
    import json

    return env(MODELYARD_SCRIPTED_LOG=str(log), MODELYARD_SCRIPTED_DELAYS=json.dumps(delays))


def _kill_when_started(args: list[str], log: Path, slow_key: str) -> None:
    """Start the CLI, wait until the call at `slow_key` is in flight, kill -9 it."""
    import os
    import signal
    import time

    process = subprocess.Popen(
        [*CLI, *args], cwd=ROOT, env=_cli_env(log, {slow_key: 120}), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "started" and e["step"] == slow_key for e in _log(log)):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the slow call never started"
            time.sleep(0.05)
        time.sleep(0.3)  # let the store's group commit write what finished before the slow call
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(
    ("text", "slow_key", "leaves"),
    [
        (SUB_IN_LOOP, "lp#1.sub/b", ["lp#1.sub/a", "lp#1.sub/b", "lp#2.sub/a", "lp#2.sub/b", "last"]),
        (SUB_FANNED, "fan[2]/a", [f"fan[{i}]/{s}" for i in range(4) for s in "ab"] + ["last"]),
    ],
    ids=["sub-workflow-in-a-loop", "fan-out-of-a-sub-workflow"],
)
def test_kill_9_inside_nested_sub_workflows_then_resume_pays_nothing_twice(
    tmp_path: Path, text: str, slow_key: str, leaves: list[str]
) -> None:
    (tmp_path / "inner.yaml").write_text(LOOP_CHILD, encoding="utf-8")
    source = tmp_path / "wf.yaml"
    source.write_text(text, encoding="utf-8")
    db, first, second = tmp_path / "runs.db", tmp_path / "first.log", tmp_path / "second.log"
    _kill_when_started(["run", str(source), "--store", str(db), "--run-id", "k", "--no-progress"], first, slow_key)
    finished = {e["step"] for e in _log(first) if e["event"] == "finished"}
    assert finished and slow_key not in finished
    resumed = subprocess.run(
        [*CLI, "run", "--resume", "k", "--store", str(db), "--no-progress"],
        cwd=ROOT, env=_cli_env(second, {}), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    again = [e["step"] for e in _log(second) if e["event"] == "started"]
    assert not finished & set(again), f"called twice: {finished & set(again)}"
    assert sorted(finished | set(again)) == sorted(leaves) and len(again) == len(set(again))
    store = SqliteStore(db)
    try:
        from modelyard.workflows.checkpoint import load_run

        stored = load_run(store, "k")
    finally:
        store.close()
    assert stored is not None and stored.status is RunStatus.SUCCEEDED
    assert all(stored.records[key].state.value == "succeeded" for key in leaves)


def test_kill_9_while_runs_approve_resumes_then_resume_keeps_the_decision(tmp_path: Path) -> None:
    source = tmp_path / "gated.yaml"
    source.write_text(AFTER_GATE, encoding="utf-8")
    db, first, second, third = (tmp_path / n for n in ("runs.db", "1.log", "2.log", "3.log"))
    waited = subprocess.run(
        [*CLI, "run", str(source), "--store", str(db), "--run-id", "g", "--no-progress"],
        cwd=ROOT, env=_cli_env(first, {}), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert waited.returncode == 3, waited.stdout + waited.stderr
    # the decision is stored, then the resume it starts is killed while `ship` is in flight
    args = ["runs", "reject", "g", "gate", "--comment", "shorter", "--store", str(db), "--no-progress"]
    _kill_when_started(args, second, "ship")
    resumed = subprocess.run(
        [*CLI, "run", "--resume", "g", "--store", str(db), "--no-progress"],
        cwd=ROOT, env=_cli_env(third, {}), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    calls = [(e["step"], e["event"]) for log in (first, second, third) for e in _log(log)]
    assert calls.count(("draft", "started")) == 1 and calls.count(("ship", "finished")) == 1
    store = SqliteStore(db)
    try:
        from modelyard.workflows.checkpoint import load_run

        stored = load_run(store, "g")
        decisions = store.decisions("g")
    finally:
        store.close()
    assert stored is not None and stored.status is RunStatus.SUCCEEDED
    assert decisions["gate"]["comment"] == "shorter" and stored.records["gate"].output["approved"] is False


REPAIR_SCRIPT = """
import asyncio, os, signal, sys
from modelyard.workflows import SqliteStore, Workflow
from modelyard.workflows.scripted import ScriptedBackend
from modelyard.workflows.spec import parse_workflow

class DiesAfterTheRepairIsLogged(SqliteStore):
    def append(self, run_id, kind, key, data, cost_usd=0.0):
        super().append(run_id, kind, key, data, cost_usd)
        if kind == "step_finished" and data.get("record", {}).get("repaired"):
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)

backend = ScriptedBackend(answers={"a": ["not json", '{"x": 1}']})
spec = parse_workflow(sys.argv[2], "typed.yaml")
asyncio.run(Workflow(spec).run(backend=backend, store=DiesAfterTheRepairIsLogged(sys.argv[1]), run_id="t"))
"""
TYPED = HEADER.format(name="typed") + (
    "steps:\n"
    "  a: {model: m, prompt: p}\n"
    "outputs:\n"
    "  result: {value: '{{ a }}', schema: {type: object, required: [x], properties: {x: {type: integer}}}}\n"
)


def test_kill_9_after_a_typed_outputs_repair_then_resume_does_not_repair_again(tmp_path: Path) -> None:
    import sys

    from modelyard.workflows.api import resume_run
    from modelyard.workflows.checkpoint import load_run

    db = tmp_path / "runs.db"
    killed = subprocess.run(
        [sys.executable, "-c", REPAIR_SCRIPT, str(db), TYPED], cwd=ROOT, env=env(), capture_output=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr
    store = SqliteStore(db)
    try:
        crashed = load_run(store, "t")
        assert crashed is not None and crashed.records["a"].repaired  # the repair was paid and logged
        backend = ScriptedBackend(answers={"a": ['{"x": 2}', '{"x": 3}']})
        resumed = asyncio.run(resume_run("t", backend=backend, store=store))
    finally:
        store.close()
    assert resumed.status is RunStatus.SUCCEEDED
    assert backend.calls == []  # the paid repair is reused, not bought again
    assert resumed.outputs["result"] == {"x": 1}  # the value that was paid for


def _broken_gateway(mode: str) -> Any:
    """A loopback 'gateway' whose chat stream sends two deltas, then an error event or a dropped connection."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for word in ("alpha ", "beta "):
                chunk = {"model": "m", "choices": [{"index": 0, "delta": {"content": word}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            if mode == "error":
                self.wfile.write(b'data: {"error": {"message": "upstream fell over"}}\n\n')
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("mode", ["error", "dropped"])
def test_run_stream_against_a_gateway_that_breaks_mid_stream_fails_the_step_in_one_line(
    tmp_path: Path, mode: str
) -> None:
    source = tmp_path / "one.yaml"
    source.write_text(HEADER.format(name="one") + "steps:\n  a: {model: m, prompt: p, retries: 1}\n", encoding="utf-8")
    server = _broken_gateway(mode)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        args = [
            "run",
            str(source),
            "--stream",
            "--gateway-url",
            url,
            "--store",
            str(tmp_path / "r.db"),
            "--no-progress",
        ]
        done = subprocess.run(
            [*CLI, *args], cwd=ROOT, env=env(simulator=True), capture_output=True, text=True, timeout=120
        )
    finally:
        server.shutdown()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "[a] alpha" in done.stdout or "alpha" in done.stdout  # what arrived was shown
    assert "status: failed" in done.stdout
    assert ("upstream fell over" if mode == "error" else "ended before [DONE]") in done.stdout + done.stderr


BRANCHED = HEADER.format(name="branched") + (
    "steps:\n"
    "  gate: {approve: {prompt: 'OK?'}}\n"
    "  slow: {model: m, prompt: slow}\n"
    "  ship: {model: m, needs: [gate, slow], prompt: '{{ gate.comment }}'}\n"
)


def test_deciding_while_the_run_still_runs_stores_the_decision_and_resumes_nothing_twice(tmp_path: Path) -> None:
    """The gate waits while `slow` is in flight in the first process: `runs approve` (which would resume)
    stores the decision but does not start a second session beside the live one; the first process ends
    waiting, and `run --resume` completes the run with the stored decision, calling `slow` once."""
    import time

    source = tmp_path / "branched.yaml"
    source.write_text(BRANCHED, encoding="utf-8")
    db, first, second, third = (tmp_path / n for n in ("runs.db", "1.log", "2.log", "3.log"))
    process = subprocess.Popen(
        [*CLI, "run", str(source), "--store", str(db), "--run-id", "live", "--no-progress"],
        cwd=ROOT, env=_cli_env(first, {"slow": 4}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "started" for e in _log(first)):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # the gate's waiting record reaches the store
        decided = subprocess.run(
            [*CLI, "runs", "approve", "live", "gate", "--comment", "go", "--store", str(db), "--no-progress"],
            cwd=ROOT, env=_cli_env(second, {}), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert process.poll() is None, "the first process ended before the decision"
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert decided.returncode == 0, decided.stdout + decided.stderr
    assert "approved step gate of run live" in decided.stdout and "not resumed now" in decided.stdout
    assert _log(second) == []  # no second session beside the live one
    assert process.returncode == 3, out + err  # the first session still ends waiting: it read no decision
    resumed = subprocess.run(
        [*CLI, "run", "--resume", "live", "--store", str(db), "--no-progress"],
        cwd=ROOT, env=_cli_env(third, {}), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    calls = [e["step"] for log in (first, third) for e in _log(log) if e["event"] == "started"]
    assert sorted(calls) == ["ship", "slow"]
