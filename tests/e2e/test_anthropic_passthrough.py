"""/v1/messages to an Anthropic deployment is a native pass-through, checked from both ends.

Both ways only `model` changes: the upstream gets the deployment's model name, the client gets back the name
it asked for (Claude Code treats another name as a model switch and drops its thinking).

The official `anthropic` SDK runs a 3-turn extended-thinking + tool-use conversation through the gateway;
the simulator verifies every returned thinking signature (an altered or dropped one is Anthropic's 400),
records what it received (`cache_control` must arrive intact), and answers deterministically, so a test
can replay the exact upstream request straight at the simulator and diff the bytes the client got.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer

THINKING: Any = {"type": "enabled", "budget_tokens": 2048}
LONG_SYSTEM = "You are a careful coding agent. Follow the repository's conventions. " * 80  # > 1024 tokens
SYSTEM: Any = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
TOOLS: Any = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    }
]
ALLOWED_BETA = "interleaved-thinking-2025-05-14"
REFUSED_BETA = "files-api-2025-04-14"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    fleet = Fleet(
        seed=5,
        models=[
            SimModel(name="sim-claude", output_tokens=12, reasoning_tokens=16),
            SimModel(name="sim-gpt", output_tokens=12),
        ],
    )
    with SimServer(fleet, instant=True) as server:
        yield server


def config_yaml(sim: SimServer) -> str:
    return f"""
deployments:
  - {{name: claude@anthropic, provider: anthropic, model: sim-claude, api_base: "{sim.url}", api_key: sk-ant-upstream,
      price: {{input: 3, output: 15, cached_input: 0.3, cache_write: 3.75}}}}
  - {{name: gpt@openai, provider: openai, model: sim-gpt, api_base: "{sim.openai_base}", api_key: sk-upstream,
      price: {{input: 1, output: 2}}}}
models:
  claude: {{candidates: [claude@anthropic]}}
  gpt: {{candidates: [gpt@openai]}}
"""


@pytest.fixture(scope="module")
def gateway(sim: SimServer) -> Iterator[BackgroundServer]:
    config = parse_config(config_yaml(sim), source="passthrough.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server


@pytest.fixture
def client(gateway: BackgroundServer, sim: SimServer) -> Iterator[anthropic.Anthropic]:
    sim.reset()
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-client", max_retries=0) as c:
        yield c


def received(sim: SimServer, model: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = httpx.get(f"{sim.url}/_sim/requests/{model}").json()["requests"]
    return entries


def blocks(message: Any) -> list[dict[str, Any]]:
    return [b.model_dump(exclude_none=True) for b in message.content]


def test_three_turn_thinking_tool_use_conversation_signed_and_cached(
    client: anthropic.Anthropic, sim: SimServer
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Use read_file on setup.py and summarise it."}]
    first = client.messages.create(
        model="claude",
        max_tokens=4096,
        system=SYSTEM,
        tools=TOOLS,
        thinking=THINKING,
        messages=messages,
        extra_headers={"anthropic-beta": f"{ALLOWED_BETA},{REFUSED_BETA}"},
    )
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    assert first.content[0].type == "thinking" and first.content[0].signature  # the real signature, not ""
    tool_use = first.content[1]
    assert tool_use.type == "tool_use"
    messages += [
        {"role": "assistant", "content": blocks(first)},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "setup()"}]},
    ]
    # Turn 2 streams; the SDK rebuilds the signed thinking block from thinking_delta + signature_delta.
    with client.messages.stream(
        model="claude", max_tokens=4096, system=SYSTEM, tools=TOOLS, thinking=THINKING, messages=messages
    ) as stream:
        second = stream.get_final_message()
    assert second.content[0].type == "thinking" and second.content[0].signature
    assert second.content[-1].type == "text" and "setup()" in second.content[-1].text
    messages += [
        {"role": "assistant", "content": blocks(second)},
        {"role": "user", "content": "Now use read_file on README.md."},
    ]
    third = client.messages.create(
        model="claude", max_tokens=4096, system=SYSTEM, tools=TOOLS, thinking=THINKING, messages=messages
    )
    assert third.content[0].type == "thinking" and third.stop_reason == "tool_use"

    upstream = received(sim, "sim-claude")
    assert len(upstream) == 3  # one upstream call per turn: nothing was refused and retried
    for entry in upstream:
        body = json.loads(entry["body"])
        assert body["system"] == SYSTEM  # cache_control intact
        assert body["model"] == "sim-claude"
        assert "sk-client" not in json.dumps(entry)
    # Every thinking block went back signed, as the simulator made it (it would have refused otherwise).
    last = json.loads(upstream[-1]["body"])["messages"]
    assert last[1]["content"][0] == blocks(first)[0] and last[3]["content"][0] == blocks(second)[0]
    # The beta allowlist: the allowed one forwarded, the other dropped.
    assert upstream[0]["headers"].get("anthropic-beta") == ALLOWED_BETA
    # The provider's prompt cache worked, and the usage the client sees is the provider's own.
    assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens >= 1024
    assert second.usage.cache_read_input_tokens and third.usage.cache_read_input_tokens
    assert third.usage.cache_read_input_tokens >= first.usage.cache_creation_input_tokens


def test_non_stream_bytes_are_the_upstreams_and_body_is_the_clients(gateway: BackgroundServer, sim: SimServer) -> None:
    sim.reset()
    body = {
        "model": "claude",
        "max_tokens": 512,
        "thinking": THINKING,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "H\u00e9llo", "citations": None}]}],
        "metadata": {"user_id": '{"device": "d1", "session": "s1"}'},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "top_k": 5,
    }
    # json.dumps' own spelling (spaces after separators, "\u00e9" escaped, 1.0e-3): the upstream must get it.
    sent = json.dumps({**body, "temperature": 1.0e-3}, indent=1).encode()
    answer = httpx.post(
        f"{gateway.url}/v1/messages",
        content=sent,
        headers={"x-api-key": "k", "content-type": "application/json"},
        timeout=20,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelyard-provider"] == "anthropic"
    assert float(answer.headers["x-modelyard-cost-usd"]) > 0
    (entry,) = received(sim, "sim-claude")
    assert entry["body"].encode() == sent.replace(b'"model": "claude"', b'"model": "sim-claude"', 1)
    # Replay the exact upstream request straight at the simulator: same seed, counter and body → same bytes.
    sim.reset()
    direct = httpx.post(
        f"{sim.url}/v1/messages",
        content=entry["body"].encode(),
        headers={"x-api-key": "k", "content-type": "application/json"},
    )
    # The one change: the answer names the model the client asked for (Claude Code relies on it).
    assert b'"model":"sim-claude"' in direct.content and answer.json()["model"] == "claude"
    assert answer.content == direct.content.replace(b'"model":"sim-claude"', b'"model":"claude"', 1)


def test_stream_bytes_are_the_upstreams(gateway: BackgroundServer, sim: SimServer) -> None:
    sim.reset()
    body = {
        "model": "claude",
        "max_tokens": 512,
        "stream": True,
        "thinking": THINKING,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": "Use read_file on a.py"}],
    }
    with httpx.stream("POST", f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": "k"}) as answer:
        assert answer.status_code == 200
        through_gateway = answer.read()
    (entry,) = received(sim, "sim-claude")
    assert json.loads(entry["body"]) == {**body, "model": "sim-claude"}
    sim.reset()
    direct = httpx.post(
        f"{sim.url}/v1/messages", content=entry["body"].encode(), headers={"content-type": "application/json"}
    )
    assert b"signature_delta" in direct.content
    # Byte for byte, but for message_start naming the model the client asked for.
    assert through_gateway == direct.content.replace(b'"model":"sim-claude"', b'"model":"claude"', 1)
    assert through_gateway.count(b'"model":"claude"') == 1


def test_server_tools_are_refused_before_any_upstream_call(client: anthropic.Anthropic, sim: SimServer) -> None:
    web_search: Any = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(
            model="claude", max_tokens=64, tools=[web_search], messages=[{"role": "user", "content": "news?"}]
        )
    body: Any = err.value.body
    assert body["error"]["type"] == "invalid_request_error" and "web_search" in body["error"]["message"]
    assert received(sim, "sim-claude") == []


def test_signatures_never_reach_another_vendor(client: anthropic.Anthropic, sim: SimServer) -> None:
    messages: list[Any] = [{"role": "user", "content": "Use read_file on x.py"}]
    first = client.messages.create(model="claude", max_tokens=1024, tools=TOOLS, thinking=THINKING, messages=messages)
    signature = first.content[0].signature if first.content[0].type == "thinking" else ""
    assert signature
    tool_use = first.content[1]
    assert tool_use.type == "tool_use"
    messages += [
        {"role": "assistant", "content": blocks(first)},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "x = 1"}]},
    ]
    other = client.messages.create(model="gpt", max_tokens=256, tools=TOOLS, thinking=THINKING, messages=messages)
    assert other.content[-1].type == "text"
    (entry,) = received(sim, "sim-gpt")
    assert signature not in entry["body"] and "thinking_blocks" not in entry["body"]
