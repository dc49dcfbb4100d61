"""The overview and the request log (#16 items 1, 2), against the real server over the simulator: the JSON
endpoints (auth, figures equal to what was sent, every filter, keyset pages, bad params) and the pages
rendered through the ASGI app after a real login (hooks, the failed-over request's attempts, escaping)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelyard.accounting.traffic import LATENCY_EDGES_MS
from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

MASTER = "sk-master-traffic-test"
XSS = "<script>alert('x')</script>"
CONFIG = """
deployments:
  - {{name: fast, provider: openai, model: sim-small, api_base: "{sim}/v1", headers: {{x-sim-ttft-ms: "120"}},
     price: {{input: 0.1, output: 0.4}}}}
  - {{name: slow, provider: openai, model: sim-small, api_base: "{sim}/v1", headers: {{x-sim-ttft-ms: "600"}},
     price: {{input: 1.0, output: 4.0}}}}
  - {{name: down, provider: openai, model: sim-small, api_base: "{sim}/v1", headers: {{x-sim-fault: unavailable}},
     price: {{input: 0.1, output: 0.4}}}}
  - {{name: up, provider: openai, model: sim-small, api_base: "{sim}/v1", price: {{input: 0.1, output: 0.4}}}}
models:
  fast: {{candidates: [fast]}}
  slow: {{candidates: [slow]}}
  broken: {{candidates: [down]}}
  failover: {{candidates: [down, up]}}
  plain: {{candidates: [up]}}
routing: {{retries: 0, breaker: {{failures: 1000}}}}
access: {{master_key: {master}}}
spend: {{store: "sqlite:///{store}", flush_interval_s: 0.05, log_content: true}}
"""
FAST, SLOW = 6, 4


class Sent:
    """What the module's traffic was: request ids by model, and the keys used."""

    def __init__(self) -> None:
        self.ids: dict[str, list[str]] = {}
        self.admin_key = ""
        self.plain_key = ""
        self.xss_key_id = ""


def chat(url: str, model: str, key: str = MASTER, text: str = "Repeat: hello") -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def admin(url: str, path: str, auth: str | None = MASTER, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {auth}"} if auth is not None else {}
    return httpx.get(url + path, params=params, headers=headers, timeout=30)


def new_key(url: str, name: str, **extra: Any) -> dict[str, Any]:
    response = httpx.post(
        url + "/admin/keys", json={"name": name, **extra}, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Sent]]:
    with SimServer(seed=7, instant=True) as sim:
        store = tmp_path_factory.mktemp("traffic") / "spend.db"
        config = parse_config(CONFIG.format(sim=sim.url, store=store, master=MASTER), source="traffic.yaml", env={})
        with BackgroundServer(create_app(config)) as server:
            url = server.url
            sent = Sent()
            for model, count in (("fast", FAST), ("slow", SLOW), ("broken", 1), ("failover", 1)):
                for _ in range(count):
                    response = chat(url, model)
                    assert (response.status_code >= 500) if model == "broken" else response.is_success, response.text
                    sent.ids.setdefault(model, []).append(response.headers["x-request-id"])
            xss_key = new_key(url, XSS)
            sent.xss_key_id = xss_key["id"]
            response = chat(url, "plain", xss_key["key"], text=f"Repeat: {XSS}")
            assert response.status_code == 200, response.text
            sent.ids["xss"] = [response.headers["x-request-id"]]
            sent.admin_key = new_key(url, "ops", metadata={"role": "admin"})["key"]
            sent.plain_key = new_key(url, "app")["key"]
            yield url, sent


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("path", ["/admin/overview", "/admin/requests"])
def test_the_endpoints_need_the_master_key_or_an_admin_key(served: tuple[str, Sent], path: str) -> None:
    url, sent = served
    assert admin(url, path, auth=None).status_code == 401
    assert admin(url, path, auth=sent.plain_key).status_code == 401
    assert admin(url, path).status_code == 200
    assert admin(url, path, auth=sent.admin_key).status_code == 200


def test_one_request_needs_auth_and_an_unknown_id_is_404(served: tuple[str, Sent]) -> None:
    url, sent = served
    request_id = sent.ids["fast"][0]
    assert admin(url, f"/admin/requests/{request_id}", auth=sent.plain_key).status_code == 401
    assert admin(url, f"/admin/requests/{request_id}").status_code == 200
    missing = admin(url, "/admin/requests/req_nothing_here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"


# --------------------------------------------------------------------------- the overview


def _bucket_of(ms: float) -> tuple[float, float]:
    """The latency bucket holding `ms` (its low and high edge)."""
    low = 0.0
    for edge in LATENCY_EDGES_MS:
        if ms < edge:
            return low, edge
        low = edge
    return low, float("inf")


def test_overview_figures_equal_what_was_sent(served: tuple[str, Sent]) -> None:
    url, sent = served
    body = admin(url, "/admin/overview", range="15m").json()
    assert body["object"] == "overview" and body["grain"] == "minute" and body["bucket_s"] == 60
    assert len(body["series"]) == 15 and body["until"] - body["since"] == 900
    total = sum(len(ids) for ids in sent.ids.values())
    totals = body["totals"]
    assert totals["requests"] == total
    assert totals["errors"] == 1 and totals["error_rate"] == pytest.approx(1 / total)
    assert sum(b["requests"] for b in body["series"]) == total
    assert sum(b["errors"] for b in body["series"]) == 1
    assert totals["cost_usd"] == pytest.approx(sum(b["cost_usd"] for b in body["series"]))
    assert totals["cost_usd"] > 0 and totals["prompt_tokens"] > 0
    by_model = {row["name"]: row for row in body["by"]["model"]}
    assert by_model["fast"]["requests"] == FAST and by_model["slow"]["requests"] == SLOW
    assert by_model["broken"]["errors"] == 1 and by_model["broken"]["error_rate"] == 1.0
    # The simulator answers after the deployment's fixed time to first token; the gateway adds a little.
    # The percentiles are read off the histogram: within the truth's bucket.
    low, high = _bucket_of(120)
    assert low <= by_model["fast"]["p50_ms"] <= high and low <= by_model["fast"]["p95_ms"] <= high
    low, high = _bucket_of(600)
    assert low <= by_model["slow"]["p50_ms"] <= high
    assert by_model["slow"]["cost_usd"] > by_model["fast"]["cost_usd"]
    # Overall p95 lies in the slow requests' bucket (4 of 13 are slow), p50 in the fast ones'.
    assert _bucket_of(600)[0] <= totals["p95_ms"] <= _bucket_of(600)[1]
    keys = {row["name"]: row for row in body["by"]["key"]}
    assert keys[sent.xss_key_id]["key_name"] == XSS and keys[sent.xss_key_id]["requests"] == 1


def test_the_overview_narrowed_to_one_model(served: tuple[str, Sent]) -> None:
    url, _ = served
    body = admin(url, "/admin/overview", range="1h", model="slow").json()
    assert body["narrowed"] == {"dim": "model", "value": "slow"}
    assert body["totals"]["requests"] == SLOW and body["totals"]["errors"] == 0
    assert [row["name"] for row in body["by"]["model"]] == ["slow"]
    assert body["by"]["deployment"] == [] and body["by"]["key"] == []
    assert len(body["series"]) == 60
    hourly = admin(url, "/admin/overview", range="7d").json()
    assert hourly["grain"] == "hour" and len(hourly["series"]) == 7 * 24


@pytest.mark.parametrize(
    "params",
    [
        {"range": "99y"},
        {"range": "1h", "model": "fast", "key": "x"},
        {"model": "a\x00b"},
        {"model": "m" * 300},
    ],
)
def test_bad_overview_params_are_400(served: tuple[str, Sent], params: dict[str, str]) -> None:
    url, _ = served
    response = admin(url, "/admin/overview", **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"]


# --------------------------------------------------------------------------- the request log


def _ids(url: str, **params: Any) -> list[str]:
    response = admin(url, "/admin/requests", **params)
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["data"]]


def _rows(url: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = admin(url, "/admin/requests", **params).json()["data"]
    return rows


def test_each_filter_narrows_the_log(served: tuple[str, Sent]) -> None:
    url, sent = served
    everything = _rows(url, limit=200)
    assert len(everything) == sum(len(ids) for ids in sent.ids.values())
    assert [r["at"] for r in everything] == sorted((r["at"] for r in everything), reverse=True)
    assert set(_ids(url, model="fast")) == set(sent.ids["fast"])
    assert set(_ids(url, deployment="slow")) == set(sent.ids["slow"])
    assert _ids(url, status="error") == sent.ids["broken"]
    assert set(_ids(url, status="ok")) == {r["id"] for r in everything} - set(sent.ids["broken"])
    assert _ids(url, key=sent.xss_key_id) == sent.ids["xss"]
    slow_ones = _rows(url, min_latency_ms=400)
    # Exactly the rows at or over 400 ms (the slow deployment's, and any other a loaded machine slowed down).
    assert {r["id"] for r in slow_ones} == {r["id"] for r in everything if r["latency_ms"] >= 400}
    assert set(sent.ids["slow"]) <= {r["id"] for r in slow_ones} and len(slow_ones) < len(everything)
    cheapest_slow = min(r["cost_usd"] for r in everything if r["model"] == "slow")
    dear = _rows(url, min_cost=cheapest_slow)
    assert dear and all(r["cost_usd"] >= cheapest_slow for r in dear) and len(dear) < len(everything)
    target = sent.ids["failover"][0]
    assert _ids(url, q=target) == [target]
    prefix = target[:-1]
    assert set(_ids(url, q=prefix)) == {r["id"] for r in everything if r["id"].startswith(prefix)}
    assert _ids(url, q="req_no_such_prefix") == []
    assert _ids(url, guardrail="none", limit=200) == [r["id"] for r in everything]
    assert _ids(url, guardrail="block") == []
    middle = sorted(r["at"] for r in everything)[len(everything) // 2]
    newer = _ids(url, since=repr(middle), limit=200)
    older = _ids(url, until=repr(middle), limit=200)
    assert newer and older and set(newer).isdisjoint(older) and len(newer) + len(older) == len(everything)
    assert set(_ids(url, since="1h", limit=200)) == {r["id"] for r in everything}
    assert _ids(url, until="2001-01-01") == []


def test_pages_hold_each_row_exactly_once(served: tuple[str, Sent]) -> None:
    url, _ = served
    everything = _ids(url, limit=200)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["before"] = cursor
        body = admin(url, "/admin/requests", **params).json()
        seen += [row["id"] for row in body["data"]]
        cursor = body["next"]
        pages += 1
        if cursor is None:
            break
        assert pages < 50
    assert seen == everything and len(set(seen)) == len(seen) and pages == -(-len(everything) // 3)


@pytest.mark.parametrize(
    "params",
    [
        {"min_cost": "nan"},
        {"min_cost": "inf"},
        {"min_cost": "-1"},
        {"min_latency_ms": "1e400"},
        {"limit": "10000"},
        {"limit": "0"},
        {"limit": "ten"},
        {"before": "garbage"},
        {"before": "nan:req_x"},
        {"status": "maybe"},
        {"guardrail": "sometimes"},
        {"since": "yesterday"},
        {"since": "1000y"},
        {"since": "1h", "until": "2h"},
        {"q": "x" * 200},
    ],
)
def test_bad_request_log_params_are_400(served: tuple[str, Sent], params: dict[str, str]) -> None:
    url, _ = served
    response = admin(url, "/admin/requests", **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] in params


def test_one_request_has_its_route_attempts_tokens_headers_and_content(served: tuple[str, Sent]) -> None:
    url, sent = served
    body = admin(url, f"/admin/requests/{sent.ids['failover'][0]}").json()
    assert body["deployment"] == "up" and body["attempt_count"] == 2
    attempts = [(a["deployment"], a["outcome"], a["status"]) for a in body["attempts"]]
    assert attempts == [("down", "overloaded", 503), ("up", "ok", None)]
    assert body["attempts"][0]["error"]
    assert body["route"]["ranked"] == ["down", "up"]
    assert body["tokens"]["prompt"] == body["prompt_tokens"] > 0 and set(body["tokens"]) >= {"cached", "reasoning"}
    headers = body["headers"]
    assert headers["x-modelyard-model"] == "up" and headers["x-modelyard-attempts"].startswith("2; down")
    assert float(headers["x-modelyard-cost-usd"]) == pytest.approx(body["cost_usd"])
    assert body["content_logged"] is True and "Repeat: hello" in body["content"]


# --------------------------------------------------------------------------- the pages


@pytest.fixture(scope="module")
def browser(served: tuple[str, Sent]) -> Iterator[httpx.Client]:
    """A client logged in through the login form (cookie + hidden token, then the session cookie)."""
    url, _ = served
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert token is not None
        answer = client.post("/ui/login", data={"key": MASTER, "login_token": token.group(1), "next": "/ui/"})
        assert answer.status_code == 303 and "modelyard_ui" in client.cookies
        yield client


def test_the_overview_page(served: tuple[str, Sent], browser: httpx.Client) -> None:
    _, sent = served
    page = browser.get("/ui/", params={"range": "15m"})
    assert page.status_code == 200 and "server-timing" in page.headers
    text = page.text
    assert text.count("<h1>") == 1 and "<h1>Overview</h1>" in text and 'data-refresh="' in text
    for metric in ("requests", "rps", "error_rate", "p50", "p95", "cost", "cost_per_hour"):
        assert f'data-metric="{metric}"' in text
    total = sum(len(ids) for ids in sent.ids.values())
    assert f'data-metric="requests"><div class="label">Requests</div><div class="value">{total}<' in text
    for dim in ("model", "deployment", "key"):
        assert f'data-by="{dim}"' in text
    assert text.count('<svg class="chart"') == 3 and 'class="ranges"' in text
    assert 'href="/ui/?range=15m&amp;model=fast"' in text and 'href="/ui/requests?model=fast"' in text
    assert "&lt;script&gt;alert(" in text and XSS not in text  # the key's name, escaped
    assert "bucket" in text and MASTER not in text


def test_the_request_log_page(served: tuple[str, Sent], browser: httpx.Client) -> None:
    _, sent = served
    page = browser.get("/ui/requests", params={"model": "fast", "limit": "4"})
    assert page.status_code == 200
    text = page.text
    assert "<h1>Requests</h1>" in text and 'id="filters"' in text and 'id="requests"' in text
    shown = re.findall(r'<tr data-request-id="([^"]+)"', text)
    assert len(shown) == 4 and set(shown) <= set(sent.ids["fast"])
    older = re.search(r'<a id="older" href="([^"]+)"', text)
    assert older is not None
    rest = re.findall(r'<tr data-request-id="([^"]+)"', browser.get(html.unescape(older.group(1))).text)
    assert sorted(shown + rest) == sorted(sent.ids["fast"])
    for name in ("q", "key", "model", "deployment", "status", "guardrail", "min_cost", "min_latency_ms", "since"):
        assert f'name="{name}"' in text
    key_page = browser.get("/ui/requests", params={"key": sent.xss_key_id}).text
    assert "&lt;script&gt;alert(" in key_page and XSS not in key_page
    bad = browser.get("/ui/requests", params={"limit": "10000"})
    assert bad.status_code == 400 and "limit" in bad.text


def test_a_failed_over_request_page_shows_both_attempts_and_the_error(
    served: tuple[str, Sent], browser: httpx.Client
) -> None:
    url, sent = served
    request_id = sent.ids["failover"][0]
    error = admin(url, f"/admin/requests/{request_id}").json()["attempts"][0]["error"]
    page = browser.get(f"/ui/requests/{request_id}")
    assert page.status_code == 200
    text = page.text
    assert "<h1>Request <span" in text and request_id in text
    assert 'data-attempt="1"' in text and 'data-attempt="2"' in text and 'data-attempt="3"' not in text
    assert html.escape(error) in text
    assert 'id="attempts"' in text and 'aria-label="attempts"' in text  # the waterfall
    assert re.search(r'data-candidate="up">.*?badge chosen', text, re.S)
    assert re.search(r'data-candidate="down">.*?badge kept', text, re.S)
    assert "ui.explain_sample" in text and "x-modelyard-explain: 1" in text
    assert '<dl class="facts" id="headers">' in text and "x-modelyard-attempts" in text
    assert browser.get("/ui/requests/req_unknown").status_code == 404


def test_logged_content_and_key_names_are_escaped(served: tuple[str, Sent], browser: httpx.Client) -> None:
    _, sent = served
    text = browser.get(f"/ui/requests/{sent.ids['xss'][0]}").text
    content = re.search(r'<pre id="content">(.*?)</pre>', text, re.S)
    assert content is not None and "&lt;script&gt;" in content.group(1)
    assert "<script>alert" not in text


def test_pages_without_a_session_redirect_to_login(served: tuple[str, Sent]) -> None:
    url, sent = served
    for path in ("/ui/", "/ui/requests", f"/ui/requests/{sent.ids['fast'][0]}"):
        response = httpx.get(url + path, timeout=30)
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/login")
