"""The simulator's signed extended thinking, count_tokens and request log, through the `anthropic` SDK.

The simulator must refuse exactly what Anthropic refuses (an altered or missing thinking signature, a
tool-use continuation that dropped its thinking block), or gateway tests over it prove nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from modelyard.sim import SimServer, create_app
from modelyard.sim.received import RequestLog
from modelyard.sim.wire_anthropic import REDACTED_TRIGGER, ThinkingSigner, secret_for_seed
from tests.unit.sim.sim_helpers import asgi_call, sse
from tests.unit.sim.sim_helpers import fleet as sim_fleet

TOOL: Any = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
THINKING: Any = {"type": "enabled", "budget_tokens": 1024}


@pytest.fixture
def client(sim: SimServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.anthropic_base, api_key="sk-ant-x", max_retries=0) as c:
        yield c


def _first_turn(client: anthropic.Anthropic) -> tuple[list[Any], Any]:
    messages: list[Any] = [{"role": "user", "content": "Use get_weather for Paris"}]
    m = client.messages.create(model="sim-medium", max_tokens=2048, thinking=THINKING, tools=[TOOL], messages=messages)
    return messages, m


def test_thinking_block_is_signed_with_the_sim_secret(client: anthropic.Anthropic) -> None:
    _, m = _first_turn(client)
    assert [b.type for b in m.content] == ["thinking", "tool_use"]
    block = m.content[0]
    assert block.type == "thinking" and block.thinking
    signer = ThinkingSigner(secret_for_seed(0))
    assert signer.valid(block.thinking, block.signature)
    assert not signer.valid(block.thinking + " ", block.signature)
    assert not ThinkingSigner(secret_for_seed(1)).valid(block.thinking, block.signature)
    assert m.usage.output_tokens > 0


def test_returned_signed_thinking_is_accepted(client: anthropic.Anthropic) -> None:
    messages, m = _first_turn(client)
    tool_use = m.content[1]
    assert tool_use.type == "tool_use"
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}]},
    ]
    second = client.messages.create(
        model="sim-medium", max_tokens=2048, thinking=THINKING, tools=[TOOL], messages=messages
    )
    assert second.content[0].type == "thinking"
    assert second.content[-1].type == "text" and "sunny" in second.content[-1].text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: b.update(thinking=b["thinking"] + "!"),
            "messages.1.content.0: Invalid `signature` in `thinking` block",
        ),
        (lambda b: b.update(signature=b["signature"][:-4] + "AAAA"), "Invalid `signature` in `thinking` block"),
        (lambda b: b.update(signature=""), "messages.1.content.0: Invalid `signature` in `thinking` block"),
        (lambda b: b.pop("signature"), "messages.1.content.0.thinking.signature: Field required"),
    ],
)
def test_altered_or_missing_signature_is_anthropics_400(client: anthropic.Anthropic, change: Any, message: str) -> None:
    messages, m = _first_turn(client)
    blocks = [b.model_dump() for b in m.content]
    change(blocks[0])
    messages += [
        {"role": "assistant", "content": blocks},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": blocks[1]["id"], "content": "ok"}]},
    ]
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="sim-medium", max_tokens=2048, thinking=THINKING, tools=[TOOL], messages=messages)
    assert err.value.status_code == 400
    body: Any = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]


def test_dropped_thinking_block_in_a_tool_continuation_is_refused(client: anthropic.Anthropic) -> None:
    messages, m = _first_turn(client)
    blocks = [b.model_dump() for b in m.content][1:]  # the thinking block dropped, as a lossy gateway would
    messages += [
        {"role": "assistant", "content": blocks},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": blocks[0]["id"], "content": "ok"}]},
    ]
    with pytest.raises(anthropic.BadRequestError, match="Expected `thinking` or `redacted_thinking`"):
        client.messages.create(model="sim-medium", max_tokens=2048, thinking=THINKING, tools=[TOOL], messages=messages)
    # Without thinking the same conversation is fine.
    ok = client.messages.create(model="sim-medium", max_tokens=2048, tools=[TOOL], messages=messages)
    assert ok.content[0].type == "text"


def test_stream_carries_thinking_deltas_then_one_signature_delta(sim: SimServer) -> None:
    body = {
        "model": "sim-small",
        "max_tokens": 512,
        "stream": True,
        "thinking": THINKING,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    r = httpx.post(sim.anthropic_base + "/v1/messages", json=body, headers={"x-api-key": "k"})
    events = [(name, httpx.Response(200, content=data).json()) for name, data in sse(r.content)]
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    start = events[1][1]
    assert start["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    deltas = [d["delta"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    kinds = [d["type"] for d in deltas]
    assert kinds[-1] == "signature_delta" and kinds.count("signature_delta") == 1
    assert set(kinds[:-1]) == {"thinking_delta"}
    text = "".join(d["thinking"] for d in deltas[:-1])
    assert ThinkingSigner(secret_for_seed(0)).valid(text, deltas[-1]["signature"])
    assert names[-1] == "message_stop"
    # The SDK's own accumulator rebuilds the same signed block.
    with (
        anthropic.Anthropic(base_url=sim.anthropic_base, api_key="k", max_retries=0) as client,
        client.messages.stream(
            model="sim-small", max_tokens=512, thinking=THINKING, messages=[{"role": "user", "content": "Hello"}]
        ) as stream,
    ):
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert ThinkingSigner(secret_for_seed(0)).valid(final.content[0].thinking, final.content[0].signature)


def test_redacted_thinking_round_trip(client: anthropic.Anthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": "Use get_weather for Oslo " + REDACTED_TRIGGER}]
    m = client.messages.create(model="sim-medium", max_tokens=2048, thinking=THINKING, tools=[TOOL], messages=messages)
    assert m.content[0].type == "redacted_thinking"
    blocks = [b.model_dump() for b in m.content]
    result: Any = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": blocks[1]["id"], "content": "x"}]}
    ok = client.messages.create(
        model="sim-medium",
        max_tokens=2048,
        thinking=THINKING,
        tools=[TOOL],
        messages=[*messages, {"role": "assistant", "content": blocks}, result],  # type: ignore[misc,list-item]
    )
    assert ok.stop_reason == "end_turn"
    forged: Any = copy.deepcopy(blocks)
    forged[0]["data"] = forged[0]["data"][:-8] + "AAAAAAA="
    with pytest.raises(anthropic.BadRequestError, match="Invalid `data` in `redacted_thinking` block"):
        client.messages.create(
            model="sim-medium",
            max_tokens=2048,
            thinking=THINKING,
            tools=[TOOL],
            messages=[*messages, {"role": "assistant", "content": forged}, result],
        )


def test_no_thinking_without_the_thinking_parameter(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model="sim-medium", max_tokens=256, messages=[{"role": "user", "content": "Hi"}])
    assert [b.type for b in m.content] == ["text"]


def test_count_tokens_matches_the_messages_usage(client: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "How many tokens is this sentence?"}]
    counted = client.messages.count_tokens(model="sim-small", system="Be brief.", messages=messages)
    answered = client.messages.create(model="sim-small", max_tokens=64, system="Be brief.", messages=messages)
    assert counted.input_tokens == answered.usage.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=messages)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="sim-small", messages=[])


def test_request_log_keeps_bodies_and_betas_not_keys(sim: SimServer, client: anthropic.Anthropic) -> None:
    system: Any = [{"type": "text", "text": "Long stable prefix", "cache_control": {"type": "ephemeral"}}]
    client.messages.create(
        model="sim-large",
        max_tokens=64,
        system=system,
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
    )
    seen = httpx.get(sim.url + "/_sim/requests/sim-large").json()
    assert seen["model"] == "sim-large" and len(seen["requests"]) == 1
    entry = seen["requests"][0]
    assert entry["path"] == "/v1/messages"
    assert entry["headers"]["anthropic-beta"] == "context-management-2025-06-27"
    assert "x-api-key" not in entry["headers"] and "sk-ant-x" not in str(entry)
    assert httpx.Response(200, content=entry["body"]).json()["system"] == system
    assert httpx.get(sim.url + "/_sim/requests/sim-small").json()["requests"] == []
    sim.reset()
    assert httpx.get(sim.url + "/_sim/requests/sim-large").json()["requests"] == []


def test_prompt_cache_only_at_cache_control_breakpoints(client: anthropic.Anthropic) -> None:
    long_text = "stable instructions " * 400  # about 2000 tokens: above the 1024-token minimum
    marked: Any = [{"type": "text", "text": long_text, "cache_control": {"type": "ephemeral"}}]
    plain: Any = [{"type": "text", "text": long_text}]
    first = client.messages.create(model="sim-small", max_tokens=16, system=marked, messages=user_msgs("one"))
    assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens >= 1024
    assert first.usage.cache_read_input_tokens == 0
    second = client.messages.create(model="sim-small", max_tokens=16, system=marked, messages=user_msgs("two"))
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    u1, u2 = first.usage, second.usage
    total = u2.input_tokens + (u2.cache_read_input_tokens or 0) + (u2.cache_creation_input_tokens or 0)
    assert total == u1.input_tokens + (u1.cache_creation_input_tokens or 0)
    # The same prompt without a breakpoint is neither read from nor written to the cache (Anthropic's rule).
    other = client.messages.create(model="sim-large", max_tokens=16, system=plain, messages=user_msgs("one"))
    again = client.messages.create(model="sim-large", max_tokens=16, system=plain, messages=user_msgs("one"))
    for m in (other, again):
        assert not m.usage.cache_read_input_tokens and not m.usage.cache_creation_input_tokens


def user_msgs(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_request_log_is_bounded_per_model_and_in_models() -> None:
    log = RequestLog(per_model=2, max_models=2)
    for i in range(3):
        log.record("a", "/v1/messages", [(b"x-api-key", b"secret"), (b"anthropic-beta", b"b")], b'{"n":%d}' % i)
    assert [e["body"] for e in log.snapshot("a")] == ['{"n":1}', '{"n":2}']
    assert log.snapshot("a")[0]["headers"] == {"anthropic-beta": "b"}
    log.record("b", "/p", [], b"{}")
    log.record("c", "/p", [], b"{}")  # a third model: the oldest one's entries go
    assert log.snapshot("a") == [] and len(log.snapshot("c")) == 1


async def test_count_tokens_needs_the_fleets_key() -> None:
    app = create_app(sim_fleet({"name": "m"}, api_key="sim-key"))
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    refused = await asgi_call(app, "POST", "/v1/messages/count_tokens", body)
    assert refused.status == 401 and refused.json()["error"]["type"] == "authentication_error"
    ok = await asgi_call(app, "POST", "/v1/messages/count_tokens", body, {"x-api-key": "sim-key"})
    assert ok.status == 200 and ok.json() == {"input_tokens": 3}


def test_split_assistant_turn_and_system_messages_as_anthropic_merges_them(client: anthropic.Anthropic) -> None:
    messages, m = _first_turn(client)
    thinking, tool_use = (b.model_dump() for b in m.content)
    result: Any = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "ok"}]}
    split: Any = [
        *messages,
        {"role": "system", "content": "Mind the repository's style."},
        {"role": "assistant", "content": [thinking]},
        {"role": "assistant", "content": [tool_use]},
        result,
    ]
    ok = client.messages.create(model="sim-medium", max_tokens=2048, thinking=THINKING, tools=[TOOL], messages=split)
    assert ok.content[-1].type == "text"
    swapped: Any = [
        *messages,
        {"role": "assistant", "content": [tool_use]},
        {"role": "assistant", "content": [thinking]},
    ]
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.1\.content\.0\.type: Expected"):
        client.messages.create(
            model="sim-medium", max_tokens=2048, thinking=THINKING, tools=[TOOL], messages=[*swapped, result]
        )
