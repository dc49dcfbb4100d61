"""The Deployments and What-if parts of the dashboard, end to end: the real gateway (from a config file) over the
simulator. `/admin/deployments` shows a breaker the simulator's faults opened and the headroom requests took;
`/admin/whatif` replays a labelled file through an edited policy in a child process (validated first, one at
a time, killed at its timeout, only listed files); the pages render the same figures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config.loader import load_config, parse_config
from modelyard.server import admin_whatif
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from tests.redis_server import REDIS_SERVER, RedisServer

MASTER = "sk-master-fleet-0123456789"
PROMPT = [{"role": "user", "content": "Say something short."}]

# prompt, big score, big cost, small score, small cost (the simulator's model names are the data's)
ROWS = [
    ("short one", 1.0, 0.010, 1.0, 0.0001),
    ("short two", 1.0, 0.020, 0.0, 0.0002),
    ("a much longer prompt that goes on and on about many things", 1.0, 0.030, 0.0, 0.0003),
    ("another long prompt which also keeps going for quite a while", 0.0, 0.040, 1.0, 0.0004),
]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    fleet = Fleet(
        models=[
            SimModel(name="sim-big", output_tokens=8),
            SimModel(name="sim-small", output_tokens=8),
            SimModel(name="sim-bad", output_tokens=8),
        ]
    )
    with SimServer(fleet, seed=3, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, sim: SimServer) -> Path:
    root = tmp_path_factory.mktemp("fleet")
    data = root / "data"
    data.mkdir()
    with (data / "traffic.jsonl").open("w") as fh:
        for prompt, bs, bc, ss, sc in ROWS:
            fh.write(json.dumps({"prompt": prompt, "model": "sim-big", "score": bs, "cost": bc}) + "\n")
            fh.write(json.dumps({"prompt": prompt, "model": "sim-small", "score": ss, "cost": sc}) + "\n")
    (data / "notes.txt").write_text("not labelled data\n")
    (data / "broken.jsonl").write_text('{"prompt": "p", "model": "sim-big", "score": "high"}\n')
    secret = root / "outside.jsonl"
    secret.write_text(json.dumps({"prompt": "p", "model": "sim-big", "score": 1}) + "\n")
    (data / "escape.jsonl").symlink_to(secret)  # a symlink out of the folder is never listed
    (data / ".hidden.jsonl").write_text("")
    (data / "more" / "deeper").mkdir(parents=True)
    (data / "more" / "deeper" / "b.csv").write_text("prompt,model,score\n")
    (data / "linked").symlink_to(root, target_is_directory=True)  # not followed
    base = sim.openai_base
    (root / "modelyard.yaml").write_text(
        f"""
deployments:
  - {{name: big, provider: openai, model: sim-big, api_base: "{base}", api_key: sim, quality: 0.9,
      price: {{input: 10, output: 30}}, limits: {{rpm: 6}}}}
  - {{name: small, provider: openai, model: sim-small, api_base: "{base}", api_key: sim, quality: 0.6,
      price: {{input: 0.1, output: 0.3}}, limits: {{max_concurrency: 4}}}}
  - {{name: bad, provider: openai, model: sim-bad, api_base: "{base}", api_key: sim}}
models:
  premium: {{candidates: [big]}}
  cheap: {{candidates: [small], fallbacks: [premium]}}
  broken: {{candidates: [bad]}}
  triage:
    strategy: rules
    candidates: [small, big]
    rules:
      - when: {{prompt_tokens: {{gt: 12}}}}
        use: [big]
      - use: [small]
aliases:
  gpt-premium: premium
routing:
  retries: 0
  breaker: {{failures: 2, window_s: 30, cooldown_s: 30}}
access:
  master_key: {MASTER}
spend:
  store: {root / "modelyard.db"}
  flush_interval_s: 0.05
ui:
  whatif_data: [data, missing-folder]
"""
    )
    return root


@pytest.fixture(scope="module")
def url(folder: Path) -> Iterator[str]:
    config = load_config(folder / "modelyard.yaml", env={})
    with BackgroundServer(create_app(config)) as server:
        yield server.url


def admin(url: str, method: str, path: str, key: str = MASTER, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url + path, headers={"Authorization": f"Bearer {key}"}, timeout=90, **kwargs)


def new_key(url: str, **body: Any) -> str:
    made = admin(url, "POST", "/admin/keys", json={"name": "t", **body})
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


def chat(url: str, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": 8}
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def row(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [entry for entry in body["data"] if entry["name"] == name]
    assert len(found) == 1
    return found[0]


# --------------------------------------------------------------------------- /admin/deployments


def test_deployments_need_the_master_key_or_an_admin_key(url: str) -> None:
    assert httpx.get(url + "/admin/deployments").status_code == 401
    plain = new_key(url)
    assert admin(url, "GET", "/admin/deployments", plain).status_code == 401
    assert admin(url, "GET", "/admin/whatif", plain).status_code == 401
    assert admin(url, "POST", "/admin/whatif", plain, json={}).status_code == 401
    role = new_key(url, metadata={"role": "admin"})
    assert admin(url, "GET", "/admin/deployments", role).status_code == 200
    assert admin(url, "GET", "/admin/whatif", role).status_code == 200
    answer = admin(url, "GET", "/admin/deployments")
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "deployments" and body["view"] == "this replica"
    big = row(body, "big")
    assert big["provider"] == "openai" and big["model"] == "sim-big" and big["kind"] == "chat"
    assert big["price"] == {"input": 10.0, "output": 30.0, "batch": 0.5, "source": "config"}
    assert row(body, "bad")["price"]["source"] in ("unknown", "price table")
    assert big["limits"]["rpm"] == 6 and big["headroom"]["concurrency_left"] is None
    assert row(body, "small")["headroom"]["concurrency_left"] == 4
    models = {m["name"]: m for m in body["models"]}
    assert models["premium"]["aliases"] == ["gpt-premium"] and models["premium"]["candidates"] == ["big"]
    assert models["cheap"]["fallbacks"] == ["premium"]
    assert models["triage"]["strategy"] == "rules" and len(models["triage"]["rules"]) == 2
    assert "rules" not in models["premium"]


def test_an_opened_breaker_and_lowered_headroom_show(url: str, sim: SimServer) -> None:
    key = new_key(url)
    before = row(admin(url, "GET", "/admin/deployments").json(), "big")["headroom"]
    for _ in range(3):
        assert chat(url, key, "premium").status_code == 200
    after = row(admin(url, "GET", "/admin/deployments").json(), "big")["headroom"]
    assert after["rpm_left"] <= before["rpm_left"] - 2.5  # three requests taken (the bucket refills 0.1/s)
    assert after["rpm_capacity"] == 6
    sim.set_faults("sim-bad", server_error=1.0)
    try:
        # Until the circuit opens (not after: a request to an open circuit waits in the queue for its cooldown).
        for _ in range(4):
            assert chat(url, key, "broken").status_code >= 500
            body = admin(url, "GET", "/admin/deployments").json()
            if row(body, "bad")["breaker"] == "open":
                break
    finally:
        sim.set_faults("sim-bad", server_error=0.0)
    bad = row(body, "bad")
    assert bad["breaker"] == "open"
    assert 0 < bad["cooldown_s"] <= 30
    assert bad["errors_recent"] >= 2 and bad["error_rate"] == 1.0
    big = row(body, "big")
    assert big["breaker"] == "closed" and big["cooldown_s"] == 0
    assert big["latency"]["ewma_ms"] is not None and big["requests_ok"] >= 3


# --------------------------------------------------------------------------- /admin/whatif

POLICY = "strategy: cost\ncandidates: [small, big]\nconstraints:\n  min_quality: 0.8\n"


def whatif(url: str, **body: Any) -> httpx.Response:
    return admin(url, "POST", "/admin/whatif", json={"data": "traffic.jsonl", "policy": POLICY, **body})


def test_options_list_only_labelled_files_inside_the_folders(url: str) -> None:
    body = admin(url, "GET", "/admin/whatif?from=triage").json()
    assert body["data"] == [
        "broken.jsonl",
        "traffic.jsonl",
        "more/deeper/b.csv",
    ]  # not notes.txt, hidden files or links out
    assert "premium" in body["models"]
    assert "strategy: rules" in body["policy"] and "prompt_tokens" in body["policy"]
    assert admin(url, "GET", "/admin/whatif?from=nope").status_code == 400


def test_a_valid_policy_returns_both_policies_and_the_baselines(url: str) -> None:
    answer = whatif(url, compare=["premium"], name="smart")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "whatif" and body["prompts"] == 4
    policies = {p["policy"]: p for p in body["policies"]}
    assert set(policies) == {"smart", "premium"}
    assert policies["smart"]["share"] == {"sim-big": 1.0}  # small's quality 0.6 < 0.8
    assert policies["premium"]["total_cost_usd"] == pytest.approx(0.1)
    assert {m["policy"] for m in body["models"]} == {"sim-big", "sim-small"}
    assert body["premium"] == "sim-big"


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        ("candidates: [small\nstrategy: cost", ["policy:", "YAML"]),
        ("strategy: cheapest\ncandidates: [small]", ["policy:1", "strategy", "cheapest"]),
        ("candidates: [small, nowhere]", ["policy:1", "nowhere"]),
        ("candidates: [small]\nretries: many", ["policy:2", "retries"]),
        ("- just a list", ["mapping"]),
        ("a: &x [1, 1, 1]\nb: [*x, *x, *x]\ncandidates: [small]", ["anchors"]),
        ("candidates: [small]\n" + "x: " + "[" * 5000 + "]" * 5000, ["policy"]),
    ],
)
def test_a_bad_policy_is_a_400_naming_the_problem(url: str, policy: str, words: list[str]) -> None:
    answer = whatif(url, policy=policy)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "policy" and "Traceback" not in error["message"]
    for word in words:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"data": "../../etc/passwd"}, "data"),
        ({"data": "/etc/passwd"}, "data"),
        ({"data": "escape.jsonl"}, "data"),
        ({"data": "notes.txt"}, "data"),
        ({"data": 5}, "data"),
        ({"name": "../x"}, "name"),
        ({"compare": ["nope"]}, "compare"),
        ({"compare": "premium"}, "compare"),
        ({"limit": 0}, "limit"),
        ({"limit": 5001}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"policy": ""}, "policy"),
    ],
)
def test_bad_values_are_400(url: str, body: dict[str, Any], param: str) -> None:
    answer = whatif(url, **body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_two_at_once_one_is_refused(url: str) -> None:
    async def both() -> list[int]:
        headers = {"Authorization": f"Bearer {MASTER}"}
        body = {"data": "traffic.jsonl", "policy": POLICY}
        async with httpx.AsyncClient(timeout=90) as client:
            answers = await asyncio.gather(
                *(client.post(url + "/admin/whatif", json=body, headers=headers) for _ in range(2))
            )
        return sorted(a.status_code for a in answers)

    codes = asyncio.run(both())
    assert codes == [200, 429]
    assert whatif(url).status_code == 200  # the slot is free again


def test_a_replay_that_fails_is_a_422_with_its_last_words(url: str) -> None:
    answer = whatif(url, data="broken.jsonl")
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "whatif_failed" and "Traceback" not in error["message"]
    assert "ValueError" in error["message"] and "high" in error["message"], error["message"]


def test_a_gateway_without_a_config_file_has_no_whatif(folder: Path) -> None:
    text = (folder / "modelyard.yaml").read_text().replace(str(folder / "modelyard.db"), str(folder / "m2.db"))
    config = parse_config(text, env={})  # in memory: no file to copy
    with BackgroundServer(create_app(config)) as server:
        answer = admin(server.url, "POST", "/admin/whatif", json={"data": "traffic.jsonl", "policy": POLICY})
        assert answer.status_code == 400  # its folders are relative to no file: nothing is listed
        assert admin(server.url, "GET", "/admin/whatif").json()["data"] == []
        assert admin(server.url, "GET", "/admin/whatif?from=premium").status_code == 409


def _replay_children() -> list[int]:
    """This process's children that run a replay."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"replay" in cmdline:
            found.append(int(entry.name))
    return found


def test_the_replay_is_killed_at_its_timeout(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(admin_whatif, "TIMEOUT_S", 0.3)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    answer = whatif(url)
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "whatif_timeout"
    assert _replay_children() == []
    assert list(tmp_path.iterdir()) == []  # the temporary config is gone


# --------------------------------------------------------------------------- the pages


@contextmanager
def log_in(url: str) -> Iterator[httpx.Client]:
    """A browser-like client with a dashboard session (the login form's double-submit token, then the key)."""
    with httpx.Client(base_url=url, timeout=90) as client:
        page = client.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        answer = client.post("/ui/login", data={"key": MASTER, "login_token": token.group(1)})
        assert answer.status_code == 303 and "modelyard_ui" in client.cookies
        yield client


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_pages_need_a_session(url: str) -> None:
    for path in ("/ui/deployments", "/ui/whatif"):
        answer = httpx.get(url + path)
        assert answer.status_code == 303 and "/ui/login" in answer.headers["location"]


def test_the_deployments_page_shows_every_row(url: str) -> None:
    with log_in(url) as client:
        page = client.get("/ui/deployments")
    assert page.status_code == 200
    html = page.text
    assert html.count("<h1>") == 1 and "<h1>Deployments</h1>" in html and "data-refresh=" in html
    assert 'id="deployments"' in html and 'id="models"' in html
    for name in ("big", "small", "bad"):
        assert f'data-deployment="{name}"' in html
    for name in ("premium", "cheap", "broken", "triage"):
        assert f'data-model="{name}"' in html
    assert re.search(r'class="badge (closed|open|half-open)"', html)
    assert "sk-master" not in html and "api_key" not in html


def test_the_whatif_page_runs_a_replay(url: str) -> None:
    with log_in(url) as client:
        page = client.get("/ui/whatif?from=triage")
        assert page.status_code == 200
        html = page.text
        assert "<h1>What-if</h1>" in html and 'id="whatif"' in html
        assert "strategy: rules" in html and 'value="traffic.jsonl"' in html
        # Started from a model: the edited copy gets its own name and is compared with the original.
        assert 'name="name" value="triage-edited"' in html
        assert re.search(r'name="compare:triage" value="1"\s+checked', html)
        assert client.get("/ui/whatif?from=%3Cscript%3E").status_code == 400
        form = {
            "csrf": csrf(html),
            "data": "traffic.jsonl",
            "name": "edited",
            "policy": POLICY,
            "compare:premium": "1",
            "limit": "4",
        }
        assert client.post("/ui/whatif", data={k: v for k, v in form.items() if k != "csrf"}).status_code == 403
        result = client.post("/ui/whatif", data=form)
        assert result.status_code == 200, result.text
        assert 'id="whatif-results"' in result.text
        for name in ("edited", "premium", "sim-big", "sim-small"):
            assert f'data-policy="{name}"' in result.text
        assert 'class="point"' in result.text and 'class="point-alt"' in result.text
        assert 'class="point-base"' in result.text
        bad = client.post("/ui/whatif", data={**form, "policy": "strategy: cheapest\ncandidates: [small]"})
        assert bad.status_code == 400 and 'class="problem"' in bad.text and "cheapest" in bad.text
        assert "strategy: cheapest" in bad.text  # the edited policy is kept in the form
        hostile = client.post("/ui/whatif", data={**form, "policy": "</textarea><script>alert(1)</script>"})
        assert hostile.status_code == 400 and "<script>alert(1)" not in hostile.text
        assert "&lt;/textarea&gt;&lt;script&gt;" in hostile.text
        started = client.get("/ui/whatif?from=triage").text
        same = {**form, "csrf": csrf(started), "name": "triage-edited", "compare:triage": "1"}
        assert client.post("/ui/whatif", data=same).status_code == 200


# --------------------------------------------------------------------------- two replicas sharing health


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_with_shared_health_another_replica_shows_the_fleets_breaker(folder: Path, sim: SimServer) -> None:
    text = (folder / "modelyard.yaml").read_text()
    with RedisServer() as redis:
        configs = []
        for replica in ("a", "b"):
            own = text.replace(str(folder / "modelyard.db"), str(folder / f"replica-{replica}.db"))
            own += f'state: {{redis_url: "{redis.url}", shared_health: true, health_sync_s: 0.05}}\n'
            configs.append(parse_config(own, env={}))
        with BackgroundServer(create_app(configs[0])) as first, BackgroundServer(create_app(configs[1])) as second:
            assert admin(second.url, "GET", "/admin/deployments").json()["shared_health"] is True
            sim.set_faults("sim-bad", server_error=1.0)
            try:
                for _ in range(4):
                    chat(first.url, MASTER, "broken")
                    if row(admin(first.url, "GET", "/admin/deployments").json(), "bad")["breaker"] == "open":
                        break
            finally:
                sim.set_faults("sim-bad", server_error=0.0)
            deadline = time.monotonic() + 5
            seen = row(admin(second.url, "GET", "/admin/deployments").json(), "bad")
            while seen["breaker"] != "open" and time.monotonic() < deadline:
                time.sleep(0.05)
                seen = row(admin(second.url, "GET", "/admin/deployments").json(), "bad")
            body = admin(second.url, "GET", "/admin/deployments").json()
    assert body["view"].startswith("fleet")
    assert seen["breaker"] == "open" and seen["cooldown_s"] > 0  # opened on the other replica
    assert seen["requests_failed"] == 0  # this replica never called it
