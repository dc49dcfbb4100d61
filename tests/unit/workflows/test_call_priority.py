"""A workflow call's admission-queue class: the in-process backend queues it, the HTTP one sends it."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelyard.config.loader import parse_config
from modelyard.routing.router import Router
from modelyard.schema.errors import GatewayError, ProviderError
from modelyard.sim.server import SimServer
from modelyard.workflows.backend import ModelCall, chat_body
from modelyard.workflows.inprocess import GatewayBackend

CONFIG = """
deployments:
  - name: only
    provider: openai
    model: sim-small
    api_base: "{url}/v1"
    api_key: sk-sim
    limits: {{rpm: 120, burst_s: 1}}
models:
  m: {{candidates: [only]}}
"""


def call(priority: str | None) -> ModelCall:
    return ModelCall(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5, priority=priority)


def test_the_http_backend_sends_the_class_as_the_gateways_priority_option() -> None:
    assert chat_body(call("batch"))["modelyard"] == {"priority": "batch"}
    assert "modelyard" not in chat_body(call(None))


async def test_calls_of_the_batch_class_wait_their_turn_where_unclassed_calls_fail_at_once() -> None:
    with SimServer(instant=True) as sim:
        config = parse_config(CONFIG.format(url=sim.url), source="test.yaml")
        async with Router(config) as router:
            backend = GatewayBackend(router)
            started = time.monotonic()
            answers = await asyncio.gather(*(backend.call(call("batch")) for _ in range(5)))
            waited = time.monotonic() - started
            assert all(a.deployment == "only" for a in answers)
            assert waited > 1.0  # two a second (burst of 2): the last of five waited its turn in the queue
            with pytest.raises((ProviderError, GatewayError)):
                await asyncio.gather(*(backend.call(call(None)) for _ in range(5)))


async def test_an_unknown_class_is_a_400_naming_the_classes() -> None:
    with SimServer(instant=True) as sim:
        config = parse_config(CONFIG.format(url=sim.url), source="test.yaml")
        async with Router(config) as router:
            with pytest.raises(GatewayError) as caught:
                await GatewayBackend(router).call(call("urgent"))
    assert caught.value.status == 400 and "interactive, default, batch" in str(caught.value)
