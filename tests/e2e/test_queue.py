"""The admission queue from the client's side: the real gateway (uvicorn on loopback) over the simulator,
driven by the official openai and anthropic SDKs.

Each test has its own model and simulated model, so one test's queue history (class passes, observed
rates) and the simulator's counters never leak into another's. A deployment is saturated by
`max_concurrency: 1` and a slow simulated model (its `ttft_ms`), or by an RPM bucket one request deep
(`burst_s: 1`); "in flight" is read from the simulator's request count, "queued" from GET /admin/queues.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import Fleet, RateLimit, SimModel
from modelyard.sim.server import SimServer

MASTER = "sk-master-queue-e2e-0123456789"
CLASSES = ("interactive", "default", "batch")
#: Generous for a loaded 2-core box: every wait in these tests is polled against a deadline, never slept.
POLL_S = 10.0
#: The simulated latency of a request behind a holder (`holding`): quick, so the tests stay short.
QUICK_MS = 20.0


def _sim_models() -> list[SimModel]:
    def quick(name: str) -> SimModel:  # slowed down while a test holds its deployment (`holding`)
        return SimModel(name=name, ttft_ms=QUICK_MS, output_tokens=3)

    return [
        quick("sim-hold"),  # 1: a queued request completes
        SimModel(name="sim-paced", output_tokens=3),  # 2: shed at once (gateway rpm 60, burst 1)
        quick("sim-gone"),  # 3: the client leaves the queue
        quick("sim-prio"),  # 4: priority capped, seen by order
        SimModel(name="sim-quick", output_tokens=3),  # 4: unknown priority (never saturated)
        quick("sim-narrow"),  # 5: a full queue (second gateway)
        # 6: a burst; the provider's own limit is twice the gateway's, so a 429 from it would be the
        # gateway's limiter overrunning the provider.
        SimModel(name="sim-burst", ttft_ms=120, output_tokens=3, rate_limit=RateLimit(rpm=2400, burst_s=2)),
        quick("sim-tier-primary"),  # 7: a saturation tier
        SimModel(name="sim-cheap", output_tokens=3),
        quick("sim-stream"),  # 8: streaming
    ]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(Fleet(models=_sim_models())) as server:
        yield server


def _deployment(sim: SimServer, name: str, model: str, limits: str = "{max_concurrency: 1}") -> str:
    return f"""  - name: {name}
    provider: openai
    model: {model}
    api_base: {sim.openai_base}
    api_key: sim
    price: {{input: 1, output: 2}}
    limits: {limits}
    timeouts: {{first_token: 20, total: 30}}
"""


def _config(sim: SimServer, store: Path) -> str:
    deployments = "".join(
        [
            _deployment(sim, "hold@sim", "sim-hold"),
            _deployment(sim, "paced@sim", "sim-paced", "{rpm: 60, burst_s: 1}"),
            _deployment(sim, "gone@sim", "sim-gone"),
            _deployment(sim, "prio@sim", "sim-prio"),
            _deployment(sim, "quick@sim", "sim-quick", "{}"),
            _deployment(sim, "burst@sim", "sim-burst", "{rpm: 1200, burst_s: 1, max_concurrency: 4}"),
            _deployment(sim, "primary@sim", "sim-tier-primary"),
            _deployment(sim, "cheap@sim", "sim-cheap", "{}"),
            _deployment(sim, "stream@sim", "sim-stream"),
        ]
    )
    return f"""
deployments:
{deployments}
models:
  hold: {{candidates: [hold@sim]}}
  paced: {{candidates: [paced@sim]}}
  gone: {{candidates: [gone@sim]}}
  prio: {{candidates: [prio@sim]}}
  quick: {{candidates: [quick@sim]}}
  burst: {{candidates: [burst@sim], retries: 0}}
  tiered:
    candidates: [primary@sim]
    fallbacks: [{{model: cheap-model, when: saturated}}]
  cheap-model: {{candidates: [cheap@sim]}}
  streamed: {{candidates: [stream@sim]}}
access:
  master_key: {MASTER}
spend:
  store: {store}
  flush_interval_s: 0.05
"""


class Gateway:
    def __init__(self, url: str, store: Path) -> None:
        self.url = url
        self.store = store


@pytest.fixture(scope="module")
def gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    store = tmp_path_factory.mktemp("queue-gw") / "modelyard.db"
    config = parse_config(_config(sim, store), env={})
    with BackgroundServer(create_app(config)) as server:
        yield Gateway(server.url, store)


@pytest.fixture(scope="module")
def narrow_gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose queue holds 2 requests per key and 3 for the model `narrow`."""
    store = tmp_path_factory.mktemp("narrow-gw") / "modelyard.db"
    text = f"""
deployments:
{_deployment(sim, "narrow@sim", "sim-narrow")}
models:
  narrow: {{candidates: [narrow@sim], queue: {{max_length: 3}}}}
queue: {{max_per_key: 2}}
access:
  master_key: {MASTER}
spend:
  store: {store}
"""
    with BackgroundServer(create_app(parse_config(text, env={}))) as server:
        yield Gateway(server.url, store)


# --------------------------------------------------------------------------- helpers


def sdk(url: str, key: str = MASTER) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def prompt(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@dataclass(frozen=True)
class Answer:
    """A chat completion through the openai SDK, with the response's status and headers."""

    status: int
    headers: httpx.Headers
    completion: Any


async def chat(url: str, model: str, text: str, *, key: str = MASTER, **kwargs: Any) -> Answer:
    async with sdk(url, key) as client:
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=prompt(text), **kwargs)
        return Answer(raw.http_response.status_code, raw.headers, raw.parse())


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = POLL_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def sim_stats(sim: SimServer, model: str) -> dict[str, Any]:
    stats: dict[str, Any] = (await asyncio.to_thread(sim.stats))["models"].get(model, {})
    return stats


async def started_upstream(sim: SimServer, model: str, n: int) -> None:
    """Wait until the simulator has `n` requests of `model` (it counts one as it arrives, before its ttft)."""

    async def check() -> bool:
        count: int = (await sim_stats(sim, model)).get("requests", 0)
        return count >= n

    await until(check, f"{n} requests at {model}")


async def queue_of(url: str, model: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(url + "/admin/queues", headers={"Authorization": f"Bearer {MASTER}"})
    assert answer.status_code == 200, answer.text
    empty = {"depth": 0, "classes": {c: {"depth": 0} for c in CLASSES}}
    found: dict[str, Any] = answer.json()["models"].get(model, empty)
    return found


async def queued(url: str, model: str, depth: int) -> dict[str, Any]:
    """Wait until `model`'s queue holds at least `depth` requests; its snapshot then."""

    async def check() -> dict[str, Any] | None:
        snapshot = await queue_of(url, model)
        return snapshot if snapshot["depth"] >= depth else None

    found: dict[str, Any] = await until(check, f"{depth} waiting for {model}")
    return found


async def received(sim: SimServer, model: str) -> list[str]:
    """The user messages `model` received, oldest first (the simulator keeps the last 16)."""
    async with httpx.AsyncClient(timeout=30) as http:
        log = (await http.get(f"{sim.url}/_sim/requests/{model}")).json()["requests"]
    return [json.loads(r["body"])["messages"][-1]["content"] for r in log]


async def make_key(url: str, **body: Any) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        made = await http.post(url + "/admin/keys", json=body, headers={"Authorization": f"Bearer {MASTER}"})
    assert made.status_code == 200, made.text
    key: str = made.json()["key"]
    return key


def queue_ms(raw: Answer | Any) -> float:
    return float(raw.headers["x-modelyard-queue-ms"])


def started(coro: Awaitable[Any]) -> asyncio.Task[Any]:
    return asyncio.ensure_future(coro)


@asynccontextmanager
async def holding(
    sim: SimServer, url: str, model: str, sim_model: str, hold_ms: float = 2000.0
) -> AsyncIterator[asyncio.Task[Answer]]:
    """One slow request (`hold_ms` at the simulator) holding `model`'s only slot; yields once it is at the
    simulator. On the way out the simulated model turns quick (the holder keeps the latency it drew on
    arrival), so what waited behind it is served at once, and the holder is awaited."""
    await asyncio.to_thread(sim.set_model, sim_model, ttft_ms=hold_ms)
    before = (await sim_stats(sim, sim_model)).get("requests", 0)
    holder = started(chat(url, model, "holder"))
    try:
        await started_upstream(sim, sim_model, before + 1)
        yield holder
    finally:
        await asyncio.to_thread(sim.set_model, sim_model, ttft_ms=QUICK_MS)
        raw = await holder
        assert raw.status == 200
        assert queue_ms(raw) == 0.0  # it went straight on


# --------------------------------------------------------------------------- 1. a queued request is served


async def test_a_queued_request_completes_when_the_slot_frees(gateway: Gateway, sim: SimServer) -> None:
    async with holding(sim, gateway.url, "hold", "sim-hold"):
        waiter = started(chat(gateway.url, "hold", "waiter"))
        await queued(gateway.url, "hold", 1)
        assert not waiter.done()
    raw = await waiter
    assert raw.status == 200
    assert raw.completion.choices[0].message.content
    # It waited for the holder's ~0.8 s call, not a moment (a generous floor: the holder may be half done).
    assert queue_ms(raw) > 100.0
    assert raw.headers["x-modelyard-model"] == "hold@sim"
    assert (await sim_stats(sim, "sim-hold"))["requests"] == 2
    assert (await queue_of(gateway.url, "hold"))["depth"] == 0


# --------------------------------------------------------------------------- 2. a deadline that cannot be met


@asynccontextmanager
async def backlog(gateway: Gateway, sim: SimServer) -> AsyncIterator[None]:
    """`paced` (60 RPM, a bucket one request deep) with requests waiting; they are dropped after."""
    before = (await sim_stats(sim, "sim-paced")).get("requests", 0)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=20)) as http:
        body = {"model": "paced", "messages": prompt("backlog")}
        headers = {"Authorization": f"Bearer {MASTER}"}
        tasks = [started(http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers)) for _ in range(5)]
        try:
            await started_upstream(sim, "sim-paced", before + 1)  # the bucket's one request went
            await queued(gateway.url, "paced", 2)
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    # The cancelled clients closed their connections: they leave the queue.
    await until(lambda: _empty(gateway.url, "paced"), "the backlog left")


async def _empty(url: str, model: str) -> bool:
    depth: int = (await queue_of(url, model))["depth"]
    return depth == 0


async def test_an_unmeetable_deadline_is_refused_at_once_openai(gateway: Gateway, sim: SimServer) -> None:
    async with backlog(gateway, sim):
        depth = (await queue_of(gateway.url, "paced"))["depth"]
        async with sdk(gateway.url) as client:
            begun = time.monotonic()
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(
                    model="paced", messages=prompt("impatient"), extra_headers={"x-modelyard-timeout-ms": "1000"}
                )
            elapsed = time.monotonic() - begun
        assert (await queue_of(gateway.url, "paced"))["depth"] <= depth  # it never joined
    error = caught.value
    assert error.status_code == 429
    assert elapsed < 0.5, f"refused after {elapsed:.3f} s: it waited instead of being shed"
    assert isinstance(error.body, dict)
    assert error.body["code"] == "queue_deadline"
    assert error.body["type"] == "rate_limit_error"
    assert "saturated" in error.body["message"] and "deadline" in error.body["message"]
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["x-request-id"]
    assert "impatient" not in await received(sim, "sim-paced")


async def test_an_unmeetable_deadline_is_refused_at_once_anthropic(gateway: Gateway, sim: SimServer) -> None:
    async with backlog(gateway, sim):
        client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=MASTER, max_retries=0, timeout=30)
        async with client:
            begun = time.monotonic()
            with pytest.raises(anthropic.RateLimitError) as caught:
                await client.messages.create(
                    model="paced",
                    max_tokens=16,
                    messages=[{"role": "user", "content": "impatient-anthropic"}],
                    extra_headers={"x-modelyard-timeout-ms": "1000"},
                )
            elapsed = time.monotonic() - begun
    error = caught.value
    assert error.status_code == 429
    assert elapsed < 0.5, f"refused after {elapsed:.3f} s"
    body = error.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] == "rate_limit_error"
    assert "deadline" in body["error"]["message"]
    assert int(error.response.headers["retry-after"]) >= 1
    assert "impatient-anthropic" not in await received(sim, "sim-paced")


# --------------------------------------------------------------------------- 3. the client goes away


async def test_a_client_that_leaves_is_removed_from_the_queue(gateway: Gateway, sim: SimServer) -> None:
    async with holding(sim, gateway.url, "gone", "sim-gone") as holder:
        http = httpx.AsyncClient(timeout=60)
        leaver = started(
            http.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "gone", "messages": prompt("leaver")},
                headers={"Authorization": f"Bearer {MASTER}"},
            )
        )
        await queued(gateway.url, "gone", 1)
        leaver.cancel()
        await asyncio.gather(leaver, return_exceptions=True)
        await http.aclose()
        left = time.monotonic()
        await until(lambda: _empty(gateway.url, "gone"), "the leaver removed", timeout_s=1.0)
        assert time.monotonic() - left <= 1.0
        assert not holder.done()  # it left while the slot was still held, not by being served
    # The slot is free now: had the leaver stayed, the dispatcher would have sent it upstream.
    await asyncio.sleep(0.3)
    stats = await sim_stats(sim, "sim-gone")
    assert stats["requests"] == 1, stats
    assert await received(sim, "sim-gone") == ["holder"]


# --------------------------------------------------------------------------- 4. priority capped by the key


@pytest.mark.parametrize("how", ["header", "extra_body"])
async def test_a_key_cannot_ask_above_its_maximum(gateway: Gateway, sim: SimServer, how: str) -> None:
    capped = await make_key(gateway.url, name=f"capped-{how}", priority="batch")
    urgent = await make_key(gateway.url, name=f"urgent-{how}", priority="interactive")
    ask: dict[str, Any] = (
        {"extra_headers": {"x-modelyard-priority": "interactive"}}
        if how == "header"
        else {"extra_body": {"modelyard": {"priority": "interactive"}}}
    )
    async with holding(sim, gateway.url, "prio", "sim-prio"):
        asked_high = started(chat(gateway.url, "prio", f"capped-{how}", key=capped, **ask))
        snapshot = await queued(gateway.url, "prio", 1)
        assert snapshot["classes"]["batch"]["depth"] == 1  # asked for interactive, waits as batch
        assert snapshot["classes"]["interactive"]["depth"] == 0
        genuine = started(chat(gateway.url, "prio", f"genuine-{how}", key=urgent))
        snapshot = await queued(gateway.url, "prio", 2)
        assert snapshot["classes"]["interactive"]["depth"] == 1
    first, second = await asyncio.gather(genuine, asked_high)
    assert first.status == second.status == 200
    # Queued second, served first: the capped request really waited as batch.
    assert (await received(sim, "sim-prio"))[-3:] == ["holder", f"genuine-{how}", f"capped-{how}"]
    assert queue_ms(first) < queue_ms(second)


@pytest.mark.parametrize(
    ("ask", "param"),
    [
        ({"extra_headers": {"x-modelyard-priority": "urgent"}}, "x-modelyard-priority"),
        ({"extra_body": {"modelyard": {"priority": "urgent"}}}, "modelyard.priority"),
    ],
)
async def test_an_unknown_priority_is_a_400_naming_the_classes(
    gateway: Gateway, sim: SimServer, ask: dict[str, Any], param: str
) -> None:
    before = (await sim_stats(sim, "sim-quick")).get("requests", 0)
    async with sdk(gateway.url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="quick", messages=prompt("who am i"), **ask)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == param
    assert body["code"] == "unknown_priority"
    assert "'urgent'" in body["message"] and "interactive, default, batch" in body["message"]
    assert (await sim_stats(sim, "sim-quick")).get("requests", 0) == before
    # A known one on an idle model goes straight on.
    good = json.loads(json.dumps(ask).replace('"urgent"', '"batch"'))
    raw = await chat(gateway.url, "quick", "fine", **good)
    assert raw.status == 200 and queue_ms(raw) == 0.0


# --------------------------------------------------------------------------- 5. a full queue


async def test_a_full_queue_refuses_with_a_clear_message(narrow_gateway: Gateway, sim: SimServer) -> None:
    url = narrow_gateway.url
    key_a = await make_key(url, name="tenant-a")
    key_b = await make_key(url, name="tenant-b")
    async with holding(sim, url, "narrow", "sim-narrow") as holder:
        waiters = [started(chat(url, "narrow", f"a{i}", key=key_a)) for i in range(2)]
        await queued(url, "narrow", 2)
        async with sdk(url, key_a) as client:
            with pytest.raises(openai.RateLimitError) as per_key:
                await client.chat.completions.create(model="narrow", messages=prompt("a-third"))
        waiters.append(started(chat(url, "narrow", "b0", key=key_b)))
        await queued(url, "narrow", 3)
        async with sdk(url, key_b) as client:
            begun = time.monotonic()
            with pytest.raises(openai.RateLimitError) as full:
                await client.chat.completions.create(model="narrow", messages=prompt("b-second"))
            assert time.monotonic() - begun < 0.5
        assert not holder.done()  # both refused while the slot was held (else the test proves nothing)
    key_body, full_body = per_key.value.body, full.value.body
    assert isinstance(key_body, dict) and isinstance(full_body, dict)
    assert key_body["code"] == "queue_full"
    assert "this key already has 2 requests waiting for `narrow`" in key_body["message"]
    assert full_body["code"] == "queue_full"
    assert "the queue of `narrow` is full (3 requests waiting)" in full_body["message"]
    for error in (per_key.value, full.value):
        assert int(error.response.headers["retry-after"]) >= 1
    # Those it took are all served; the refused never reached the provider.
    answers = await asyncio.gather(*waiters)
    assert [a.status for a in answers] == [200, 200, 200]
    seen = await received(sim, "sim-narrow")
    assert sorted(seen) == ["a0", "a1", "b0", "holder"]


# --------------------------------------------------------------------------- 6. nothing lost, nothing billed twice


async def test_a_burst_is_answered_once_each_and_billed_once_each(gateway: Gateway, sim: SimServer) -> None:
    """40 concurrent requests, three classes, queue waits of 0.4-1 s (keys' `max_queue_ms`: it bounds the
    wait only, so one that got its turn is not cut short upstream) at a deployment that serves ~20 a second."""
    keys = {
        "interactive": await make_key(gateway.url, name="burst-i", priority="interactive", max_queue_ms=800),
        "default": await make_key(gateway.url, name="burst-d", priority="default", max_queue_ms=1000),
        "batch": await make_key(gateway.url, name="burst-b", priority="batch", max_queue_ms=400),
    }
    names = list(keys)

    async def one(i: int) -> tuple[int, str, float | None]:
        async with sdk(gateway.url, keys[names[i % 3]]) as client:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="burst", messages=prompt(f"burst {i}"), max_tokens=8
                )
            except openai.RateLimitError as error:
                body = error.body if isinstance(error.body, dict) else {}
                assert body.get("code") in ("queue_deadline", "queue_timeout"), error.body
                assert int(error.response.headers["retry-after"]) >= 1
                return 429, error.response.headers["x-request-id"], None
            raw.parse()
            return (
                raw.http_response.status_code,
                raw.headers["x-request-id"],
                float(raw.headers["x-modelyard-cost-usd"]),
            )

    results = await asyncio.gather(*(one(i) for i in range(40)))
    served = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 429]
    assert len(served) + len(shed) == 40, results  # one final answer each (the SDK raises on anything else)
    assert served and shed, f"{len(served)} served, {len(shed)} shed: the burst did not saturate the deployment"
    assert len({r[1] for r in results}) == 40

    stats = await sim_stats(sim, "sim-burst")
    assert stats["accepted"] == len(served), stats  # each served request reached the provider once
    assert stats["requests"] == len(served), stats  # and no shed one did
    assert stats["rate_limited"] == 0, stats  # the gateway's buckets kept under the provider's limit

    rows = await spend_rows(gateway, "burst", 40)
    assert sorted(rows) == sorted(r[1] for r in results), "one spend row per request, no more"
    for status, request_id, cost in results:
        row = rows[request_id]
        if status == 200:
            assert row["status"] == "ok" and row["cost_usd"] > 0, row
            assert row["cost_usd"] == pytest.approx(cost, rel=1e-6, abs=1e-9)
            assert row["deployment"] == "burst@sim"
        else:  # refused by the queue: recorded as an error that cost nothing, with no deployment
            assert row["status"] == "error" and row["cost_usd"] == 0.0, row
            assert row["error_kind"] == "http_429" and row["deployment"] in (None, ""), row
            assert row["completion_tokens"] == 0
    assert (await queue_of(gateway.url, "burst"))["depth"] == 0
    # Nothing the shed requests held is kept: the deployment serves the next request within a short bound.
    after = await chat(gateway.url, "burst", "after the burst", extra_headers={"x-modelyard-timeout-ms": "3000"})
    assert after.status == 200
    assert (await sim_stats(sim, "sim-burst"))["accepted"] == len(served) + 1


async def spend_rows(gateway: Gateway, model: str, count: int) -> dict[str, dict[str, Any]]:
    """The spend log's rows for `model` by request id, once `count` are written (GET /admin/spend flushes)."""

    async def read() -> dict[str, dict[str, Any]] | None:
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.get(
                gateway.url + "/admin/spend?by=model", headers={"Authorization": f"Bearer {MASTER}"}
            )
        assert answer.status_code == 200, answer.text
        rows = await asyncio.to_thread(_rows, gateway.store, model)
        return rows if len(rows) >= count else None

    found: dict[str, dict[str, Any]] = await until(read, f"{count} spend rows for {model}")
    return found


def _rows(store: Path, model: str) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(store) as conn:
        conn.row_factory = sqlite3.Row
        cursor = conn.execute(
            "SELECT id, status, cost_usd, deployment, error_kind, completion_tokens FROM modelyard_spend"
            " WHERE model = ?",
            (model,),
        )
        rows = [dict(r) for r in cursor.fetchall()]
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "a request id with two spend rows"
    return by_id


# --------------------------------------------------------------------------- 7. saturation tier


async def test_batch_goes_to_the_saturation_tier_and_default_waits(gateway: Gateway, sim: SimServer) -> None:
    async with holding(sim, gateway.url, "tiered", "sim-tier-primary") as holder:
        begun = time.monotonic()
        tiered = await chat(gateway.url, "tiered", "batch-now", extra_headers={"x-modelyard-priority": "batch"})
        elapsed = time.monotonic() - begun
        assert not holder.done()  # answered while the primary was still busy
        assert tiered.headers["x-modelyard-model"] == "cheap@sim"
        assert queue_ms(tiered) == 0.0
        assert elapsed < 0.8
        waiting = started(chat(gateway.url, "tiered", "default-waits"))
        await queued(gateway.url, "tiered", 1)
    waited = await waiting
    assert waited.status == 200
    assert waited.headers["x-modelyard-model"] == "primary@sim"
    assert queue_ms(waited) > 100.0
    assert await received(sim, "sim-cheap") == ["batch-now"]
    assert await received(sim, "sim-tier-primary") == ["holder", "default-waits"]


# --------------------------------------------------------------------------- 8. streaming


async def test_a_queued_stream_completes_and_says_how_long_it_waited(gateway: Gateway, sim: SimServer) -> None:
    async def stream() -> tuple[Any, str]:
        async with sdk(gateway.url) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="streamed", messages=prompt("stream me"), stream=True
            )
            text = ""
            async for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
            return raw, text

    async with holding(sim, gateway.url, "streamed", "sim-stream"):
        streaming = started(stream())
        await queued(gateway.url, "streamed", 1)
    raw, text = await streaming
    assert raw.http_response.status_code == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert queue_ms(raw) > 100.0
    assert text
    assert await received(sim, "sim-stream") == ["holder", "stream me"]
