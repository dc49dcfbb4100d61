"""The OpenAI Agents SDK (`openai-agents`) runs an agent with a function tool on its default Responses API
through the gateway, for each upstream wire format, and makes no connection outside loopback.

The agent's model provider is the SDK's own `OpenAIProvider` with its defaults (Responses API, not chat
completions) on an `AsyncOpenAI` client pointed at a recording proxy in front of the gateway; tracing is off
(`set_tracing_disabled(True)` and per run), so nothing is exported to api.openai.com. The tool returns a
secret the model cannot know: it reaching the agent's final output proves the tool round trip.
"""

from __future__ import annotations

import json

import pytest
from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.models.openai_provider import OpenAIProvider
from openai import AsyncOpenAI

from modelyard.testing.loopback import LoopbackGuard
from modelyard.testing.recorder import RecordingProxy

SECRET = "KIWI-4471"


def _agent(calls: list[str]) -> Agent:
    @function_tool
    def get_secret(name: str) -> str:
        """Look up the secret stored under `name`."""
        calls.append(name)
        return f"The secret for {name} is {SECRET}."

    return Agent(name="keeper", instructions="Answer with the secret the tool returns.", tools=[get_secret])


def _client(proxy: RecordingProxy) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client-test", max_retries=0)


def _config(client: AsyncOpenAI, model: str) -> RunConfig:
    return RunConfig(model=model, model_provider=OpenAIProvider(openai_client=client), tracing_disabled=True)


def _check_traffic(proxy: RecordingProxy, model: str) -> None:
    calls = [e for e in proxy.snapshot() if e.method == "POST"]
    assert [e.path for e in calls] == ["/v1/responses", "/v1/responses"], [(e.path, e.status) for e in calls]
    assert all(e.status == 200 for e in calls), [e.response_body[:500] for e in calls]
    first, second = calls[0].json(), calls[1].json()
    assert first["model"] == model
    assert [t["name"] for t in first["tools"]] == ["get_secret"]
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert len(outputs) == 1 and SECRET in outputs[0]["output"], json.dumps(second["input"])[:2000]


@pytest.mark.parametrize("model", ["via-responses", "via-openai", "via-anthropic", "via-gemini"])
async def test_agents_sdk_runs_a_function_tool(proxy: RecordingProxy, model: str) -> None:
    set_tracing_disabled(True)
    calls: list[str] = []
    with LoopbackGuard() as guard:
        async with _client(proxy) as client:
            result = await Runner.run(
                _agent(calls),
                'Use get_secret {"name": "alpha"} and tell me the secret.',
                run_config=_config(client, model),
            )
    assert calls == ["alpha"]
    assert SECRET in str(result.final_output)
    _check_traffic(proxy, model)
    assert guard.seen, "the audit hook saw no socket at all: the guard is not working"
    assert guard.outside() == [], f"the Agents SDK reached outside loopback: {guard.outside()}"


async def test_agents_sdk_streamed_run(proxy: RecordingProxy) -> None:
    set_tracing_disabled(True)
    calls: list[str] = []
    with LoopbackGuard() as guard:
        async with _client(proxy) as client:
            streamed = Runner.run_streamed(
                _agent(calls), 'Use get_secret {"name": "beta"} and tell me.', run_config=_config(client, "via-openai")
            )
            kinds = [event.type async for event in streamed.stream_events()]
    assert calls == ["beta"]
    assert SECRET in str(streamed.final_output)
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    _check_traffic(proxy, "via-openai")
    assert all(json.loads(e.body)["stream"] is True for e in proxy.snapshot() if e.method == "POST")
    assert guard.outside() == [], f"the Agents SDK reached outside loopback: {guard.outside()}"
