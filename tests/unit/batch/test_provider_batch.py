"""`--provider-batch` pieces without a network: which workflows a Batch API can run, custom ids both providers
accept, and how the providers' result lines become outcomes."""

from __future__ import annotations

import re

import msgspec
import pytest

from modelyard.batch.provider_batch import _custom_prefix, _format, single_model_step
from modelyard.batch.provider_jobs import _openai_line, _seconds
from modelyard.batch.ray_engine import BatchEngineError
from modelyard.config.model import Price
from modelyard.providers.anthropic import AnthropicAdapter
from modelyard.providers.azure import AzureAdapter
from modelyard.providers.openai import OpenAIAdapter
from modelyard.workflows.api import Workflow

HEAD = "schema: modelyard.workflow/v1\nname: w\ninputs: {x: string}\nsteps:\n"


def workflow(steps: str) -> Workflow:
    return Workflow.from_string(HEAD + steps)


def test_one_plain_model_step_is_accepted() -> None:
    step = single_model_step(workflow("  a: {model: m, prompt: '{{ inputs.x }}'}\n"))
    assert step.id == "a"


@pytest.mark.parametrize(
    ("steps", "why"),
    [
        ("  a: {model: m, prompt: p}\n  b: {model: m, prompt: p, needs: [a]}\n", "exactly one model step"),
        ("  a: {call: os.path:join, args: {a: x}}\n", "a tool step"),
        ("  a: {model: m, prompt: '{{ item }}', foreach: '{{ [1, 2] }}'}\n", "foreach"),
        ("  a: {model: m, prompt: p, when: '{{ inputs.x }}'}\n", "`when`"),
    ],
)
def test_other_workflows_are_refused_saying_why(steps: str, why: str) -> None:
    with pytest.raises(BatchEngineError, match=re.escape(why)):
        single_model_step(workflow(steps))


def test_only_the_exact_openai_and_anthropic_wires_have_a_batch_api() -> None:
    assert _format(OpenAIAdapter()) == "openai"
    assert _format(AnthropicAdapter()) == "anthropic"
    assert _format(AzureAdapter()) is None  # Azure's batches are another API


def test_custom_ids_fit_anthropic_pattern() -> None:
    prefix = _custom_prefix("b-20261205-040726-abc123")
    assert prefix == "b-20261205-040726-abc123_"
    odd = _custom_prefix("my batch:1/" + "x" * 80) + "99999"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", odd)


def test_openai_result_lines() -> None:
    ok = {"id": "r", "custom_id": "c1", "response": {"status_code": 200, "body": {"choices": []}}, "error": None}
    custom_id, outcome = _openai_line(ok)
    assert custom_id == "c1" and outcome.body is not None and outcome.error is None
    bad = {
        "custom_id": "c2",
        "response": {"status_code": 400, "body": {"error": {"message": "bad thing"}}},
        "error": None,
    }
    _, failed = _openai_line(bad)
    assert failed.body is None and failed.error == "HTTP 400: bad thing"
    expired = {"custom_id": "c3", "response": None, "error": {"code": "batch_expired", "message": "too late"}}
    _, late = _openai_line(expired)
    assert late.error == "batch_expired: too late"


def test_rfc3339_and_unix_times() -> None:
    assert _seconds("1970-01-01T00:00:10Z") == 10.0
    assert _seconds(12) == 12.0 and _seconds("garbage") == 0.0


def test_price_batch_defaults_to_half() -> None:
    assert Price().batch == 0.5
    assert msgspec.convert({"input": 1.0, "batch": 0.4}, Price).batch == 0.4
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"batch": -1}, Price)
