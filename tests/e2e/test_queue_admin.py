"""The admission queue from the operator's side, against the real gateway (uvicorn on loopback) over the
simulator: keys made with a priority class, a cap and a queue wait (admin API and CLI), GET /admin/queues
while requests wait, and the queue's series on /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from modelyard.cli.admin import app
from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer

MASTER = "sk-master-queue-0123456789"
PROMPT = [{"role": "user", "content": "hi"}]
SLOW_MS = 1500.0


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    fleet = Fleet(models=[SimModel(name="sim-slow", ttft_ms=SLOW_MS, output_tokens=3)])
    with SimServer(fleet) as server:
        yield server


def config_text(sim: SimServer, store: Path) -> str:
    return f"""
deployments:
  - name: slow@openai
    provider: openai
    model: sim-slow
    api_base: {sim.openai_base}
    api_key: sim
    price: {{input: 1, output: 1}}
    limits: {{max_concurrency: 1}}
    timeouts: {{first_token: 30, total: 60}}
models:
  slow: {{candidates: [slow@openai]}}
access:
  master_key: {MASTER}
spend:
  store: {store}
  flush_interval_s: 0.05
"""


@pytest.fixture(scope="module")
def url(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = parse_config(config_text(sim, tmp_path_factory.mktemp("gw") / "modelyard.db"), env={})
    with BackgroundServer(create_app(config)) as server:
        yield server.url


def admin(url: str, method: str, path: str, key: str | None = MASTER, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.request(method, url + path, headers=headers, timeout=30, **kwargs)


def chat(url: str, key: str, **headers: str) -> httpx.Response:
    body = {"model": "slow", "messages": PROMPT}
    return httpx.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=30
    )


def in_background(call: Any) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def until(check: Any, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def series(url: str, family: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return {tuple(sorted(s.labels.items())): s.value for s in families[family].samples if s.name == name}


# --------------------------------------------------------------------------- GET /admin/queues


def test_queues_needs_the_master_key(url: str) -> None:
    assert admin(url, "GET", "/admin/queues", key=None).status_code == 401
    assert admin(url, "GET", "/admin/queues", key="sk-wrong").status_code == 401
    made = admin(url, "POST", "/admin/keys", json={"name": "not-admin"}).json()
    refused = admin(url, "GET", "/admin/queues", key=made["key"])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    answer = admin(url, "GET", "/admin/queues")
    assert answer.status_code == 200
    body = answer.json()
    assert isinstance(body["models"], dict) and body["enabled"] is True


# --------------------------------------------------------------------------- key priority, end to end


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"max_priority": 3}, "max_priority"),
        ({"metadata": {"priority": "urgent"}}, "metadata.priority"),
        ({"max_queue_ms": 0}, "max_queue_ms"),
        ({"max_queue_ms": 3_600_001}, "max_queue_ms"),
        ({"max_queue_ms": True}, "max_queue_ms"),
        ({"max_queue_ms": "later"}, "max_queue_ms"),
        ({"metadata": {"max_queue_ms": "NaN"}}, "metadata.max_queue_ms"),
    ],
)
def test_bad_queue_settings_are_refused_before_anything_is_written(url: str, body: dict[str, Any], param: str) -> None:
    before = len(admin(url, "GET", "/admin/keys").json()["data"])
    answer = admin(url, "POST", "/admin/keys", json={"name": "bad", **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert len(admin(url, "GET", "/admin/keys").json()["data"]) == before


def test_a_json_infinity_is_refused(url: str) -> None:
    raw = b'{"name": "inf", "max_queue_ms": 1e400}'
    answer = admin(url, "POST", "/admin/keys", content=raw)
    assert answer.status_code == 400, answer.text


def test_key_priority_and_wait_apply_to_its_requests(url: str) -> None:
    """One slot (max_concurrency 1) held by a slow request; a key capped at `batch` that asks for
    `interactive` waits in `batch` (seen in GET /admin/queues) and gives up after its own 300 ms;
    an interactive key waits its turn and is served; /metrics counts both."""
    batch = admin(url, "POST", "/admin/keys", json={"name": "batchy", "priority": "batch", "max_queue_ms": 300}).json()
    assert batch["metadata"] == {"priority": "batch", "max_queue_ms": "300"}
    listed = {k["id"]: k for k in admin(url, "GET", "/admin/keys").json()["data"]}
    assert listed[batch["id"]]["metadata"]["priority"] == "batch"
    fast = admin(url, "POST", "/admin/keys", json={"name": "urgent", "priority": "interactive"}).json()

    holder, held = in_background(lambda: chat(url, fast["key"]))
    until(lambda: _in_flight(url) == 1)
    waiter, served = in_background(lambda: chat(url, fast["key"]))
    started = time.monotonic()
    shed = chat(url, batch["key"], **{"x-modelyard-priority": "interactive"})  # asks above its class
    waited = time.monotonic() - started
    assert shed.status_code == 429, shed.text
    assert shed.json()["error"]["code"] == "queue_timeout"
    assert 0.25 <= waited < SLOW_MS / 1000.0  # its key's 300 ms, not the gateway's 30 s

    snapshot = admin(url, "GET", "/admin/queues").json()
    slow = snapshot["models"]["slow"]
    assert slow["classes"]["interactive"]["depth"] == 1  # the second interactive request still waits
    assert slow["classes"]["batch"]["depth"] == 0  # the batch one has left
    depth = series(url, "modelyard_queue_depth", "modelyard_queue_depth")
    assert depth[(("class", "interactive"), ("model", "slow"))] == 1

    holder.join(10)
    waiter.join(10)
    assert held[0].status_code == 200 and served[0].status_code == 200
    sheds = series(url, "modelyard_queue_shed", "modelyard_queue_shed_total")
    assert sheds == {(("class", "batch"), ("model", "slow"), ("reason", "timeout")): 1}
    waits = series(url, "modelyard_queue_wait_seconds", "modelyard_queue_wait_seconds_count")
    assert waits == {(("class", "interactive"), ("model", "slow")): 1}
    assert admin(url, "GET", "/admin/queues").json()["models"]["slow"]["depth"] == 0


def _in_flight(url: str) -> float:
    return series(url, "modelyard_in_flight", "modelyard_in_flight").get((("deployment", "slow@openai"),), 0)


# --------------------------------------------------------------------------- the CLI


def test_cli_creates_and_lists_keys_with_a_priority(url: str, sim: SimServer, tmp_path: Path) -> None:
    runner = CliRunner()
    through = ["--url", url, "--master-key", MASTER]
    made = runner.invoke(
        app,
        ["keys", "create", "--name", "cli-batch", "--priority", "batch", "--max-priority", "default",
         "--max-queue-ms", "1500", "--json", *through],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert '"priority": "batch"' in made.output and '"max_queue_ms": "1500"' in made.output
    listed = runner.invoke(app, ["keys", "list", *through], env={"COLUMNS": "300"})
    assert listed.exit_code == 0 and "batch (max default)" in listed.output
    wrong = runner.invoke(app, ["keys", "create", "--name", "x", "--priority", "urgent", *through])
    assert wrong.exit_code == 2 and "unknown priority class" in wrong.output

    config = tmp_path / "modelyard.yaml"
    config.write_text(config_text(sim, tmp_path / "cli.db"))
    direct = ["--config", str(config)]
    made = runner.invoke(app, ["keys", "create", "--name", "s", "--priority", "interactive", "--json", *direct])
    assert made.exit_code == 0 and '"priority": "interactive"' in made.output
    wrong = runner.invoke(app, ["keys", "create", "--name", "s", "--max-queue-ms", "0", *direct])
    assert wrong.exit_code == 2 and "max_queue_ms" in wrong.output
