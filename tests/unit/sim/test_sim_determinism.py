"""Determinism (same seed → same answers and faults), fault rates at volume, and latency honoured."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import httpx
import pytest

from modelyard.sim import SimServer, create_app
from tests.unit.sim.sim_helpers import asgi_call, chat_body, fleet, sse

FAULTY = {
    "name": "m",
    "output_tokens": {"min": 5, "max": 40},
    "faults": {"rate_limit": 0.15, "server_error": 0.1, "malformed": 0.1, "unavailable": 0.05},
}


def run_sequence(sim: SimServer) -> list[tuple[int, str]]:
    """A fixed mix of requests on all wires; (status, answer text or raw body) of each."""
    out = []
    with httpx.Client(timeout=5) as client:
        for i in range(24):
            prompt = f"question {i % 5}"
            if i % 3 == 0:
                r = client.post(sim.openai_base + "/chat/completions", json=chat_body("m", prompt))
            elif i % 3 == 1:
                r = client.post(sim.url + "/v1/messages", json=chat_body("m", prompt, max_tokens=100))
            else:
                r = client.post(
                    sim.gemini_base + "/models/m:generateContent", json={"contents": [{"parts": [{"text": prompt}]}]}
                )
            out.append((r.status_code, _answer(r.content)))
    return out


def _answer(body: bytes) -> str:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.decode()
    if "choices" in data:
        return str(data["choices"][0]["message"]["content"])
    if "content" in data:
        return str(data["content"][0]["text"])
    if "candidates" in data:
        return str(data["candidates"][0]["content"]["parts"][0]["text"])
    return json.dumps(data["error"], sort_keys=True)


def test_same_seed_same_answers_and_same_faults() -> None:
    with SimServer(fleet(FAULTY), seed=11) as a:
        first = run_sequence(a)
        a.reset()
        replay = run_sequence(a)
    with SimServer(fleet(FAULTY), seed=11) as b:
        second = run_sequence(b)
    with SimServer(fleet(FAULTY), seed=12) as c:
        other = run_sequence(c)
    assert first == second == replay
    statuses = [s for s, _ in first]
    assert statuses.count(200) < len(statuses)  # some faults happened ...
    assert statuses.count(200) > len(statuses) // 3  # ... and some answers
    assert first != other


def test_a_repeated_request_gets_a_new_answer_but_the_same_sequence() -> None:
    app = create_app(fleet({"name": "m"}), seed=3)

    async def three() -> list[str]:
        answers = [await asgi_call(app, "POST", "/v1/chat/completions", chat_body()) for _ in range(3)]
        return [a.json()["choices"][0]["message"]["content"] for a in answers]

    first = asyncio.run(three())
    assert len(set(first)) == 3  # the per-model counter moves the draw
    app.reset()
    assert asyncio.run(three()) == first


async def test_fault_rates_within_tolerance_over_a_thousand_requests() -> None:
    rates = {
        "rate_limit": 0.1,
        "server_error": 0.05,
        "unavailable": 0.05,
        "hang": 0.02,
        "reset": 0.03,
        "malformed": 0.1,
        "cut_stream": 0.05,
    }
    app = create_app(fleet({"name": "m", "output_tokens": 8, "faults": rates}), seed=5)
    seen: dict[str, int] = dict.fromkeys(
        ["rate_limit", "server_error", "unavailable", "hang", "dropped", "malformed", "cut", "ok"], 0
    )
    n = 1400
    paths = ["/v1/chat/completions", "/v1/messages", "/v1beta/models/m:streamGenerateContent"]
    for i in range(n):
        path = paths[i % 3]
        body: dict[str, Any] = chat_body(text=f"q{i}", max_tokens=50, stream=i % 2 == 0)
        if path.startswith("/v1beta"):
            body = {"contents": [{"parts": [{"text": f"q{i}"}]}]}
        r = await asgi_call(app, "POST", path, body, query=b"alt=sse")
        seen[_classify(r)] += 1
    stats = app.stats.snapshot()["models"]["m"]
    assert stats["requests"] == n
    for fault, rate in rates.items():
        expected = n * rate
        tolerance = 4 * (n * rate * (1 - rate)) ** 0.5
        assert abs(stats["faults"][fault] - expected) <= tolerance, (fault, stats["faults"][fault], expected)
    # what the clients saw agrees with the counters
    for fault in ("rate_limit", "server_error", "unavailable", "malformed", "hang"):
        assert seen[fault] == stats["faults"][fault], fault
    # a reset drops the connection; a cut stream ends early and cleanly; a cut plain request drops
    assert seen["dropped"] + seen["cut"] == stats["faults"]["reset"] + stats["faults"]["cut_stream"]
    assert seen["dropped"] >= stats["faults"]["reset"] and seen["cut"] > 0
    assert seen["ok"] == stats["successes"] == n - sum(stats["faults"].values())


def _classify(r: Any) -> str:
    if r.status == 0:
        return "hang"  # the client (our fake receive) left before anything was sent
    if r.status in (429, 500, 503, 529):
        return {429: "rate_limit", 500: "server_error", 503: "unavailable", 529: "unavailable"}[r.status]
    if r.aborted:
        return "dropped"
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = sse(r.body)
        try:
            [json.loads(d) for _, d in events if d != b"[DONE]"]
        except json.JSONDecodeError:
            return "malformed"
        return "ok" if _ends(r) else "cut"
    try:
        json.loads(r.body)
    except json.JSONDecodeError:
        return "malformed"
    return "ok"


def _ends(r: Any) -> bool:
    events = sse(r.body)
    if not events:
        return False
    name, data = events[-1]
    return data == b"[DONE]" or name == "message_stop" or b'"finishReason"' in data


async def test_fixed_ttft_and_token_pacing_are_honoured() -> None:
    app = create_app(
        fleet(
            {"name": "slow", "ttft_ms": 120, "tokens_per_second": 400},
            {"name": "lagged", "ttft_ms": {"p50": 40, "p95": 80}},
        )
    )
    started = time.monotonic()
    r = await asgi_call(app, "POST", "/v1/chat/completions", chat_body("slow", "Repeat: " + "word " * 40))
    elapsed = time.monotonic() - started
    tokens = r.json()["usage"]["completion_tokens"]  # 200 characters: 50 tokens → 0.125 s at 400 tok/s
    assert tokens == 50
    assert 0.12 + 0.125 - 0.01 <= elapsed < 1.5

    timeline: list[float] = []
    started = time.monotonic()

    async def send_timed(path: str, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": []}
        done = False

        async def receive() -> dict[str, Any]:
            nonlocal done
            if done:
                await asyncio.sleep(10)
            done = True
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: Any) -> None:
            if message.get("body"):
                timeline.append(time.monotonic() - started)

        await app(scope, receive, send)

    await send_timed("/v1/chat/completions", chat_body("slow", "Repeat: " + "word " * 40, stream=True))
    assert 0.11 <= timeline[0] < 0.6  # the first event after the ttft
    assert len(timeline) > 10  # paced: many writes, not one
    assert timeline[-1] - timeline[0] >= 0.09  # ~50 tokens at 400 tok/s

    async def one() -> float:
        t = time.monotonic()
        await asgi_call(app, "POST", "/v1/chat/completions", chat_body("lagged", "Repeat: x"))
        return time.monotonic() - t

    durations = sorted(await asyncio.gather(*[one() for _ in range(60)]))
    assert 0.034 <= statistics.median(durations) <= 0.075  # p50 40 ms, well below the p95 of 80
    assert durations[-1] <= 0.08 * 4 + 0.05  # the tail is capped


async def test_ttft_header_overrides_and_zero_latency_is_free() -> None:
    app = create_app(fleet({"name": "slow", "ttft_ms": 3000, "tokens_per_second": 0}))
    started = time.monotonic()
    path = "/v1/chat/completions"
    r = await asgi_call(app, "POST", path, chat_body("slow"), headers={"x-sim-ttft-ms": "0"})
    assert r.status == 200 and time.monotonic() - started < 0.5
    started = time.monotonic()
    await asgi_call(app, "POST", path, chat_body("slow"), headers={"x-sim-ttft-ms": "80"})
    assert 0.079 <= time.monotonic() - started < 0.5
    r = await asgi_call(app, "POST", path, chat_body("slow"), headers={"x-sim-ttft-ms": "soon"})
    assert r.status == 400
    instant = create_app(fleet({"name": "m"}))
    started = time.monotonic()
    for _ in range(200):
        await asgi_call(instant, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert time.monotonic() - started < 1.0  # no sleeps at zero latency (~0.1 ms a request)


@pytest.mark.parametrize("wire_path", ["/v1/chat/completions", "/v1/messages"])
async def test_every_model_serves_every_wire(wire_path: str) -> None:
    app = create_app()
    for name in ("sim-large", "sim-medium", "sim-small"):
        r = await asgi_call(
            app, "POST", wire_path, chat_body(name, "Repeat: ok", max_tokens=10), headers={"x-sim-ttft-ms": "0"}
        )
        assert r.status == 200 and r.json()["model"] == name
