""" "Nothing can serve this": the client's error (400) when the request ruled every candidate out, an outage
(503, which SDKs retry) when the deployments did."""

from __future__ import annotations

import time

from modelyard.config.loader import parse_config
from modelyard.routing.features import RequestFeatures
from modelyard.routing.plan import no_deployment_error
from modelyard.routing.router import Router
from modelyard.schema.errors import ErrorKind

CONFIG = """
deployments:
  - {name: a, provider: openai, model: m-a, context_window: 1000}
  - {name: e, provider: openai, model: m-e, kind: embedding}
routing: {breaker: {failures: 1, window_s: 60, cooldown_s: 60}}
models:
  chat: {candidates: [a]}
  embed: {candidates: [e]}
"""


def test_a_request_ruled_out_by_itself_is_a_400_with_the_reason_as_code() -> None:
    router = Router(parse_config(CONFIG))
    too_long = no_deployment_error(router.plan("chat", RequestFeatures(prompt_tokens=900, max_output_tokens=500)))
    assert (too_long.status, too_long.code) == (400, "context_length_exceeded")
    wrong_kind = no_deployment_error(router.plan("embed", RequestFeatures(prompt_tokens=5)))
    assert (wrong_kind.status, wrong_kind.code) == (400, "wrong_model_kind")
    assert "serves embedding, request is chat" in wrong_kind.message


def test_an_open_circuit_is_a_503() -> None:
    router = Router(parse_config(CONFIG))
    router.health.on_start("a", time.monotonic())
    router.health.on_failure("a", time.monotonic(), ErrorKind.SERVER)
    error = no_deployment_error(router.plan("chat", RequestFeatures(prompt_tokens=5)))
    assert (error.status, error.code) == (503, "no_deployment_available")
