"""An unexpected exception in the middle of a request gives everything back, seen through the real server:
the key's budget reservation, the deployment's in-flight slot and its RPM/TPM window (issue #10, item 3).

The exception is injected into the provider adapter of an in-process gateway (uvicorn on loopback), the only
way to make the gateway's own code fail on purpose; the client sees a 500 without a traceback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.app import Gateway
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

MASTER = "sk-master-test-leaks-0123456789"
#: Requests the deployment served so far in this module (its RPM window counts these and nothing else).
SERVED: list[str] = []


class Boom(RuntimeError):
    pass


class Faulty:
    """The real adapter, with Boom raised from one method while `stage` names it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stage: str | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.stage == name:
                raise Boom(name)
            return attr(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def served(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Gateway, Faulty]]:
    store = tmp_path_factory.mktemp("leaks") / "modelyard.db"
    config = parse_config(
        f"""
deployments:
  - {{name: capped, provider: openai, model: sim-small, api_base: "{sim.url}/v1", api_key: sim,
     price: {{input: 3, output: 15}}, limits: {{rpm: 1, tpm: 100000000, max_concurrency: 2, burst_s: 3600}}}}
models:
  capped: {{candidates: [capped]}}
access:
  master_key: {MASTER}
spend:
  store: {store}
  flush_interval_s: 0.05
""",
        env={},
    )
    gateway = create_app(config)
    faulty = Faulty(gateway.router.adapters["openai"])
    gateway.router.adapters["openai"] = faulty  # the executor shares this dict
    with BackgroundServer(gateway) as server:
        yield server.url, gateway, faulty


def admin(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=10, **kwargs)


@pytest.mark.parametrize(
    ("stage", "stream"),
    [
        ("chat_call", False),
        ("parse_chat", False),
        ("chat_call", True),
        ("stream_translator", True),
    ],
)
def test_an_injected_exception_returns_reservation_slot_and_window(
    served: tuple[str, Gateway, Faulty], stage: str, stream: bool
) -> None:
    url, gateway, faulty = served
    made = admin(url, "POST", "/admin/keys", json={"name": f"leak-{stage}-{stream}", "budget_usd": 5.0}).json()
    headers = {"Authorization": f"Bearer {made['key']}"}
    body = {"model": "capped", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": stream}
    faulty.stage = stage
    try:
        for _ in range(3):  # more than max_concurrency: a leaked slot would make the next request a 503
            resp = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
            assert resp.status_code == 500, resp.text
            assert "Traceback" not in resp.text and "Boom" not in resp.text
    finally:
        faulty.stage = None
    keys = admin(url, "GET", "/admin/keys").json()["data"]
    spend = next(k for k in keys if k["id"] == made["id"])["spend"]
    assert spend["reserved_usd"] == 0, spend
    health = gateway.router.health.get("capped")
    assert health.in_flight == 0
    held, _ = gateway.router.limits.held("capped", time.monotonic())
    # One request per minute refills (rpm 1): what the bucket holds is what was served, failures not counted.
    assert math.ceil(held - 1e-6) == len(SERVED), held
    ok = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=10)
    assert ok.status_code == 200, ok.text
    SERVED.append(stage)
