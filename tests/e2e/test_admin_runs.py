"""Workflow runs in the dashboard (#16 item 5), against the real server over the simulator: a workflow with a
fan-out, a failing step and a skipped one runs through the gateway's own router into a temporary run store;
the gateway (`ui.runs_store`) lists it and shows it (JSON and pages), reading the store read-only; a store
written by hand with hostile step names and models shows them as text."""

from __future__ import annotations

import asyncio
import html
import http.client
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from markupsafe import escape

from modelyard.config.loader import parse_config
from modelyard.routing.router import Router
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from modelyard.workflows import SqliteStore, Workflow
from modelyard.workflows.checkpoint import RunHeader, session_marker
from modelyard.workflows.inprocess import GatewayBackend
from modelyard.workflows.records import StepRecord, StepState
from modelyard.workflows.spec import parse_workflow

MASTER = "sk-master-runs-test"
XSS = "<script>alert('x')</script>"
CONFIG = """
deployments:
  - {{name: quick, provider: openai, model: sim-small, api_base: "{sim}/v1", headers: {{x-sim-ttft-ms: "40"}},
     price: {{input: 0.1, output: 0.4}}}}
  - {{name: down, provider: openai, model: sim-small, api_base: "{sim}/v1", headers: {{x-sim-fault: unavailable}},
     price: {{input: 0.1, output: 0.4}}}}
models:
  fast: {{candidates: [quick]}}
  broken: {{candidates: [down]}}
routing: {{retries: 0, breaker: {{failures: 1000}}}}
access: {{master_key: {master}}}
spend: {{store: "sqlite:///{spend}", flush_interval_s: 0.05}}
ui: {{runs_store: {runs}}}
"""
WORKFLOW = """
schema: modelyard.workflow/v1
name: ui-runs
steps:
  plan: {model: fast, prompt: "List three topics."}
  fan: {model: fast, needs: [plan], foreach: [alpha, beta, gamma], prompt: "Write on {{ item }}. {{ plan }}"}
  broken: {model: broken, needs: [plan], retries: 0, prompt: "This fails. {{ plan }}"}
  merge: {model: fast, needs: [fan, broken], prompt: "{{ fan }} {{ broken }}"}
  maybe: {model: fast, needs: [plan], when: false, prompt: "Never. {{ plan }}"}
"""
RUN_ID = "ui-run-1"
HOSTILE_ID = "ui-run-xss"
LIVE_ID = "ui-run-live"


class Served:
    def __init__(self, url: str, runs: Path) -> None:
        self.url = url
        self.runs = runs
        self.admin_key = ""
        self.plain_key = ""


def _run_workflow(config_text: str, store: Path) -> None:
    async def go() -> None:
        router = Router(parse_config(config_text, source="runs.yaml", env={}))
        async with router:
            runs = SqliteStore(store)
            try:
                spec = parse_workflow(WORKFLOW, "ui-runs.yaml")
                await Workflow(spec).run(backend=GatewayBackend(router), store=runs, run_id=RUN_ID)
            finally:
                runs.close()

    asyncio.run(go())


def _hostile_run(store: Path) -> None:
    """A run whose step key and model are markup (a store file is another process's data, never trusted)."""
    runs = SqliteStore(store)
    try:
        now = time.time()
        header = RunHeader(HOSTILE_ID, f"wf{XSS}", "x.yaml", "", {}, now - 5, {XSS: [], "after": [XSS]})
        runs.create_run(header)
        runs.append(HOSTILE_ID, "run_started", None, {"pid": -1, "host": "elsewhere"})
        bad = StepRecord(XSS, XSS, "model", StepState.FAILED, model=f"m{XSS}", error=f"boom {XSS}")
        bad.started_at, bad.finished_at = now - 4, now - 3
        runs.append(HOSTILE_ID, "step_failed", XSS, {"record": bad.to_dict()})
        runs.append(HOSTILE_ID, "run_finished", None, {"status": "failed", "errors": [XSS]})
    finally:
        runs.close()


def raw_get(url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """A GET whose path goes out exactly as written (httpx would resolve `..` segments first)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _live_run(store: Path) -> None:
    """A run in progress in this very process: its first step running, the second not started."""
    runs = SqliteStore(store)
    try:
        now = time.time()
        runs.create_run(RunHeader(LIVE_ID, "live", "x.yaml", "", {}, now - 3600, {"a": [], "b": ["a"]}))
        runs.append(LIVE_ID, "run_started", None, session_marker())
        started = StepRecord("a", "a", "model", StepState.RUNNING, model="fast")
        started.started_at = now - 1
        runs.append(LIVE_ID, "step_started", "a", {"record": started.to_dict()})
    finally:
        runs.close()


def admin(url: str, path: str, auth: str | None = MASTER, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {auth}"} if auth is not None else {}
    return httpx.get(url + path, params=params, headers=headers, timeout=30)


def new_key(url: str, name: str, **extra: Any) -> str:
    response = httpx.post(
        url + "/admin/keys", json={"name": name, **extra}, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    key: str = response.json()["key"]
    return key


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("runs")
    runs = folder / "runs.db"
    with SimServer(seed=3, instant=True) as sim:
        text = CONFIG.format(sim=sim.url, master=MASTER, spend=folder / "spend.db", runs=runs)
        _run_workflow(text, runs)
        _hostile_run(runs)
        _live_run(runs)
        with BackgroundServer(create_app(parse_config(text, source=str(folder / "gw.yaml"), env={}))) as server:
            served = Served(server.url, runs)
            served.admin_key = new_key(server.url, "ops", metadata={"role": "admin"})
            served.plain_key = new_key(server.url, "app")
            yield served


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        form = client.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert token is not None
        answer = client.post("/ui/login", data={"key": MASTER, "login_token": token.group(1), "next": "/ui/"})
        assert answer.status_code == 303 and "modelyard_ui" in client.cookies
        yield client


# --------------------------------------------------------------------------- the JSON API


@pytest.mark.parametrize("path", ["/admin/runs", f"/admin/runs/{RUN_ID}"])
def test_the_endpoints_need_the_master_key_or_an_admin_key(served: Served, path: str) -> None:
    assert admin(served.url, path, auth=None).status_code == 401
    assert admin(served.url, path, auth=served.plain_key).status_code == 401
    assert admin(served.url, path).status_code == 200
    assert admin(served.url, path, auth=served.admin_key).status_code == 200


def test_the_list_has_the_run(served: Served) -> None:
    body = admin(served.url, "/admin/runs").json()
    assert body["object"] == "list"
    runs = {row["run_id"]: row for row in body["data"]}
    assert set(runs) == {RUN_ID, HOSTILE_ID, LIVE_ID} and runs[LIVE_ID]["status"] == "running"
    assert body["data"][0]["run_id"] == RUN_ID  # newest first
    run = runs[RUN_ID]
    assert run["workflow"] == "ui-runs" and run["status"] == "partial" and run["steps"] == 5
    assert run["steps_done"] == 4 and run["cost_usd"] > 0  # plan + three items; broken failed, merge blocked
    assert run["created_at"] <= run["updated_at"]
    assert [r["run_id"] for r in admin(served.url, "/admin/runs", limit=1).json()["data"]] == [RUN_ID]


@pytest.mark.parametrize("limit", ["0", "201", "-1", "x", "1e3", "9999999"])
def test_a_bad_limit_is_400(served: Served, limit: str) -> None:
    response = admin(served.url, "/admin/runs", limit=limit)
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"


def test_one_run_has_every_step_with_its_state_timing_and_items(served: Served) -> None:
    body = admin(served.url, f"/admin/runs/{RUN_ID}").json()
    assert body["run_id"] == RUN_ID and body["status"] == "partial"
    steps = {s["key"]: s for s in body["steps"]}
    states = {key: s["state"] for key, s in steps.items()}
    assert states == {
        "plan": "succeeded",
        "fan": "succeeded",
        "fan[0]": "succeeded",
        "fan[1]": "succeeded",
        "fan[2]": "succeeded",
        "broken": "failed",
        "merge": "blocked",
        "maybe": "skipped",
    }
    plan, fan, broken = steps["plan"], steps["fan"], steps["broken"]
    assert plan["deployment"] == "quick" and plan["served_model"] and plan["prompt_tokens"] > 0
    assert plan["cost_usd"] > 0 and plan["started_offset_s"] == pytest.approx(0, abs=1e-3)
    assert plan["duration_s"] == pytest.approx(plan["finished_offset_s"] - plan["started_offset_s"], abs=1e-6)
    assert broken["error"] and broken["parent"] is None
    assert fan["fanout_total"] == 3 and [i["key"] for i in fan["fanout"]] == ["fan[0]", "fan[1]", "fan[2]"]
    for item in fan["fanout"]:
        assert item["started_offset_s"] >= plan["finished_offset_s"] - 1e-3
        assert item["duration_s"] > 0 and item["deployment"] == "quick" and item["cost_usd"] > 0
        assert steps[item["key"]]["parent"] == "fan"
    nodes = {n["id"]: n["state"] for n in body["dag"]["nodes"]}
    assert nodes == {
        "plan": "succeeded",
        "fan": "succeeded",
        "broken": "failed",
        "merge": "blocked",
        "maybe": "skipped",
    }
    edges = {(e["from"], e["to"]) for e in body["dag"]["edges"]}
    assert edges == {("plan", "fan"), ("plan", "broken"), ("fan", "merge"), ("broken", "merge"), ("plan", "maybe")}
    summary = body["summary"]
    assert summary["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in body["steps"] if s["kind"] == "model"))
    assert summary["context_tokens_full"] >= summary["context_tokens_sent"] > 0
    assert summary["context_tokens_saved"] == summary["context_tokens_full"] - summary["context_tokens_sent"]
    assert body["totals"]["cost_usd"] == summary["cost_usd"]  # `runs show --json`'s figures are all there
    assert body["resume"] == f"modelyard run --resume {RUN_ID} --store {served.runs}"
    assert body["rows"] == ["plan", "fan", "broken", "merge", "maybe"]


@pytest.mark.parametrize("run_id", ["no-such-run", "..", "a..b", ".hidden", "x" * 129, "%2e%2e%2fx", "..%2F..%2Fetc"])
def test_an_unknown_or_malformed_id_is_404(served: Served, run_id: str) -> None:
    status, body = raw_get(served.url, f"/admin/runs/{run_id}", {"Authorization": f"Bearer {MASTER}"})
    assert status in (400, 404), body
    assert "error" in json.loads(body)


def test_the_store_is_read_only_to_the_gateway(served: Served) -> None:
    """The gateway's reads leave the file as it was and never hold a lock: a writer commits while pages load."""
    before = served.runs.stat().st_mtime_ns
    for _ in range(3):
        assert admin(served.url, "/admin/runs").status_code == 200
    assert served.runs.stat().st_mtime_ns == before
    db = sqlite3.connect(served.runs, timeout=0.5)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    finally:
        db.close()


# --------------------------------------------------------------------------- the pages


def test_the_runs_page(browser: httpx.Client) -> None:
    page = browser.get("/ui/runs")
    assert page.status_code == 200
    text = page.text
    assert text.count("<h1>") == 1 and "<h1>Runs</h1>" in text and 'id="runs"' in text
    row = re.search(rf'<tr data-run-id="{RUN_ID}">(.*?)</tr>', text, re.S)
    assert row is not None and 'class="badge cancelled">partial<' in row.group(1)
    assert f'href="/ui/runs/{RUN_ID}"' in row.group(1)
    assert browser.get("/ui/runs", params={"limit": "0"}).status_code == 400


def test_the_run_page_shows_the_graph_the_timeline_and_the_steps(browser: httpx.Client, served: Served) -> None:
    page = browser.get(f"/ui/runs/{RUN_ID}")
    assert page.status_code == 200
    text = page.text
    assert text.count("<h1>") == 1 and f"<h1>Run {RUN_ID}</h1>" in text
    dag = re.search(r'<figure id="dag".*?</figure>', text, re.S)
    assert dag is not None
    node = re.search(r'<g class="node" data-node="broken" data-state="failed">.*?</g>', dag.group(0), re.S)
    assert node is not None and 'class="state-failed"' in node.group(0)
    assert re.search(r'data-node="plan" data-state="succeeded">.*?class="state-finished"', dag.group(0), re.S)
    assert re.search(r'data-node="maybe" data-state="skipped">.*?class="state-skipped"', dag.group(0), re.S)
    assert dag.group(0).count('class="edge"') == 5
    timeline = re.search(r'<figure id="timeline".*?</figure>', text, re.S)
    assert timeline is not None
    bars = re.findall(r'data-bar="([^"]+)"', timeline.group(0))
    # one bar per step that ran (plan, fan, broken) and per fan-out item; blocked and skipped steps never ran
    assert sorted(bars) == ["broken", "fan", "fan[0]", "fan[1]", "fan[2]", "plan"]
    steps = dict(re.findall(r'<tr data-step="([^"]+)">(.*?)</tr>', text, re.S))
    assert list(steps) == ["plan", "fan", "broken", "merge", "maybe"]
    assert ">failed<" in steps["broken"] and ">blocked<" in steps["merge"] and "quick" in steps["plan"]
    resume = re.search(r'<code id="resume">([^<]*)</code>', text)
    assert resume is not None and html.unescape(resume.group(1)) == (
        f"modelyard run --resume {RUN_ID} --store {served.runs}"
    )


def test_markup_in_a_store_is_shown_as_text(browser: httpx.Client, served: Served) -> None:
    escaped = str(escape(XSS))
    for path in ("/ui/runs", f"/ui/runs/{HOSTILE_ID}"):
        text = browser.get(path).text
        assert XSS not in text and "<script>alert" not in text
        assert escaped in text
    text = browser.get(f"/ui/runs/{HOSTILE_ID}").text
    dag = re.search(r'<figure id="dag".*?</figure>', text, re.S)
    assert dag is not None and "&lt;script&gt;" in dag.group(0) and "<script" not in dag.group(0)
    assert 'data-step="&lt;script&gt;' in text
    after = re.search(r'<tr data-step="after">(.*?)</tr>', text, re.S)  # never started: listed as pending
    assert after is not None and 'class="badge pending">pending<' in after.group(1)
    body = admin(served.url, f"/admin/runs/{HOSTILE_ID}").json()
    assert body["steps"][0]["key"] == XSS  # the API gives the data as it is; the page escapes it


def test_unknown_runs_and_bad_ids_on_the_pages(browser: httpx.Client) -> None:
    assert browser.get("/ui/runs/no-such-run").status_code == 404
    cookie = "; ".join(f"{name}={value}" for name, value in browser.cookies.items())
    for path in ("/ui/runs/..", "/ui/runs/a..b", "/ui/runs/%2e%2e%2f%2e%2e%2fetc", "/ui/runs/..%2Fx"):
        status, body = raw_get(str(browser.base_url).rstrip("/"), path, {"Cookie": cookie})
        assert status in (400, 404), (path, status)
        assert b"Traceback" not in body


def test_pages_need_a_session(served: Served) -> None:
    for path in ("/ui/runs", f"/ui/runs/{RUN_ID}"):
        response = httpx.get(served.url + path, timeout=30)
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/login")


# --------------------------------------------------------------------------- no store


def test_a_missing_store_is_an_empty_list(tmp_path: Path) -> None:
    text = CONFIG.format(sim="http://127.0.0.1:9", master=MASTER, spend=tmp_path / "s.db", runs="nothing/runs.db")
    config = parse_config(text, source=str(tmp_path / "gw.yaml"), env={})
    with BackgroundServer(create_app(config)) as server:
        body = admin(server.url, "/admin/runs").json()
        assert body == {"object": "list", "data": []}
        assert admin(server.url, f"/admin/runs/{RUN_ID}").status_code == 404
    assert not (tmp_path / "nothing").exists()  # the gateway created nothing


def test_a_running_run_refreshes_itself(browser: httpx.Client) -> None:
    listing = browser.get("/ui/runs").text
    assert 'data-refresh="' in listing
    row = re.search(rf'<tr data-run-id="{LIVE_ID}">(.*?)</tr>', listing, re.S)
    assert row is not None and 'class="badge running">running<' in row.group(1)
    text = browser.get(f"/ui/runs/{LIVE_ID}").text
    assert 'data-refresh="' in text
    assert re.search(r'data-node="a" data-state="running">.*?class="state-running"', text, re.S)
    assert re.search(r'data-node="b" data-state="pending">.*?class="state-pending"', text, re.S)
    assert 'data-refresh="' not in browser.get(f"/ui/runs/{RUN_ID}").text
