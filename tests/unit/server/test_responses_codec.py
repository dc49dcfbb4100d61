"""The Responses codec's decisions, in process: when a request passes through (every OpenAI deployment it may
reach speaks the Responses API), when responses are stored (the switch; not in open mode by default), and
that a stored conversation's history is applied while an upstream one pins its deployment."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.schema.errors import GatewayError
from modelyard.server.app import Gateway
from modelyard.server.codecs.responses import Responses, ResponsesState
from modelyard.server.context import RequestContext
from modelyard.server.http import Request
from modelyard.state.conversations import Conversations
from modelyard.state.sqlite_store import SQLiteStore

CONFIG = """
deployments:
  - {name: resp, provider: openai, model: m, api_base: "http://127.0.0.1:9/v1",
     options: {responses_api: true, hosted_tools: true}}
  - {name: resp-plain, provider: openai, model: m, api_base: "http://127.0.0.1:9/v1", options: {responses_api: true}}
  - {name: chat, provider: openai, model: m, api_base: "http://127.0.0.1:9/v1"}
  - {name: claude, provider: anthropic, model: m, api_base: "http://127.0.0.1:9"}
models:
  native: {candidates: [resp]}
  native-or-claude: {candidates: [resp, claude]}
  mixed: {candidates: [resp, chat]}
  falls-to-chat: {candidates: [resp], fallbacks: [plain]}
  plain: {candidates: [chat]}
  no-hosted: {candidates: [resp-plain]}
"""


async def _receive() -> Any:
    return {"type": "http.disconnect"}


async def _send(message: Any) -> None:
    return None


def _request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/responses", "headers": []}, _receive, _send)


async def _decode(codec: Responses, gw: Gateway, body: dict[str, Any], key_id: str | None = "k1") -> Any:
    ctx = RequestContext(gw, "/v1/responses")
    ctx.key_id = key_id
    return await codec.decode(msgspec.json.encode(body), _request(), ctx)


@pytest.fixture
async def conversations(tmp_path: Any) -> Any:
    store = SQLiteStore(str(tmp_path / "c.db"))
    await store.open()
    try:
        yield Conversations(store, ttl_s=100.0, max_per_key=10)
    finally:
        await store.close()


async def test_hosted_tools_pass_through_only_where_the_operator_allows_them() -> None:
    gw = _gateway()
    codec = Responses(None, gw.config.server.responses)
    hosted = {"model": "no-hosted", "input": "hi", "tools": [{"type": "web_search"}]}
    assert (await _decode(codec, gw, hosted)).native is None  # translated: web_search dropped, nothing unpriced
    assert (await _decode(codec, gw, {"model": "no-hosted", "input": "hi"})).native is not None


def _gateway() -> Gateway:
    return Gateway(parse_config(CONFIG, env={}))


@pytest.mark.parametrize(
    ("model", "native"),
    [("native", True), ("native-or-claude", True), ("mixed", False), ("falls-to-chat", False), ("plain", False)],
)
async def test_passes_through_only_when_every_reachable_openai_deployment_speaks_it(model: str, native: bool) -> None:
    gw = _gateway()
    codec = Responses(None, gw.config.server.responses)
    inbound = await _decode(codec, gw, {"model": model, "input": "hi", "tools": [{"type": "web_search"}]})
    assert (inbound.native is not None) is native
    if native:
        assert inbound.native.body["tools"] == [{"type": "web_search"}]  # the client's body, hosted tool kept
    assert "tools" not in inbound.raw  # the translated form (for other wires) drops it


async def test_storing_follows_the_switch_and_open_mode(conversations: Conversations) -> None:
    gw = _gateway()  # no access layer: open
    config = gw.config.server.responses
    default = Responses(conversations, config)
    ctx = RequestContext(gw, "/v1/responses")
    assert not default.storing_on(ctx)
    assert Responses(conversations, msgspec.structs.replace(config, store=True)).storing_on(ctx)
    assert not Responses(None, msgspec.structs.replace(config, store=True)).storing_on(ctx)
    inbound = await _decode(default, gw, {"model": "plain", "input": "hi"})
    state: ResponsesState = inbound.state
    assert not state.storing and state.req.store is False
    with pytest.raises(GatewayError) as caught:  # nothing is kept, so nothing can be continued
        await _decode(default, gw, {"model": "plain", "input": "hi", "previous_response_id": "resp_1"})
    assert caught.value.status == 404


async def test_history_is_applied_and_upstream_conversations_pin_their_deployment(
    conversations: Conversations,
) -> None:
    gw = _gateway()
    codec = Responses(conversations, msgspec.structs.replace(gw.config.server.responses, store=True))
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "earlier answer"}]}
    await conversations.save(
        "k1", "resp_here", model="native", previous_id=None, input_items=[], output_items=[said], response=None
    )
    await conversations.save(
        "k1",
        "resp_up",
        model="native",
        previous_id=None,
        input_items=[],
        output_items=[],
        response=None,
        upstream="resp",
    )
    here = await _decode(codec, gw, {"model": "native", "input": "next", "previous_response_id": "resp_here"})
    assert here.native is None  # the upstream never saw that conversation: translated, history prepended
    assert here.raw["messages"][0] == {"role": "assistant", "content": "earlier answer"}
    up = await _decode(codec, gw, {"model": "mixed", "input": "next", "previous_response_id": "resp_up"})
    assert up.native is not None and up.req.modelyard.candidates == ["resp"]
    with pytest.raises(GatewayError) as caught:
        await _decode(codec, gw, {"model": "native", "input": "x", "previous_response_id": "resp_up"}, key_id="k2")
    assert caught.value.status == 404


async def test_quota_is_checked_before_the_model_runs(conversations: Conversations) -> None:
    gw = _gateway()
    codec = Responses(conversations, msgspec.structs.replace(gw.config.server.responses, store=True))
    for i in range(10):
        await conversations.save(
            "k1", f"r{i}", model="m", previous_id=None, input_items=[], output_items=[], response=None
        )
    with pytest.raises(GatewayError) as caught:
        await _decode(codec, gw, {"model": "plain", "input": "x"})
    assert caught.value.status == 429
    assert (await _decode(codec, gw, {"model": "plain", "input": "x", "store": False})).state.storing is False


async def test_the_pass_through_decision_is_remembered_per_configured_model_only() -> None:
    """Computed once per configured model (it depends on the config alone), keyed by what an alias resolves to, and
    never for names a client makes up: a stream of invented (or wildcard-aliased) names cannot grow it."""
    gw = Gateway(parse_config(CONFIG + 'aliases: {"gpt-*": native}\n', env={}))
    codec = Responses(None, gw.config.server.responses)
    for _ in range(3):
        assert (await _decode(codec, gw, {"model": "native", "input": "hi"})).native is not None
        assert (await _decode(codec, gw, {"model": "mixed", "input": "hi"})).native is None
    for i in range(50):
        assert (await _decode(codec, gw, {"model": f"gpt-{i}", "input": "hi"})).native is not None
        await _decode(codec, gw, {"model": f"made-up-{i}", "input": "hi"})
    assert set(codec._passes) == {("native", False), ("mixed", False)}
