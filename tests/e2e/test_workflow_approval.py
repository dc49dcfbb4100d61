"""Approval steps end to end (issue 21): the code-review example with `human_review` runs as a real `modelyard
run` process against the provider simulator (through the gateway's router, `--config`), exits while its gate
waits; `runs reject --comment` continues it and the coder's next prompt carries the comment (read back from
what the simulator received); `runs approve` completes it. The simulator's request count shows every call
made once. The admin API's POST route records a decision, behind admin auth, with 404/409 for the wrong
run or step."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from modelyard.workflows import SqliteStore, Workflow
from modelyard.workflows.checkpoint import load_run
from modelyard.workflows.records import RunStatus, StepState
from modelyard.workflows.scripted import ScriptedBackend
from modelyard.workflows.spec import parse_workflow
from tests.e2e.test_workflow_cli import EXAMPLES, cli

MASTER = "sk-master-approval-test"
GATEWAY = """
deployments:
  - {{name: small, provider: openai, model: sim-small, api_base: "{sim}/v1", price: {{input: 0.1, output: 0.4}}}}
models:
  smart: {{candidates: [small]}}
  balanced: {{candidates: [small]}}
  fast: {{candidates: [small]}}
routing: {{retries: 0}}
access: {{master_key: {master}}}
spend: {{store: "sqlite:///{spend}", flush_interval_s: 0.05}}
ui: {{runs_store: {runs}}}
"""
COMMENT = "Please handle an empty list of intervals"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=21, instant=True) as server:
        yield server


def sim_requests(sim: SimServer) -> int:
    return int(httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()["totals"]["requests"])


def sim_prompts(sim: SimServer) -> list[str]:
    received = httpx.get(f"{sim.url}/_sim/requests/sim-small", timeout=10).json()["requests"]
    return [json.dumps(json.loads(r["body"])["messages"]) for r in received]


def review(sim: SimServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gw.yaml"
    if not config.exists():
        text = GATEWAY.format(sim=sim.url, master=MASTER, spend=tmp_path / "spend.db", runs=tmp_path / "runs.db")
        config.write_text(text)
    return cli(*args, "--store", str(tmp_path / "runs.db"), "--config", str(config), "--no-progress", simulator=True)


def test_the_code_review_gate_waits_is_rejected_with_a_comment_then_approved(sim: SimServer, tmp_path: Path) -> None:
    before = sim_requests(sim)
    example = str(EXAMPLES / "code_review.yaml")
    first = review(sim, tmp_path, "run", example, "-i", "human_review=true", "--run-id", "cr-1")
    assert first.returncode == 3, first.stdout + first.stderr  # the process exits while the gate waits
    assert "status: waiting" in first.stdout
    assert "approve: modelyard runs approve cr-1 build#1.review_gate" in first.stdout
    assert sim_requests(sim) - before == 3  # architect, code, review

    listed = cli("runs", "list", "--waiting", "--store", str(tmp_path / "runs.db"))
    assert "cr-1" in listed.stdout and "waiting" in listed.stdout
    shown = cli("runs", "show", "cr-1", "--store", str(tmp_path / "runs.db"))
    assert "waiting for approval: build#1.review_gate: Merge this code?" in shown.stdout

    rejected = review(sim, tmp_path, "runs", "reject", "cr-1", "build#1.review_gate", "--comment", COMMENT)
    assert rejected.returncode == 3, rejected.stdout + rejected.stderr  # round 2 waits at its own gate
    assert "rejected step build#1.review_gate of run cr-1" in rejected.stdout
    assert sim_requests(sim) - before == 5  # round 2's code and review only: round 1 was reused, not paid
    coder = [p for p in sim_prompts(sim) if "careful Python developer" in p]
    assert COMMENT in coder[-1] and COMMENT not in coder[0]  # the coder read the reviewer's words

    again = review(sim, tmp_path, "runs", "reject", "cr-1", "build#1.review_gate", "--comment", "twice")
    assert again.returncode == 2 and "error: step 'build#1.review_gate' of run cr-1 was already decided" in again.stderr
    unknown = review(sim, tmp_path, "runs", "approve", "cr-1", "nope")
    assert unknown.returncode == 2 and "error: run cr-1 has no step 'nope'" in unknown.stderr
    not_waiting = review(sim, tmp_path, "runs", "approve", "cr-1", "architect")
    assert not_waiting.returncode == 2 and "is not waiting for approval" in not_waiting.stderr
    assert "Traceback" not in again.stderr + unknown.stderr + not_waiting.stderr

    approved = review(sim, tmp_path, "runs", "approve", "cr-1", "build#2.review_gate", "--comment", "ship it")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "status: succeeded" in approved.stdout
    assert sim_requests(sim) - before == 5  # completing the run called nothing again
    decisions = cli("runs", "show", "cr-1", "--store", str(tmp_path / "runs.db")).stdout
    assert "decision: build#1.review_gate rejected by cli:" in decisions and COMMENT in decisions
    assert "decision: build#2.review_gate approved by cli:" in decisions and "waiting for approval" not in decisions

    store = SqliteStore(tmp_path / "runs.db")
    try:
        final = load_run(store, "cr-1")
        finished = [e.key for e in store.events("cr-1") if e.kind == "step_finished" and e.cost_usd > 0]
    finally:
        store.close()
    assert final is not None and final.status is RunStatus.SUCCEEDED and final.sessions == 3
    assert sorted(k or "" for k in finished) == [
        "architect",
        "build#1.code",
        "build#1.review",
        "build#2.code",
        "build#2.review",
    ]
    leaves = [r for r in final.records.values() if r.is_leaf]
    assert final.cost_usd == pytest.approx(sum(r.cost_usd for r in leaves))  # each call paid exactly once
    gate = final.records["build#2.review_gate"].output
    assert gate["approved"] is True and gate["comment"] == "ship it" and gate["decided_by"].startswith("cli")


# --------------------------------------------------------------------------- the admin API

GATED = """
schema: modelyard.workflow/v1
name: gated
steps:
  draft: {model: m, prompt: "Write."}
  gate: {needs: [draft], approve: {prompt: "OK?", show: "{{ draft }}"}}
  ship: {model: m, needs: [gate], prompt: "{{ gate.comment }}"}
"""


def post(url: str, path: str, body: Any = None, auth: str | None = MASTER, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {auth}"} if auth is not None else {}
    if raw is not None:
        return httpx.post(url + path, content=raw, headers=headers, timeout=30)
    return httpx.post(url + path, json=body, headers=headers, timeout=30)


def test_the_admin_api_records_a_decision_behind_admin_auth(sim: SimServer, tmp_path: Path) -> None:
    runs = tmp_path / "runs.db"
    store = SqliteStore(runs)
    try:
        waiting = asyncio.run(
            Workflow(parse_workflow(GATED, "gated.yaml")).run(backend=ScriptedBackend(), store=store, run_id="api-1")
        )
    finally:
        store.close()
    assert waiting.status is RunStatus.WAITING
    text = GATEWAY.format(sim=sim.url, master=MASTER, spend=tmp_path / "spend.db", runs=runs)
    path = "/admin/runs/api-1/steps/gate/reject"
    with BackgroundServer(create_app(parse_config(text, source=str(tmp_path / "gw.yaml"), env={}))) as server:
        url = server.url
        assert post(url, path, {"comment": "x"}, auth=None).status_code == 401
        assert post(url, path, {"comment": "x"}, auth="sk-wrong").status_code in (401, 403)
        assert post(url, "/admin/runs/nope/steps/gate/approve", {}).status_code == 404
        assert post(url, "/admin/runs/api-1/steps/nope/approve", {}).status_code == 404
        assert post(url, "/admin/runs/api-1/steps/draft/approve", {}).status_code == 409
        bad = post(url, path, {"comment": 5})
        assert bad.status_code == 400 and "error" in bad.json()
        assert post(url, path, {"comment": "x", "extra": 1}).status_code == 400
        assert post(url, path, raw=b"{not json").status_code == 400
        assert post(url, path, raw=b'{"comment": "' + b"x" * 70_000 + b'"}').status_code == 413
        decided = post(url, path, {"comment": "Shorter, please"})
        assert decided.status_code == 200, decided.text
        data = decided.json()
        assert data["approved"] is False and data["comment"] == "Shorter, please" and data["step"] == "gate"
        assert data["decided_by"] == "admin:master" and "modelyard run --resume api-1" in data["resume"]
        twice = post(url, "/admin/runs/api-1/steps/gate/approve", {})
        assert twice.status_code == 409 and twice.json()["error"]["code"] == "already_decided"
    store = SqliteStore(runs)
    try:
        assert store.decisions("api-1")["gate"]["comment"] == "Shorter, please"
        stored = load_run(store, "api-1")
        assert stored is not None and stored.records["gate"].state is StepState.WAITING  # until resumed
    finally:
        store.close()
