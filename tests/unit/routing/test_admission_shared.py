"""Shared buckets across replicas: two routers on one Redis dispatch a deployment's rate in all, not each
(routing/admission.py with state/redis_rates.py); Redis gone: each keeps to the limit by itself."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest

from modelyard.config.loader import parse_config
from modelyard.routing.router import Router
from tests.unit.routing.test_admission import GatedTransport, ask, through, ticket


def _reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.2).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _reachable(), reason="Redis is not running on 127.0.0.1:6379")

CONFIG = """
deployments:
  - {{name: paced, provider: openai, model: m-paced, api_base: "http://paced/v1", price: {{input: 1, output: 2}},
     limits: {{rpm: 600, burst_s: 0.1}}}}
models:
  rated: {{candidates: [paced]}}
state: {{redis_url: "{url}", prefix: "{prefix}", redis_timeout_s: 0.3}}
queue: {{max_wait_ms: 10000}}
"""


async def replica(url: str, prefix: str, stamps: list[float]) -> Router:
    router = Router(parse_config(CONFIG.format(url=url, prefix=prefix)), seed=1)
    await router.start()
    transport = GatedTransport()
    loop = asyncio.get_running_loop()
    send = transport.send

    async def stamped(call, timeouts, adapter):  # type: ignore[no-untyped-def]
        stamps.append(loop.time())
        return await send(call, timeouts, adapter)

    transport.send = stamped  # type: ignore[method-assign]
    through(router, transport)
    return router


async def test_two_replicas_dispatch_one_deployment_rate_between_them():
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    stamps: list[float] = []
    a = await replica("redis://127.0.0.1:6379/0", prefix, stamps)
    b = await replica("redis://127.0.0.1:6379/0", prefix, stamps)
    try:
        calls = [r.complete(*ask("rated"), queue=ticket(1, "k", 10)) for r in (a, b) for _ in range(8)]
        answers = await asyncio.gather(*calls)
    finally:
        await a.close()
        await b.close()
    assert len(answers) == 16
    stamps.sort()
    # 600 RPM with a 0.1 s bucket = one call per 0.1 s for both replicas together: 16 calls span >= 1.4 s
    # (each replica alone would allow that rate, so without sharing they would span about 0.7 s).
    assert stamps[-1] - stamps[0] >= 1.35, [round(s - stamps[0], 3) for s in stamps]
    # No 1-second window holds more than the rate allows (10 per second, +1 for the bucket).
    for i, start in enumerate(stamps):
        assert sum(1 for s in stamps[i:] if s < start + 1.0) <= 11


async def test_redis_gone_leaves_each_replica_its_local_buckets():
    stamps: list[float] = []
    a = await replica("redis://127.0.0.1:1/0", "x", stamps)  # nothing listens there
    try:
        answers = await asyncio.gather(*(a.complete(*ask("rated"), queue=ticket(1, "k", 10)) for _ in range(6)))
    finally:
        await a.close()
    assert len(answers) == 6
    stamps.sort()
    assert stamps[-1] - stamps[0] >= 0.45  # still paced by the local bucket: one per 0.1 s
