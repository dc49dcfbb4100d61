"""`/v1/responses` end to end with the real `openai` SDK over the simulator: a Responses-speaking deployment
(pass-through: the upstream gets the client's body, the client the upstream's bytes) and translated ones
(OpenAI chat, Anthropic), JSON and streams, a function-tool round trip with `previous_response_id`, stored
objects, and tenancy (another key's response id is a 404, never another tenant's conversation)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

MASTER = "sk-master-responses-test"
NATIVE, CHAT, ANTHROPIC, GEMINI = "native", "via-chat", "via-anthropic", "via-gemini"
MODELS = (NATIVE, CHAT, ANTHROPIC, GEMINI)
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _config(sim: SimServer, tmp_path: Path) -> Any:
    text = f"""
deployments:
  - {{name: resp@openai, provider: openai, model: sim-small, api_base: "{sim.openai_base}", api_key: sim,
      price: {{input: 1.0, output: 2.0}}, options: {{responses_api: true, hosted_tools: true}}}}
  - {{name: chat@openai, provider: openai, model: sim-small, api_base: "{sim.openai_base}", api_key: sim,
      price: {{input: 1.0, output: 2.0}}}}
  - {{name: small@anthropic, provider: anthropic, model: sim-small, api_base: "{sim.url}", api_key: sim,
      price: {{input: 1.0, output: 2.0}}}}
  - {{name: small@gemini, provider: gemini, model: sim-small, api_base: "{sim.url}", api_key: sim,
      price: {{input: 1.0, output: 2.0}}}}
models:
  {NATIVE}: {{candidates: [resp@openai]}}
  {CHAT}: {{candidates: [chat@openai]}}
  {ANTHROPIC}: {{candidates: [small@anthropic]}}
  {GEMINI}: {{candidates: [small@gemini]}}
access:
  master_key: {MASTER}
spend:
  store: {tmp_path / "modelyard.db"}
  flush_interval_s: 0.05
"""
    return parse_config(text, env={})


@pytest.fixture(scope="module")
def url(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with BackgroundServer(create_app(_config(sim, tmp_path_factory.mktemp("responses")))) as server:
        yield server.url


def _key(url: str, name: str) -> str:
    made = httpx.post(url + "/admin/keys", json={"name": name}, headers={"Authorization": f"Bearer {MASTER}"})
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


@pytest.fixture(scope="module")
def keys(url: str) -> tuple[str, str]:
    return _key(url, "tenant-a"), _key(url, "tenant-b")


@pytest.fixture(scope="module")
def client(url: str, keys: tuple[str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key=keys[0], max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def other(url: str, keys: tuple[str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key=keys[1], max_retries=0) as c:
        yield c


@pytest.mark.parametrize("model", MODELS)
def test_create(client: openai.OpenAI, model: str) -> None:
    raw = client.responses.with_raw_response.create(model=model, input="Say something", instructions="be brief")
    r = raw.parse()
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    served = {NATIVE: "resp@openai", CHAT: "chat@openai", ANTHROPIC: "small@anthropic", GEMINI: "small@gemini"}
    assert raw.headers["x-modelyard-model"] == served[model]
    assert float(raw.headers["x-modelyard-cost-usd"]) > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input="Tell me a story") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_item.done" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text and final.usage is not None and final.usage.total_tokens > 0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_function_round_trip_with_previous_response_id(client: openai.OpenAI, model: str, stream: bool) -> None:
    first: Any
    if stream:
        with client.responses.stream(model=model, input="call get_weather for Oslo", tools=[WEATHER]) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(model=model, input="call get_weather for Oslo", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "cloudy, 7C"}],
        tools=[WEATHER],
    )
    assert "cloudy, 7C" in second.output_text  # the model saw the call and its result: history was applied
    third = client.responses.create(model=model, previous_response_id=second.id, input="thanks")
    assert third.output_text


@pytest.mark.parametrize("model", MODELS)
def test_another_keys_response_is_a_404(client: openai.OpenAI, other: openai.OpenAI, model: str) -> None:
    mine = client.responses.create(model=model, input="hello")
    with pytest.raises(openai.NotFoundError) as caught:
        other.responses.create(model=model, input="and?", previous_response_id=mine.id)
    body: Any = caught.value.body
    assert body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert client.responses.create(model=model, input="and?", previous_response_id=mine.id).output_text


def test_unknown_previous_response_id_is_a_404(client: openai.OpenAI) -> None:
    for model in MODELS:
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model=model, input="x", previous_response_id="resp_does_not_exist")


def test_stored_objects(client: openai.OpenAI) -> None:
    made = client.responses.create(
        model=CHAT, input=[{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]
    )
    got = client.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text
    items = client.responses.input_items.list(made.id, order="asc")
    texts = [item.content[0].text for item in items.data if item.type == "message"]  # type: ignore[union-attr]
    assert texts == ["first", "second"]
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    made = client.responses.create(model=CHAT, input="x", store=False)
    assert made.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_passthrough_sends_the_clients_body(client: openai.OpenAI, sim: SimServer) -> None:
    extra: Any = {"prompt_cache_key": "pck-1", "include": ["reasoning.encrypted_content"], "metadata": {"a": "b"}}
    client.responses.create(
        model=NATIVE, input="exact body please", extra_body={"client_metadata": {"x": "1"}}, **extra
    )
    seen = httpx.get(sim.url + "/_sim/requests/sim-small").json()["requests"]
    mine = [r for r in seen if r["path"] == "/v1/responses" and "exact body please" in r["body"]]
    assert mine, seen
    body = json.loads(mine[-1]["body"])
    assert body["model"] == "sim-small" and body["prompt_cache_key"] == "pck-1"
    assert body["client_metadata"] == {"x": "1"} and body["include"] == ["reasoning.encrypted_content"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": CHAT}, "input"),
        ({"model": CHAT, "input": [{"type": "nonsense"}]}, "input[0].type"),
        ({"model": CHAT, "input": "x", "temperature": 9}, "temperature"),
        ({"model": CHAT, "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ],
)
def test_bad_input_is_an_openai_400_with_param(url: str, keys: tuple[str, str], body: Any, param: str) -> None:
    r = httpx.post(url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {keys[0]}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_responses_routes_need_a_key(url: str) -> None:
    assert httpx.post(url + "/v1/responses", json={"model": CHAT, "input": "x"}).status_code == 401
    assert httpx.get(url + "/v1/responses/resp_x").status_code == 401
    assert httpx.get(url + "/v1/responses/resp_x/input_items").status_code == 401


def _open_gateway(sim: SimServer, tmp_path: Path, responses: str) -> BackgroundServer:
    text = f"""
deployments:
  - {{name: chat@openai, provider: openai, model: sim-small, api_base: "{sim.openai_base}", api_key: sim}}
models:
  {CHAT}: {{candidates: [chat@openai]}}
server: {{responses: {responses}}}
spend: {{store: "{tmp_path / "open.db"}"}}
"""
    return BackgroundServer(create_app(parse_config(text, env={})))


def test_open_mode_stores_nothing_unless_enabled(sim: SimServer, tmp_path: Path) -> None:
    with (
        _open_gateway(sim, tmp_path, "{}") as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as c,
    ):
        made = c.responses.create(model=CHAT, input="x")
        assert made.to_dict()["store"] is False  # said so in the answer
        with pytest.raises(openai.NotFoundError):
            c.responses.create(model=CHAT, input="y", previous_response_id=made.id)
    with (
        _open_gateway(sim, tmp_path, "{store: true, ttl_s: 60}") as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as c,
    ):
        made = c.responses.create(model=CHAT, input="x")
        assert made.to_dict()["store"] is True
        assert c.responses.create(model=CHAT, input="y", previous_response_id=made.id).output_text
        assert c.responses.retrieve(made.id).id == made.id


CODEX_TOOLS: Any = [
    {
        "type": "custom",
        "name": "apply_patch",
        "description": "Edit files",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
    },
    {"type": "web_search"},
    {
        "type": "namespace",
        "name": "files",
        "description": "File tools",
        "tools": [{"type": "function", "name": "read_file", "parameters": {"type": "object", "properties": {}}}],
    },
]


@pytest.mark.parametrize("model", MODELS)
def test_codex_shaped_tools_round_trip(client: openai.OpenAI, model: str) -> None:
    """What Codex sends (custom apply_patch, a hosted web_search, a namespace, store: false with the history
    resent, encrypted reasoning asked for): the hosted tool is dropped on translated deployments, the rest
    round-trips on every wire."""
    extra: Any = {"include": ["reasoning.encrypted_content"], "reasoning": {"effort": "low", "summary": "auto"}}
    first = client.responses.create(
        model=model,
        input=[{"role": "developer", "content": "you edit code"}, {"role": "user", "content": "fix the bug"}],
        tools=CODEX_TOOLS,
        tool_choice={"type": "custom", "name": "apply_patch"},
        store=False,
        prompt_cache_key="session-1",
        **extra,
    )
    call: Any = first.output[-1]
    assert call.type == "custom_tool_call" and call.name == "apply_patch"
    history: Any = [
        {"role": "developer", "content": "you edit code"},
        {"role": "user", "content": "fix the bug"},
        *[item.to_dict() for item in first.output],
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "patch applied"},
    ]
    second = client.responses.create(model=model, input=history, tools=CODEX_TOOLS, store=False, **extra)
    assert "patch applied" in second.output_text
    named = client.responses.create(
        model=model,
        input="read it",
        tools=CODEX_TOOLS,
        tool_choice={"type": "function", "name": "files__read_file"} if model != NATIVE else "required",
        store=False,
    )
    fc: Any = next(item for item in named.output if item.type in ("function_call", "custom_tool_call"))
    assert fc.type == "custom_tool_call" or (fc.name, fc.namespace) == ("read_file", "files")


def _recorded(proxy: Any, count: int) -> Any:
    """The proxy's `count`-th exchange: it is written down once the proxy has sent its last byte, which may
    be a moment after the gateway answered."""
    deadline = time.monotonic() + 5
    while len(proxy.snapshot()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return proxy.snapshot()[count - 1]


def test_passthrough_is_byte_for_byte(sim: SimServer, tmp_path: Path) -> None:
    """Responses → Responses: the upstream receives the client's body unchanged except `model`, and the client
    receives the upstream's bytes unchanged (JSON and SSE), with the gateway's headers added."""
    from modelyard.testing.recorder import RecordingProxy

    with RecordingProxy(sim.url) as proxy:
        text = f"""
deployments:
  - {{name: resp@openai, provider: openai, model: sim-small, api_base: "{proxy.url}/v1", api_key: sim,
      price: {{input: 1.0, output: 2.0}}, options: {{responses_api: true, hosted_tools: true}}}}
models:
  {NATIVE}: {{candidates: [resp@openai]}}
server: {{responses: {{store: true}}}}
spend: {{store: "{tmp_path / "bytes.db"}"}}
"""
        with BackgroundServer(create_app(parse_config(text, env={}))) as server:
            for stream in (False, True):
                body = (
                    '{"model":"native","input":[{"role":"user","content":"bytes  please"}],'
                    '"tools":[{"type":"web_search"}],"include":["reasoning.encrypted_content"],'
                    f'"client_metadata":{{"k":"v"}},"stream":{"true" if stream else "false"},"x_vendor":[1,2.50]}}'
                )
                answer = httpx.post(
                    server.url + "/v1/responses",
                    content=body,
                    headers={"content-type": "application/json", "authorization": "Bearer x"},
                )
                assert answer.status_code == 200, answer.text
                exchange = _recorded(proxy, 1 + int(stream))
                assert exchange.path == "/v1/responses"
                sent = json.loads(exchange.body)
                client = json.loads(body)
                assert list(sent) == list(client)  # same keys, same order
                assert sent == {**client, "model": "sim-small"}
                # The client's own bytes (its spacing, its `2.50`), only the model's value spliced in.
                assert exchange.body == body.replace('"model":"native"', '"model":"sim-small"', 1)
                assert answer.content == exchange.response_body.encode()  # the upstream's bytes, unchanged
                assert answer.headers["x-modelyard-model"] == "resp@openai"


def test_a_cut_stream_never_ends_cleanly(tmp_path: Path) -> None:
    """Cut after content reached the client: a translated stream ends with `response.failed`, a passed-through
    one with an `error` event; never with `response.completed`. Cut before: an error status."""
    from modelyard.sim.fleet import fleet_from_dict

    fleet = fleet_from_dict(
        {"seed": 5, "models": [{"name": "quick", "ttft_ms": 0, "tokens_per_second": 0, "output_tokens": 40}]}
    )
    with SimServer(fleet) as cut_sim:
        text = f"""
deployments:
  - {{name: cut-chat, provider: openai, model: quick, api_base: "{cut_sim.openai_base}",
      headers: {{x-sim-fault: cut_stream}}}}
  - {{name: cut-resp, provider: openai, model: quick, api_base: "{cut_sim.openai_base}",
      headers: {{x-sim-fault: cut_stream}}, options: {{responses_api: true, hosted_tools: true}}}}
models:
  cut-chat: {{candidates: [cut-chat]}}
  cut-resp: {{candidates: [cut-resp]}}
routing: {{retries: 0, breaker: {{failures: 1000}}}}
"""
        with BackgroundServer(create_app(parse_config(text, env={}))) as server:
            for model, tail in (("cut-chat", "response.failed"), ("cut-resp", "error")):
                cut_mid_stream = 0
                for _ in range(10):
                    r = httpx.post(server.url + "/v1/responses", json={"model": model, "input": "talk", "stream": True})
                    if r.status_code != 200:
                        assert r.json()["error"]["message"]
                        continue
                    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
                    assert "response.completed" not in [e["type"] for e in events]
                    assert events[-1]["type"] == tail, events[-1]
                    cut_mid_stream += 1
                assert cut_mid_stream, f"{model}: no stream was cut after its first bytes"


def test_a_passed_through_response_is_read_and_deleted_upstream(
    client: openai.OpenAI, other: openai.OpenAI, sim: SimServer
) -> None:
    made = client.responses.create(model=NATIVE, input=[{"role": "user", "content": "kept upstream"}])
    assert httpx.get(f"{sim.url}/v1/responses/{made.id}").status_code == 200  # it lives upstream
    got = client.responses.retrieve(made.id)  # the upstream's object, through the deployment that holds it
    assert got.id == made.id and got.output_text == made.output_text
    items: Any = client.responses.input_items.list(made.id, order="asc")
    assert [item.content[0].text for item in items.data if item.type == "message"] == ["kept upstream"]
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(made.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(made.id)
    assert httpx.get(f"{sim.url}/v1/responses/{made.id}").status_code == 200  # another key deleted nothing
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    assert httpx.get(f"{sim.url}/v1/responses/{made.id}").status_code == 404  # gone upstream as well
