"""The features of issue #15 (response cache, live reload, drain) attacked as a hostile tenant or a dying process
would, on the real server over the simulator: one key never gets an answer made for another request or
another key, a hit is still authenticated, authorised and rate limited, a broken upstream stream is not
cached, reloads with bad files (prices NaN, a half-written YAML) or in a flood keep serving, and SIGTERM lets
accepted streams finish and logs them.

Tests marked `xfail(strict=True)` are holes found by this review (evidence in the lead's requests file): they
pass once the hole is fixed, and the lead then removes the mark.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from modelyard.config.loader import parse_config
from modelyard.schema.chat import Usage
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.server.response_cache import CachedAnswer
from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess
from tests.unit.state.conftest import REDIS_URL, _reachable

MASTER = "sk-master-hostile-test"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
GOOD_PRICES = {"models": {"openai/sim-medium": {"input": 3, "output": 4}}}


def config_text(sim: SimServer, tmp: Path, *, chat: str = "a") -> str:
    return f"""
prices_from: prices.json
deployments:
  - {{name: a, provider: openai, model: sim-small, api_base: "{sim.openai_base}", price: {{input: 1, output: 2}}}}
  - {{name: b, provider: openai, model: sim-medium, api_base: "{sim.openai_base}"}}
  - {{name: cut, provider: openai, model: sim-small, api_base: "{sim.openai_base}",
      headers: {{x-sim-fault: cut_stream}}, price: {{input: 1, output: 2}}}}
  - {{name: ant, provider: anthropic, model: sim-small, api_base: "{sim.anthropic_base}",
      price: {{input: 1, output: 2}}}}
models:
  chat: {{candidates: [{chat}]}}
  claude: {{candidates: [ant]}}
  other: {{candidates: [a]}}
  both: {{candidates: [a, b], strategy: cost}}
  cutm: {{candidates: [cut]}}
routing: {{retries: 0}}
access: {{master_key: {MASTER}, refresh_s: 0}}
spend: {{store: "{tmp / "spend.db"}", spool_dir: "{tmp / "spool"}", flush_interval_s: 0.05}}
cache: {{enabled: true, ttl_s: 60}}
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=7, instant=True) as server:
        yield server


class Served:
    """The module's gateway, its config file and the directory of its price table and spend store."""

    def __init__(self, server: BackgroundServer, path: Path) -> None:
        self.server = server
        self.url = server.url
        self.path = path
        self.dir = path.parent


@pytest.fixture(scope="module")
def served(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "prices.json").write_text(json.dumps(GOOD_PRICES))
    path = tmp / "modelyard.yaml"
    path.write_text(config_text(sim, tmp))
    with BackgroundServer(create_app(path)) as server:
        yield Served(server, path)


def new_key(url: str, **limits: Any) -> dict[str, Any]:
    body = {"name": f"k-{uuid.uuid4().hex[:8]}", **limits}
    response = httpx.post(url + "/admin/keys", json=body, headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def unique_messages(tag: str = "") -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Say something short. {tag} {uuid.uuid4().hex}"}]


def chat(url: str, key: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    full = {"model": "chat", "temperature": 0, **body}
    return httpx.post(
        url + "/v1/chat/completions",
        json=full,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=30,
    )


def upstream_calls(sim: SimServer) -> int:
    return int(sum(model.get("requests", 0) for model in sim.stats().values() if isinstance(model, dict)))


def reload(url: str) -> httpx.Response:
    return httpx.post(url + "/admin/reload", headers=ADMIN, timeout=60)


# ---------------------------------------------------------------------------------------------- response cache


def test_a_hit_is_still_rate_limited(served: Served) -> None:
    """rpm 2: the miss and the hit count, the third request is refused although its answer is cached."""
    key = new_key(served.url, rpm=2)["key"]
    body = {"messages": unique_messages("rpm")}
    seen = [
        (r.status_code, r.headers.get("x-modelyard-cache")) for r in (chat(served.url, key, body) for _ in range(3))
    ]
    assert seen == [(200, "miss"), (200, "hit"), (429, None)]


def test_a_revoked_or_unauthorised_key_gets_no_hit(served: Served) -> None:
    """The cached answer exists (same key, same body) but the key is revoked; and a key limited to another model
    gets 403 for the model whose answer the master key cached with the same body."""
    record = new_key(served.url)
    body = {"messages": unique_messages("revoke")}
    assert chat(served.url, record["key"], body).headers["x-modelyard-cache"] == "miss"
    assert chat(served.url, record["key"], body).headers["x-modelyard-cache"] == "hit"
    assert httpx.delete(f"{served.url}/admin/keys/{record['id']}", headers=ADMIN, timeout=10).status_code == 200
    assert chat(served.url, record["key"], body).status_code == 401

    assert chat(served.url, MASTER, body).status_code == 200  # now cached under the master key too
    limited = new_key(served.url, models=["other"])["key"]
    assert chat(served.url, limited, body).status_code == 403


VARIANTS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "modelyard candidates": ({"model": "both", "modelyard": {"candidates": ["b"]}}, {}),
    "modelyard strategy": ({"model": "both", "modelyard": {"strategy": "least-latency"}}, {}),
    "tools": (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        {},
    ),
    "response_format": ({"response_format": {"type": "json_object"}}, {}),
    "metadata": ({"metadata": {"task": "classification"}}, {}),
    "max_tokens": ({"max_tokens": 7}, {}),
    "seed": ({"seed": 3}, {}),
    "another model": ({"model": "other"}, {}),
    "x-modelyard-task": ({}, {"x-modelyard-task": "extraction"}),
    "x-modelyard-tags": ({}, {"x-modelyard-tags": "a,b"}),
    "x-modelyard-strategy": ({"model": "both"}, {"x-modelyard-strategy": "least-latency"}),
}


def test_every_field_that_can_change_the_answer_is_its_own_entry(served: Served) -> None:
    """The base request is cached; each variant (a routing override, tools, a format, metadata, a header that
    steers routing, another model) is a miss that goes upstream, never the base's answer. Then each variant
    is a hit of its own."""
    key = new_key(served.url)["key"]
    messages = unique_messages("variants")
    for model in ("chat", "both"):
        assert chat(served.url, key, {"model": model, "messages": messages}).status_code == 200
        assert chat(served.url, key, {"model": model, "messages": messages}).headers["x-modelyard-cache"] == "hit"
    for name, (extra, headers) in VARIANTS.items():
        first = chat(served.url, key, {"messages": messages, **extra}, headers)
        assert first.status_code == 200, (name, first.text)
        assert first.headers.get("x-modelyard-cache") == "miss", name
        again = chat(served.url, key, {"messages": messages, **extra}, headers)
        assert again.headers.get("x-modelyard-cache") == "hit", name


def test_another_ingress_with_the_same_content_is_its_own_entry(served: Served) -> None:
    key = new_key(served.url)["key"]
    messages = unique_messages("ingress")
    assert chat(served.url, key, {"messages": messages, "max_tokens": 50}).headers["x-modelyard-cache"] == "miss"
    body = {"model": "chat", "messages": messages, "max_tokens": 50, "temperature": 0}
    response = httpx.post(served.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-modelyard-cache"] == "miss"
    assert response.json()["type"] == "message"


def test_pass_through_anthropic_headers_that_reach_upstream_are_keyed(served: Served) -> None:
    """On a pass-through, an allowed `anthropic-beta` or another `anthropic-version` changes what the upstream
    is asked: its own entry. A beta not on the allowlist is dropped before upstream, so it cannot change the
    answer: the same entry."""
    key = new_key(served.url)["key"]
    body = {"model": "claude", "messages": unique_messages("beta"), "max_tokens": 50, "temperature": 0}

    def ask(**headers: str) -> str | None:
        response = httpx.post(served.url + "/v1/messages", json=body, headers={"x-api-key": key, **headers}, timeout=30)
        assert response.status_code == 200, response.text
        cache: str | None = response.headers.get("x-modelyard-cache")
        return cache

    assert ask() == "miss"
    assert ask() == "hit"
    assert ask(**{"anthropic-beta": "interleaved-thinking-2025-05-14"}) == "miss"
    assert ask(**{"anthropic-beta": "interleaved-thinking-2025-05-14"}) == "hit"
    assert ask(**{"anthropic-version": "2023-01-01"}) == "miss"
    assert ask(**{"anthropic-beta": "not-on-the-allowlist-2099-01-01"}) == "hit"


def test_a_request_with_output_guardrails_is_never_served_from_the_cache(served: Served) -> None:
    """The same key and messages are cached; adding an output guardrail makes the request not cacheable (no
    header, an upstream call): a cached answer was never checked against it."""
    key = new_key(served.url)["key"]
    messages = unique_messages("guarded")
    assert chat(served.url, key, {"messages": messages}).headers["x-modelyard-cache"] == "miss"
    guard = {"modelyard": {"guardrails": [{"check": "max_length", "max_chars": 100000}]}}
    for _ in range(2):
        answer = chat(served.url, key, {"messages": messages, **guard})
        assert answer.status_code == 200, answer.text
        assert "x-modelyard-cache" not in answer.headers


def test_redacted_inputs_share_an_entry_only_within_one_key(served: Served) -> None:
    """Keyed after input redaction (docs/caching.md): two prompts that differ only in a redacted email are one
    entry for one key (the upstream saw the same text), never across keys."""
    key, other = new_key(served.url)["key"], new_key(served.url)["key"]
    tag = uuid.uuid4().hex
    redact = {"modelyard": {"guardrails": [{"check": "pii", "stage": "input", "action": "redact"}]}}

    def ask(who: str, email: str) -> httpx.Response:
        messages = [{"role": "user", "content": f"Write to {email} about {tag}."}]
        answer = chat(served.url, who, {"messages": messages, **redact})
        assert answer.status_code == 200, answer.text
        return answer

    assert ask(key, "alice@example.com").headers["x-modelyard-cache"] == "miss"
    assert ask(key, "bob@example.org").headers["x-modelyard-cache"] == "hit"
    assert ask(other, "bob@example.org").headers["x-modelyard-cache"] == "miss"


def test_the_user_field_does_not_split_the_cache_within_a_key(served: Served) -> None:
    """Documented (docs/caching.md): `user` is left out of the key, so one key's end users share its answers.
    Pinned here so a change is a decision: an operator who keys per end user must use one key per user."""
    key = new_key(served.url)["key"]
    messages = unique_messages("user")
    assert chat(served.url, key, {"messages": messages, "user": "alice"}).headers["x-modelyard-cache"] == "miss"
    assert chat(served.url, key, {"messages": messages, "user": "mallory"}).headers["x-modelyard-cache"] == "hit"


def test_a_truncated_upstream_stream_is_not_cached(served: Served, sim: SimServer) -> None:
    """An upstream stream that stops before its finish (no finish reason, no [DONE]) reaches the client as an
    error event; it must not be stored and replayed as if it were the whole answer."""
    key = new_key(served.url)["key"]
    # The simulator cuts at a random event. A cut right after the role preamble is still before the answer's
    # substance, so the gateway fails over (here to nothing: a 502 before any byte): not cached either, but
    # not the case under test, so another prompt is tried.
    for _ in range(20):
        body = {"model": "cutm", "messages": unique_messages("cut"), "stream": True}
        first = chat(served.url, key, body)
        if first.status_code == 200:
            break
        assert first.status_code == 502 and "x-modelyard-cache" not in first.headers
    assert first.headers.get("x-modelyard-cache") == "miss"
    assert '"error"' in first.text
    calls = upstream_calls(sim)
    second = chat(served.url, key, {**body, "stream": False})
    assert second.headers.get("x-modelyard-cache") != "hit"
    assert upstream_calls(sim) == calls + 1


@pytest.mark.parametrize(
    ("control", "expected"),
    [("NO-STORE , No-Cache", None), ("no-store,no-cache", None), ("No-Cache", "miss"), ("no-store", "hit")],
)
def test_cache_control_is_read_case_insensitively(served: Served, control: str, expected: str | None) -> None:
    key = new_key(served.url)["key"]
    body = {"messages": unique_messages("cc")}
    assert chat(served.url, key, body).headers["x-modelyard-cache"] == "miss"
    assert chat(served.url, key, body, {"Cache-Control": control}).headers.get("x-modelyard-cache") == expected


def test_non_finite_temperatures_are_refused_not_cached(served: Served) -> None:
    key = new_key(served.url)["key"]
    for value in ("NaN", "Infinity", "-Infinity"):
        raw = '{"model": "chat", "temperature": VALUE, "messages": [{"role": "user", "content": "t"}]}'
        raw = raw.replace("VALUE", value)
        response = httpx.post(
            served.url + "/v1/chat/completions",
            content=raw,
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400, (value, response.text)
        assert "x-modelyard-cache" not in response.headers


def test_an_opted_in_answer_with_two_choices_replays_both(served: Served) -> None:
    """`n: 2` is cacheable only by opt-in; its streamed replay carries both choices and ends with [DONE]."""
    key = new_key(served.url)["key"]
    body = {"messages": unique_messages("n2"), "n": 2, "modelyard": {"cache": True}}
    first = chat(served.url, key, body)
    assert first.headers["x-modelyard-cache"] == "miss"
    contents = [choice["message"]["content"] for choice in first.json()["choices"]]
    replay = chat(served.url, key, {**body, "stream": True})
    assert replay.headers["x-modelyard-cache"] == "hit"
    assert replay.text.rstrip().endswith("data: [DONE]")
    texts: dict[int, str] = {}
    for line in replay.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert [texts.get(0), texts.get(1)] == contents


def test_the_spend_rows_of_hits_cost_nothing_and_name_the_asking_key(served: Served) -> None:
    record = new_key(served.url)
    body = {"messages": unique_messages("spend")}
    ids = [chat(served.url, record["key"], body).headers["x-request-id"] for _ in range(3)]
    rows = wait_rows(served.dir / "spend.db", ids)
    miss, *hits = (rows[i] for i in ids)
    assert miss["cost_usd"] > 0
    for hit in hits:
        assert (hit["status"], hit["cost_usd"], hit["key_id"]) == ("ok", 0, record["id"])


def wait_rows(db: Path, ids: list[str], limit_s: float = 5.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + limit_s
    while True:
        connection = sqlite3.connect(db)
        connection.row_factory = sqlite3.Row
        try:
            marks = ",".join("?" * len(ids))
            rows = {
                r["id"]: dict(r)
                for r in connection.execute(f"SELECT * FROM modelyard_spend WHERE id IN ({marks})", ids)
            }
        finally:
            connection.close()
        if len(rows) == len(ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_a_hit_is_not_served_from_a_deployment_the_model_no_longer_routes_to(served: Served, sim: SimServer) -> None:
    key = new_key(served.url)["key"]
    body = {"messages": unique_messages("moved")}
    assert chat(served.url, key, body).headers["x-modelyard-model"] == "a"
    served.path.write_text(config_text(sim, served.dir, chat="b"))
    try:
        assert reload(served.url).status_code == 200
        after = chat(served.url, key, body)
        assert after.headers.get("x-modelyard-model") == "b", "an answer of a deployment chat no longer uses"
    finally:
        served.path.write_text(config_text(sim, served.dir))
        assert reload(served.url).status_code == 200


# ---------------------------------------------------------------------------------------------- live reload


def test_reload_is_for_the_master_key_only(served: Served) -> None:
    key = new_key(served.url)["key"]
    for method in ("GET", "POST"):
        for headers in ({}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer sk-nope"}):
            response = httpx.request(method, served.url + "/admin/reload", headers=headers, timeout=10)
            assert response.status_code in (401, 403), (method, headers, response.status_code)


def test_a_reload_flood_is_serialised_and_traffic_goes_on(served: Served) -> None:
    """40 concurrent reloads: each is one whole reload (the lock serialises them; nothing half-swapped), all
    succeed, the generation grows by 40, and requests in between are answered."""
    before = httpx.get(served.url + "/admin/reload", headers=ADMIN, timeout=10).json()["generation"]
    answered: list[int] = []
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            answered.append(chat(served.url, MASTER, {"messages": unique_messages("flood")}).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda _: reload(served.url).status_code, range(40)))
    finally:
        done.set()
        worker.join(30)
    assert statuses == [200] * 40
    after = httpx.get(served.url + "/admin/reload", headers=ADMIN, timeout=10).json()["generation"]
    assert after == before + 40
    assert answered and set(answered) == {200}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-1", "1e308", "1e400", '"1"', "null", "{}"])
def test_a_price_file_with_a_bad_number_is_refused_and_prices_stay(served: Served, sim: SimServer, value: str) -> None:
    prices = served.dir / "prices.json"
    prices.write_text('{"models": {"openai/sim-medium": {"input": V, "output": V}}}'.replace("V", value))
    try:
        response = reload(served.url)
        assert response.status_code == 422, response.text
        assert "prices" in response.json()["error"]["message"]
        answer = chat(
            served.url,
            MASTER,
            {"model": "both", "messages": unique_messages("price"), "modelyard": {"candidates": ["b"]}},
        )
        assert answer.status_code == 200
        usage = answer.json()["usage"]
        per_million = float(answer.headers["x-modelyard-cost-usd"]) * 1e6
        assert per_million == pytest.approx(3 * usage["prompt_tokens"] + 4 * usage["completion_tokens"])
    finally:
        prices.write_text(json.dumps(GOOD_PRICES))


@pytest.mark.parametrize("cut", ["half", "empty", "one-line"])
def test_a_half_written_config_is_refused_and_the_old_one_serves(served: Served, cut: str) -> None:
    """What a watcher can see mid-write: half the file (not valid YAML here), nothing, or its first line. A
    prefix that happens to be valid YAML and a valid config would be accepted (documented risk: write the file
    elsewhere and rename it over the old one)."""
    full = served.path.read_text()
    partial = {"half": full[: len(full) // 2], "empty": "", "one-line": full.lstrip().splitlines()[0] + "\n"}[cut]
    served.path.write_text(partial)
    try:
        response = reload(served.url)
        assert response.status_code == 422, response.text
        assert f"{served.path}:" in response.json()["error"]["message"]  # file:line
        assert chat(served.url, MASTER, {"messages": unique_messages("half")}).status_code == 200
    finally:
        served.path.write_text(full)


# ---------------------------------------------------------------------------------------------- drain


def drained_gateway(sim: SimServer, tmp: Path, drain: str) -> GatewayProcess:
    path = tmp / "drain.yaml"
    path.write_text(f"""
deployments:
  - {{name: a, provider: openai, model: sim-small, api_base: "{sim.openai_base}", price: {{input: 1, output: 2}}}}
models:
  chat: {{candidates: [a]}}
access: {{master_key: {MASTER}}}
spend: {{store: "{tmp / "drain.db"}", spool_dir: "{tmp / "drain-spool"}", flush_interval_s: 0.05}}
drain: {drain}
""")
    return GatewayProcess(path, log=tmp / "drain.log")


@pytest.fixture
def slow_sim() -> Iterator[SimServer]:
    """Streams of 60 tokens at 20 tokens/s: 3 s each."""
    with SimServer(seed=7) as server:
        server.set_model("sim-small", tokens_per_second=20, output_tokens={"min": 60, "max": 60})
        yield server


def stream_in_thread(url: str, out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "long"}]}
        out["text"] = ""
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=ADMIN, timeout=60) as response:
                out["id"] = response.headers.get("x-request-id")
                for part in response.iter_text():
                    out["text"] += part
        except httpx.HTTPError as exc:
            out["error"] = repr(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sigterm_twice_during_a_stream_lets_it_finish_and_logs_it(slow_sim: SimServer, tmp_path: Path) -> None:
    """The second SIGTERM skips the grace period (new connections refused at once) but not the deadline: the
    stream in flight ends with [DONE], and its spend row is in the store when the process is gone."""
    with drained_gateway(slow_sim, tmp_path, "{grace_s: 1, deadline_s: 15}") as gateway:
        out: dict[str, Any] = {}
        thread = stream_in_thread(gateway.url, out)
        time.sleep(0.8)
        os.kill(gateway.pid, signal.SIGTERM)
        time.sleep(0.2)
        os.kill(gateway.pid, signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            chat(gateway.url, MASTER, {"messages": unique_messages("late")})
        thread.join(30)
        assert gateway.proc is not None
        gateway.proc.wait(30)
    assert "error" not in out, out
    assert out["text"].rstrip().endswith("data: [DONE]")
    rows = wait_rows(tmp_path / "drain.db", [out["id"]], limit_s=1.0)
    assert rows[out["id"]]["status"] == "ok"


def test_a_stream_cut_at_the_drain_deadline_still_has_its_spend_row(slow_sim: SimServer, tmp_path: Path) -> None:
    with drained_gateway(slow_sim, tmp_path, "{grace_s: 0.5, deadline_s: 1}") as gateway:
        out: dict[str, Any] = {}
        thread = stream_in_thread(gateway.url, out)
        time.sleep(0.8)
        os.kill(gateway.pid, signal.SIGTERM)
        thread.join(30)
        assert gateway.proc is not None
        gateway.proc.wait(30)
    assert not out["text"].rstrip().endswith("data: [DONE]")  # cut, as configured
    rows = wait_rows(tmp_path / "drain.db", [out["id"]], limit_s=1.0)
    assert out["id"] in rows, "an accepted, partly served stream left no spend row"


# ---------------------------------------------------------------------------------------------- garbage in Redis


@pytest.fixture
def redis_pair(sim: SimServer) -> Iterator[tuple[str, str, str]]:
    """Two gateways sharing a response cache in the real Redis under a fresh prefix: (url 1, url 2, prefix).
    Each keeps its own answers in its L1, so what gateway 2 reads of gateway 1's answers comes from Redis."""
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    prefix = f"modelyard_test_hostile_{uuid.uuid4().hex[:12]}"
    text = f"""
deployments:
  - {{name: a, provider: openai, model: sim-small, api_base: "{sim.openai_base}", price: {{input: 1, output: 2}}}}
models:
  chat: {{candidates: [a]}}
access: {{master_key: {MASTER}}}
cache: {{enabled: true, ttl_s: 60}}
state: {{redis_url: "{REDIS_URL}", prefix: {prefix}}}
"""
    try:
        with (
            BackgroundServer(create_app(parse_config(text, source="hostile-redis-1.yaml"))) as one,
            BackgroundServer(create_app(parse_config(text, source="hostile-redis-2.yaml"))) as two,
        ):
            yield one.url, two.url, prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()


def overwrite_cache_entry(prefix: str, value: bytes, limit_s: float = 5.0) -> None:
    """Once gateway 1's background writer has put its one answer in Redis: replace it with `value`."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + limit_s
        while not (keys := list(client.scan_iter(match=f"{prefix}:rc:*"))):
            assert time.monotonic() < deadline, "the answer never reached Redis"
            time.sleep(0.01)
        assert len(keys) == 1
        client.set(keys[0], value, keepttl=True)
    finally:
        client.close()


def cached_on_one_read_on_two(pair: tuple[str, str, str], value: bytes) -> list[httpx.Response]:
    """Gateway 1 answers and stores; the entry in Redis is replaced by `value`; gateway 2 is asked, JSON and
    streamed."""
    one, two, prefix = pair
    body = {"messages": unique_messages("garbage")}
    assert chat(one, MASTER, body).headers["x-modelyard-cache"] == "miss"
    overwrite_cache_entry(prefix, value)
    time.sleep(0.3)  # gateway 2 learns the key from the announcement
    return [chat(two, MASTER, {**body, "stream": stream}) for stream in (False, True)]


def test_an_undecodable_redis_cache_entry_is_a_miss(redis_pair: tuple[str, str, str]) -> None:
    """Read on gateway 2, ignored (a miss that goes upstream); its fresh answer then serves the stream."""
    json_answer, streamed = cached_on_one_read_on_two(redis_pair, b"\xc1 not msgpack")
    assert (json_answer.status_code, json_answer.headers.get("x-modelyard-cache")) == (200, "miss")
    assert json_answer.json()["choices"][0]["message"]["content"]
    assert (streamed.status_code, streamed.headers.get("x-modelyard-cache")) == (200, "hit")


@pytest.mark.parametrize("stored", [b"not json", b"[1]", b"{}", b'{"choices": [1]}', b'{"choices": []}'])
def test_a_cache_entry_with_a_broken_body_is_a_miss_not_a_500(redis_pair: tuple[str, str, str], stored: bytes) -> None:
    value = msgspec.msgpack.encode(CachedAnswer(stored, Usage(), "a"))
    json_answer, streamed = cached_on_one_read_on_two(redis_pair, value)
    # The bad entry is a miss (not a 500, not an empty 200): the answer comes from upstream and is stored...
    assert (json_answer.status_code, json_answer.headers.get("x-modelyard-cache")) == (200, "miss"), json_answer.text
    assert json_answer.json()["choices"][0]["message"]["content"]
    # ...and that fresh answer, not the bad entry, is what the streamed request replays.
    assert (streamed.status_code, streamed.headers.get("x-modelyard-cache")) == (200, "hit")
    assert streamed.text.rstrip().endswith("data: [DONE]") and '"content"' in streamed.text


BUDGET = 0.001


def test_a_hit_is_refused_once_the_keys_budget_is_spent(served: Served) -> None:
    """A hit costs nothing, but a key over its budget is refused before its cache is looked at: the key caches
    an answer, spends the rest of its budget on other requests, then asks for the cached one."""
    key = new_key(served.url, budget_usd=BUDGET, period="30d")["key"]
    # The cached request reserves more than any spending request (a longer answer cap, its prompt no shorter): a
    # refused miss then means the hit's reservation cannot fit either. With equal caps the budget's last sliver
    # could sit between the two estimates (their prompts' token counts differ), and the hit was served.
    cached = {"messages": unique_messages("budget-cached spend it"), "max_tokens": 80}
    assert chat(served.url, key, cached).headers["x-modelyard-cache"] == "miss"
    assert chat(served.url, key, cached).headers["x-modelyard-cache"] == "hit"
    refused = None
    for _ in range(100):  # distinct requests (misses) until the budget is gone
        answer = chat(served.url, key, {"messages": unique_messages("spend it budget-cached"), "max_tokens": 40})
        if answer.status_code != 200:
            # A refusal can be a moment's: an earlier answer's reservation not yet settled. Gone means still
            # refused once everything has settled.
            time.sleep(0.3)
            answer = chat(served.url, key, {"messages": unique_messages("spend it budget-cached"), "max_tokens": 40})
            if answer.status_code != 200:
                refused = answer.status_code
                break
    assert refused in (402, 429)
    time.sleep(0.2)  # the spend is settled after the answer
    again = chat(served.url, key, cached)
    assert again.status_code in (402, 429), again.text
    assert "x-modelyard-cache" not in again.headers


def drop_chat_config(sim: SimServer, tmp: Path, *, with_chat: bool) -> str:
    chat_lines = (
        f'  - {{name: a, provider: openai, model: sim-small, api_base: "{sim.openai_base}", '
        "price: {input: 1, output: 2}}\n"
        if with_chat
        else ""
    )
    other = f'  - {{name: b, provider: openai, model: sim-medium, api_base: "{sim.openai_base}"}}\n'
    return f"""
deployments:
{chat_lines}{other}models:
{"  chat: {candidates: [a]}" if with_chat else ""}
  other: {{candidates: [b]}}
access: {{master_key: {MASTER}}}
spend: {{store: "{tmp / "spend.db"}", spool_dir: "{tmp / "spool"}", flush_interval_s: 0.05}}
"""


def test_a_reload_that_removes_a_model_mid_stream_lets_the_stream_finish(slow_sim: SimServer, tmp_path: Path) -> None:
    """A 3 s stream on `chat` while a reload deletes `chat` and its deployment: the stream ends with [DONE] on
    the config it started with and its spend row is written; the next request for `chat` is a 404."""
    path = tmp_path / "modelyard.yaml"
    path.write_text(drop_chat_config(slow_sim, tmp_path, with_chat=True))
    with BackgroundServer(create_app(path)) as server:
        out: dict[str, Any] = {}
        thread = stream_in_thread(server.url, out)
        time.sleep(0.8)
        path.write_text(drop_chat_config(slow_sim, tmp_path, with_chat=False))
        answer = reload(server.url)
        assert answer.status_code == 200, answer.text
        assert "a" in answer.json()["changes"]["deployments_removed"]
        gone = chat(server.url, MASTER, {"messages": unique_messages("gone")})
        assert gone.status_code == 404, gone.text
        thread.join(30)
        assert "error" not in out, out
        assert out["text"].rstrip().endswith("data: [DONE]")
        rows = wait_rows(tmp_path / "spend.db", [out["id"]])
        assert rows[out["id"]]["status"] == "ok"
