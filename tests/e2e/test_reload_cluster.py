"""Reload and drain as an operator meets them: real `modelyard serve` processes behind HAProxy (the process
cluster, modelyard.testing.cluster), Redis and PostgreSQL on loopback, the simulator as the provider.

- `modelyard reload --all` reaches every replica through Redis; a price change shows in the next request's
  cost on each; a bad file is refused by each at its `file:line` while traffic goes on.
- SIGHUP reloads one replica; `--watch` (MODELYARD_WATCH=1) reloads on a file change.
- A reload during 200 concurrent streams cuts none of them.
- SIGTERM under load: no request the replica accepted fails, and the spend log has every answered request.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.sim.server import SimServer
from modelyard.testing.cluster import DEFAULT_REDIS, Cluster, default_config
from modelyard.testing.process import CLI

pytestmark = pytest.mark.timeout(240)

PRICE = "price: {input: 0.1, output: 0.4}"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=3) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(sim: SimServer) -> Iterator[Cluster]:
    with Cluster(replicas=3, sim=sim) as running:
        yield running


@pytest.fixture
def config(cluster: Cluster) -> Iterator[Path]:
    """The cluster's config file, put back after the test (and reloaded everywhere)."""
    path = cluster.config_path
    original = path.read_text()
    yield path
    path.write_text(original)
    reload_all(cluster)


def reload_all(cluster: Cluster) -> tuple[int, list[dict[str, object]]]:
    done = subprocess.run(
        [
            *CLI,
            "reload",
            "--all",
            "--redis-url",
            DEFAULT_REDIS,
            "--prefix",
            cluster.prefix,
            "--json",
            "--timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else []


def ask(url: str, cluster: Cluster, model: str = "chat-openai") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "what is the price today"}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=cluster.headers, timeout=30)


def per_token(answer: httpx.Response) -> float:
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    return float(answer.headers["x-modelyard-cost-usd"]) / int(usage["prompt_tokens"] + usage["completion_tokens"])


def generation(url: str, cluster: Cluster) -> int:
    return int(httpx.get(f"{url}/admin/reload", headers=cluster.headers, timeout=10).json()["generation"])


def test_reload_all_changes_the_price_on_every_replica(cluster: Cluster, config: Path) -> None:
    before = [ask(url, cluster) for url in cluster.replica_urls]
    config.write_text(config.read_text().replace(PRICE, "price: {input: 3.0, output: 3.0}", 1))
    status, answers = reload_all(cluster)
    assert status == 0, answers
    assert len(answers) == 3 and all(a["ok"] for a in answers)
    assert len({a["replica"] for a in answers}) == 3
    assert all(a["changes"]["prices_changed"] == ["small@openai"] for a in answers)  # type: ignore[index]
    for url, old in zip(cluster.replica_urls, before, strict=True):
        assert per_token(old) != pytest.approx(3e-6)
        assert per_token(ask(url, cluster)) == pytest.approx(3e-6)


def test_reload_all_refuses_a_bad_file_at_its_line_while_traffic_goes_on(cluster: Cluster, config: Path) -> None:
    text = config.read_text()
    config.write_text(text.replace("chat-openai: {candidates: [small@openai]}", "chat-openai: {candidates: [nope]}"))
    line = next(n for n, row in enumerate(config.read_text().splitlines(), 1) if "[nope]" in row)
    status, answers = reload_all(cluster)
    assert status == 1
    assert len(answers) == 3 and not any(a["ok"] for a in answers)
    for answer in answers:
        assert any(f"{config}:{line}" in str(e) and "nope" in str(e) for e in answer["errors"]), answer  # type: ignore[attr-defined]
    for url in [cluster.url, *cluster.replica_urls]:
        assert ask(url, cluster).status_code == 200  # the old config serves on


def test_sighup_reloads_one_replica(cluster: Cluster) -> None:
    urls = cluster.replica_urls
    before = [generation(url, cluster) for url in urls]
    cluster.signal(1, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while generation(urls[1], cluster) == before[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert generation(urls[1], cluster) == before[1] + 1
    assert [generation(urls[0], cluster), generation(urls[2], cluster)] == [before[0], before[2]]
    assert all(ask(url, cluster).status_code == 200 for url in urls)


def test_watch_reloads_on_a_change(sim: SimServer) -> None:
    with Cluster(replicas=1, sim=sim, redis_url=None, postgres_dsn=None, env={"MODELYARD_WATCH": "1"}) as one:
        url = one.replica_urls[0]
        assert per_token(ask(url, one)) < 1e-6
        one.config_path.write_text(one.config_path.read_text().replace(PRICE, "price: {input: 5.0, output: 5.0}", 1))
        started = time.monotonic()
        while per_token(ask(url, one)) != pytest.approx(5e-6) and time.monotonic() - started < 10:
            time.sleep(0.1)
        waited = time.monotonic() - started
        assert per_token(ask(url, one)) == pytest.approx(5e-6)
        assert waited < 3.0  # polled once a second, then 0.2 s to settle
        one.config_path.write_text("deployments: [oops\n")
        time.sleep(2.0)
        assert per_token(ask(url, one)) == pytest.approx(5e-6)  # a broken write is refused, the last good one serves
        assert "refused" in one.log(0)


async def _stream(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> str:
    body = {"model": "chat", "messages": [{"role": "user", "content": "a long story please"}], "stream": True}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        return "".join([part async for part in response.aiter_text()])


def test_a_reload_during_200_streams_cuts_none(cluster: Cluster, config: Path, sim: SimServer) -> None:
    sim.set_model("sim-small", tokens_per_second=15, output_tokens={"min": 60, "max": 60})  # ~4 s a stream

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            streams = [asyncio.create_task(_stream(client, cluster.url, cluster.headers)) for _ in range(200)]
            await asyncio.sleep(0.4)
            new_text = config.read_text().replace(PRICE, "price: {input: 0.2, output: 0.5}", 1)  # noqa: ASYNC240
            await asyncio.to_thread(config.write_text, new_text)
            status, answers = await asyncio.to_thread(reload_all, cluster)
            assert status == 0 and len(answers) == 3, answers
            open_streams = sum(not s.done() for s in streams)
            assert open_streams >= 150, f"only {open_streams} streams were open at the reload: nothing was tested"
            return await asyncio.gather(*streams)

    try:
        texts = asyncio.run(run())
    finally:
        sim.set_model("sim-small", tokens_per_second=250, output_tokens={"min": 20, "max": 80})
    assert len(texts) == 200
    assert all(text.rstrip().endswith("data: [DONE]") for text in texts)
    assert not any('"error"' in text for text in texts)


def test_sigterm_under_load_fails_no_accepted_request_and_logs_every_one(sim: SimServer) -> None:
    text = default_config().replace("drain: {grace_s: 0.5, deadline_s: 5}", "drain: {grace_s: 1.5, deadline_s: 10}")
    sim.set_model("sim-small", tokens_per_second=100, output_tokens={"min": 20, "max": 40})
    try:
        with Cluster(text, replicas=3, sim=sim) as drained:
            statuses, ids = asyncio.run(_load_with_sigterm(drained))
            assert drained.processes[0] is not None
            code = drained.processes[0].wait(timeout=30)
            assert code in (0, -signal.SIGTERM), drained.log(0)
            assert "draining" in drained.log(0) or "SIGTERM" in drained.log(0)
            for i in (1, 2):
                drained.signal(i, signal.SIGTERM)  # drain the rest too: every spool flushed to PostgreSQL
            for proc in drained.processes[1:]:
                assert proc is not None
                proc.wait(timeout=30)
            rows = asyncio.run(_spend_ids(drained))
    finally:
        sim.set_model("sim-small", tokens_per_second=250, output_tokens={"min": 20, "max": 80})
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(statuses) > 100
    assert ids <= rows, f"{len(ids - rows)} answered requests missing from the spend log"


async def _load_with_sigterm(cluster: Cluster) -> tuple[list[int], set[str]]:
    statuses: list[int] = []
    ids: set[str] = set()
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        while not stop.is_set():
            streaming = n % 2 == 0
            body = {"model": "chat", "messages": [{"role": "user", "content": f"count {n}"}], "stream": streaming}
            try:
                response = await client.post(f"{cluster.url}/v1/chat/completions", json=body, headers=cluster.headers)
            except httpx.HTTPError as exc:
                statuses.append(-1)
                raise AssertionError(f"a request failed at the transport: {exc!r}") from exc
            statuses.append(response.status_code)
            if response.status_code == 200:
                ids.add(response.headers["x-request-id"])
                if streaming:
                    assert response.text.rstrip().endswith("data: [DONE]")

    async with httpx.AsyncClient(timeout=60) as client:
        workers = [asyncio.create_task(worker(client, n)) for n in range(24)]
        await asyncio.sleep(1.0)
        cluster.signal(0, signal.SIGTERM)
        await asyncio.sleep(0.3)
        # Draining: not ready at once (the balancer stops sending), yet still serving within the grace period.
        ready = await client.get(f"{cluster.replica_urls[0]}/health/ready")
        assert (ready.status_code, ready.json()["status"]) == (503, "draining")
        body = {"model": "chat", "messages": [{"role": "user", "content": "still there?"}]}
        direct = await client.post(f"{cluster.replica_urls[0]}/v1/chat/completions", json=body, headers=cluster.headers)
        assert direct.status_code == 200
        ids.add(direct.headers["x-request-id"])
        await asyncio.sleep(3.7)
        stop.set()
        await asyncio.gather(*workers)
    return statuses, ids


async def _spend_ids(cluster: Cluster) -> set[str]:
    import asyncpg

    assert cluster.postgres_dsn is not None
    connection = await asyncpg.connect(cluster.postgres_dsn)
    try:
        rows = await connection.fetch(f'SELECT id FROM "{cluster.schema}".modelyard_spend')
    finally:
        await connection.close()
    return {row["id"] for row in rows}


def test_sighup_to_the_supervisor_reloads_every_worker(sim: SimServer, tmp_path: Path) -> None:
    """`--workers 2`: uvicorn's supervisor would restart its workers on SIGHUP; ours passes it on, and each
    worker reloads in place."""
    from modelyard.testing.process import GatewayProcess

    config = tmp_path / "modelyard.yaml"
    config.write_text(
        default_config(redis=False, postgres=False).replace("${MODELYARD_SIM_URL}", sim.url)
        + "access: {master_key: sk-workers-test}\n"
    )
    headers = {"Authorization": "Bearer sk-workers-test"}
    env = {"MODELYARD_SPOOL_DIR": str(tmp_path / "spool")}
    with GatewayProcess(config, log=tmp_path / "gateway.log", workers=2, env=env) as gateway:
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:  # each fresh connection may land on either worker
            status = httpx.get(f"{gateway.url}/admin/reload", headers=headers, timeout=5).json()
            seen[status["replica"]] = status["generation"]
        assert len(seen) == 2 and set(seen.values()) == {0}, seen
        os.kill(gateway.pid, signal.SIGHUP)
        reloaded: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while len(reloaded) < 2 and time.monotonic() < deadline:
            status = httpx.get(f"{gateway.url}/admin/reload", headers=headers, timeout=5).json()
            if status["generation"] == 1:
                reloaded[status["replica"]] = 1
            time.sleep(0.05)
        assert set(reloaded) == set(seen), (seen, reloaded, gateway.log_text()[-2000:])
