"""AWS Bedrock through the real gateway to the simulator's Bedrock routes, with the official openai SDK.

Every call is SigV4-signed by botocore in the gateway and verified by botocore in the simulator; a wrong
secret is refused there (403 InvalidSignatureException) and the gateway fails over; each fault the simulator
can inject surfaces as its Bedrock error kind; n=2 is refused before any upstream call; cost is priced from
Converse's usage; `modelyard serve` streams the binary event stream as SSE. No AWS credential chain runs
(explicit keys), and no socket leaves loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim import SimServer
from modelyard.sim.cloud_bedrock import ACCESS_KEY, SECRET_KEY
from modelyard.testing.loopback import LoopbackGuard
from modelyard.testing.process import GatewayProcess

PRICE = "price: {input: 0.1, output: 0.4}"
TIMEOUTS = "timeouts: {connect: 2, first_token: 5, total: 10}"
PROFILE_ID = "us.anthropic.sim-small-v1:0"


def keys(secret: str = SECRET_KEY) -> str:
    return f"region: us-east-1, aws_access_key_id: {ACCESS_KEY}, aws_secret_access_key: {secret}"


def config_yaml(sim_url: str) -> str:
    def bedrock(name: str, model: str, extra: str = "", secret: str = SECRET_KEY) -> str:
        common = f'provider: bedrock, api_base: "{sim_url}", {PRICE}, {TIMEOUTS}'
        return f'  - {{name: {name}, model: "{model}", {extra}options: {{{keys(secret)}}}, {common}}}'

    faults = [*FAULTS, "cut_stream"]
    lines = [
        "deployments:",
        bedrock("br", PROFILE_ID),
        bedrock("br-wrong", "sim-large", secret="sk-test-wrong-secret"),
        *(bedrock(f"br-{f}", "sim-small", f"headers: {{x-sim-fault: {f}}}, ") for f in faults),
        f'  - {{name: oa, provider: openai, model: sim-medium, api_base: "{sim_url}/v1", api_key: sk-x, tier: 1, '
        f"{PRICE}, {TIMEOUTS}}}",
        "models:",
        "  bedrock: {candidates: [br]}",
        "  wrong: {candidates: [br-wrong], retries: 0}",
        "  failover: {candidates: [br-wrong, oa]}",
        *(f"  fault-{f}: {{candidates: [br-{f}], retries: 0}}" for f in faults),
    ]
    return "\n".join(lines) + "\n"


#: x-sim-fault → (the gateway's status to the client, the attempt's error kind).
FAULTS: dict[str, tuple[int, str]] = {
    "rate_limit": (429, "rate_limited"),
    "server_error": (502, "server"),
    "unavailable": (503, "overloaded"),
    "malformed": (502, "server"),
    "reset": (502, "connection"),
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=17, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimServer) -> Iterator[BackgroundServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        config = parse_config(config_yaml(sim.url), source="bedrock.yaml")
        with BackgroundServer(create_app(config)) as gw:
            yield gw


@pytest.fixture
def client(gateway: BackgroundServer, sim: SimServer) -> openai.OpenAI:
    sim.reset()
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0)


def ask(text: str = "Repeat: hello bedrock") -> list[Any]:
    return [{"role": "user", "content": text}]


def received(sim: SimServer, model: str = "sim-small") -> list[dict[str, Any]]:
    answer = httpx.get(f"{sim.url}/_sim/requests/{model}", timeout=5).json()
    requests: list[dict[str, Any]] = answer["requests"]
    return requests


def test_signed_converse_with_a_profile_id_is_priced(client: openai.OpenAI, sim: SimServer) -> None:
    with LoopbackGuard() as guard:
        raw = client.chat.completions.with_raw_response.create(model="bedrock", messages=ask())
    answer = raw.parse()
    assert answer.choices[0].message.content == "hello bedrock"
    assert answer.choices[0].finish_reason == "stop"
    assert raw.headers["x-modelyard-provider"] == "bedrock"
    cost = float(raw.headers["x-modelyard-cost-usd"])
    expected = (answer.usage.prompt_tokens * 0.1 + answer.usage.completion_tokens * 0.4) / 1e6
    assert answer.usage.prompt_tokens > 0 and cost == pytest.approx(expected, rel=1e-6)
    (request,) = received(sim)
    assert request["path"] == f"/model/{PROFILE_ID}/converse"
    assert guard.outside() == []


def test_streaming_through_the_event_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="bedrock", messages=ask("Repeat: one two three"), stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_a_wrong_secret_is_an_auth_error(client: openai.OpenAI, sim: SimServer) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="wrong", messages=ask())
    assert caught.value.status_code == 502  # the gateway's credentials are wrong, not the caller's
    assert caught.value.response.headers["x-modelyard-attempts"].startswith("1; br-wrong auth")
    assert SECRET_KEY not in caught.value.response.text and "sk-test-wrong-secret" not in caught.value.response.text
    assert received(sim, "sim-large") == []  # refused before the model saw it


def test_a_wrong_secret_fails_over(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="failover", messages=ask())
    assert raw.parse().choices[0].message.content == "hello bedrock"
    attempts = raw.headers["x-modelyard-attempts"]
    assert "br-wrong auth" in attempts and "oa ok" in attempts
    assert raw.headers["x-modelyard-model"] == "oa"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_surface_as_their_kinds(client: openai.OpenAI, fault: str) -> None:
    status, kind = FAULTS[fault]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=f"fault-{fault}", messages=ask())
    assert caught.value.status_code == status
    assert caught.value.response.headers["x-modelyard-attempts"].startswith(f"1; br-{fault} {kind}")


@pytest.mark.parametrize("fault", ["rate_limit", "cut_stream", "malformed"])
def test_stream_faults(client: openai.OpenAI, fault: str) -> None:
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model=f"fault-{fault}", messages=ask(), stream=True))


def test_n_above_one_is_refused_before_any_upstream_call(client: openai.OpenAI, sim: SimServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="bedrock", messages=ask(), n=2)
    assert "n must be 1" in caught.value.message
    assert received(sim) == []


def test_tools_and_json_mode(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
    answer = client.chat.completions.create(
        model="bedrock", messages=ask("Use lookup"), tools=[tool], tool_choice="required"
    )
    call = answer.choices[0].message.tool_calls[0]
    assert answer.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup"
    assert call.id.startswith("tooluse_")
    answer = client.chat.completions.create(
        model="bedrock", messages=ask("JSON please"), response_format={"type": "json_object"}
    )
    assert answer.choices[0].message.content.startswith("{")
    assert answer.choices[0].message.tool_calls is None


def test_served_process_streams(sim: SimServer, tmp_path: Path) -> None:
    config = tmp_path / "bedrock.yaml"
    config.write_text(
        f"""
deployments:
  - {{name: br, provider: bedrock, model: "{PROFILE_ID}", api_base: "{sim.url}", options: {{{keys()}}},
      {PRICE}, {TIMEOUTS}}}
models:
  bedrock: {{candidates: [br]}}
"""
    )
    env = {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    with GatewayProcess(config, env=env) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)
        chunks = list(
            client.chat.completions.create(model="bedrock", messages=ask("Repeat: from the process"), stream=True)
        )
        log = gw.log_text()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from the process"
    assert SECRET_KEY not in log
