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
