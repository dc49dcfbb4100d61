"""Control endpoints, the SimServer helper (sync and async), the ASGI lifespan, and `run_sim`."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from modelyard.sim import SimServer, create_app
from tests.unit.sim.sim_helpers import asgi_call, chat_body, fleet


def test_health_stats_reset_and_fleet(sim: SimServer) -> None:
    assert httpx.get(sim.url + "/_sim/health").json() == {"status": "ok"}
    httpx.post(sim.openai_base + "/chat/completions", json=chat_body("sim-small", "Repeat: four"))
    httpx.post(sim.url + "/v1/messages", json=chat_body("sim-small", "Repeat: x", max_tokens=5))
    stats = httpx.get(sim.url + "/_sim/stats").json()
    small = stats["models"]["sim-small"]
    assert small["requests"] == 2 and small["successes"] == 2
    assert small["tokens_in"] == 3 + 3 and small["tokens_out"] == 1 + 1
    assert small["by_wire"] == {"openai": 1, "anthropic": 1, "gemini": 0}
    assert stats["totals"] == {"requests": 2, "successes": 2, "rejected": 0}
    assert sim.stats() == stats
    assert httpx.post(sim.url + "/_sim/reset").json() == {"status": "reset"}
    assert httpx.get(sim.url + "/_sim/stats").json()["models"]["sim-small"]["requests"] == 0
    fleet_doc = httpx.get(sim.url + "/_sim/fleet").json()
    assert {m["name"] for m in fleet_doc["models"]} >= {"sim-large", "sim-small"}


def test_rejected_requests_are_counted_apart(sim: SimServer) -> None:
    httpx.post(sim.openai_base + "/chat/completions", json=chat_body("nope"))
    stats = sim.stats()
    assert stats["totals"]["rejected"] == 1 and stats["totals"]["requests"] == 0


def test_patch_changes_faults_at_run_time() -> None:
    with SimServer(fleet({"name": "m"}, {"name": "other"})) as sim:
        url = sim.openai_base + "/chat/completions"
        assert httpx.post(url, json=chat_body()).status_code == 200
        r = httpx.patch(sim.url + "/_sim/models/m", json={"faults": {"rate_limit": 1.0, "retry_after_s": 7}})
        assert r.status_code == 200 and r.json()["faults"]["rate_limit"] == 1.0
        responses = [httpx.post(url, json=chat_body()) for _ in range(5)]
        assert [x.status_code for x in responses] == [429] * 5
        assert responses[0].headers["retry-after"] == "7"
        assert httpx.post(url, json=chat_body("other")).status_code == 200  # only that model changed
        bad = httpx.patch(sim.url + "/_sim/models/m", json={"faults": {"hang": 0.5}})  # would sum to 1.5
        assert bad.status_code == 400 and "add up" in bad.json()["error"]
        assert httpx.patch(sim.url + "/_sim/models/zzz", json={}).status_code == 404
        assert httpx.patch(sim.url + "/_sim/models/m", content=b"{oops").status_code == 400
        sim.set_faults("m", rate_limit=0.0)
        assert httpx.post(url, json=chat_body()).status_code == 200
        sim.set_model("m", output_tokens=3)
        answer = httpx.post(url, json=chat_body()).json()
        assert answer["usage"]["completion_tokens"] <= 3
        with pytest.raises(Exception, match="renamed"):
            sim.set_model("m", name="x")


def test_unknown_paths_are_404(sim: SimServer) -> None:
    r = httpx.get(sim.url + "/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(sim.url + "/_sim/unknown").status_code == 404
    r = httpx.post(sim.gemini_base + "/models/sim-small:explode", json={})
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


def test_chat_on_an_embedding_model_is_a_bad_request(sim: SimServer) -> None:
    r = httpx.post(sim.openai_base + "/chat/completions", json=chat_body("sim-embed"))
    assert r.status_code == 400 and "embedding model" in r.json()["error"]["message"]


async def test_async_context_manager_with_an_async_client() -> None:
    async with SimServer(fleet({"name": "m"}), seed=1) as sim:
        async with httpx.AsyncClient(base_url=sim.url) as client:
            r = await client.post("/v1/chat/completions", json=chat_body(text="Repeat: async"))
            assert r.json()["choices"][0]["message"]["content"] == "async"
        assert sim.stats()["models"]["m"]["successes"] == 1
    async with httpx.AsyncClient() as after:
        with pytest.raises(httpx.ConnectError):
            await after.get(sim.url + "/_sim/health")


def test_stop_is_prompt_with_hanging_requests_in_flight() -> None:
    sim = SimServer(fleet({"name": "m", "faults": {"hang": 1.0, "hang_s": 300}})).start()
    outcomes: list[Any] = []

    def hang() -> None:
        try:
            outcomes.append(httpx.post(sim.openai_base + "/chat/completions", json=chat_body(), timeout=60))
        except httpx.HTTPError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=hang) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while sim.stats()["models"]["m"]["faults"]["hang"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 3.0
    for t in threads:
        t.join(5)
    assert len(outcomes) == 3 and all(isinstance(o, httpx.HTTPError) for o in outcomes)


def test_stop_is_prompt_with_a_slow_stream_in_flight() -> None:
    sim = SimServer(fleet({"name": "m", "tokens_per_second": 2, "output_tokens": 500})).start()
    got: list[bytes] = []

    def read() -> None:
        try:
            with httpx.stream(
                "POST", sim.openai_base + "/chat/completions", json=chat_body(stream=True), timeout=60
            ) as r:
                for chunk in r.iter_bytes():
                    got.append(chunk)
        except httpx.HTTPError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 4.0
    reader.join(5)
    assert got and not reader.is_alive()


async def test_create_app_is_a_plain_asgi_app_with_a_lifespan() -> None:
    app = create_app(seed=3)  # the built-in fleet
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    r = await asgi_call(app, "GET", "/v1/models")
    assert r.status == 200 and {m["id"] for m in r.json()["data"]} >= {"sim-large", "sim-embed"}


def test_run_sim_serves_with_uvloop_and_httptools(tmp_path: Any) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("seed: 4\nmodels:\n  - name: only\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from modelyard.sim.server import run_sim; run_sim(port={port}, fleet_path={str(path)!r}, seed=9)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/_sim/fleet", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert r.json()["seed"] == 9 and [m["name"] for m in r.json()["models"]] == ["only"]
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_body("only"), headers={"x-sim-fault": "reset"}
            )
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert b"Exception in ASGI application" not in out  # deliberate resets stay quiet
