"""Vertex AI end to end: the real gateway, google-auth's real service-account flow against the simulator's
token endpoint (which verifies the signed assertion), and Gemini and Claude at Vertex URLs.

Checked from both ends: tokens are refreshed before they expire (no request ever meets an expired one), a
revoked token costs one AUTH failure and is then replaced, Claude Code-like `/v1/messages` traffic with
extended thinking passes through natively (the simulator verifies every returned thinking signature and
records bodies without `model`, with `anthropic_version`), errors keep their kinds, cost follows the price,
and neither the private key nor an access token ever reaches a client. Everything is on loopback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from modelyard.testing.loopback import LoopbackGuard
from modelyard.testing.process import GatewayProcess

THINKING: Any = {"type": "enabled", "budget_tokens": 2048}
LONG_SYSTEM = "You are a careful coding agent. Follow the repository's conventions. " * 80
SYSTEM: Any = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
TOOLS: Any = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    }
]
BETA = "interleaved-thinking-2025-05-14"
SHORT_LIFETIME_S = 4
FAULTS = {"sim-429": "rate_limit", "sim-500": "server_error", "sim-503": "unavailable"}
#: Every key file the module made, by name (the leak test looks for each private key).
KEY_NAMES = ("main", "short", "revoked", "guarded", "process")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    models = [
        SimModel(name="sim-claude", output_tokens=12, reasoning_tokens=16),
        SimModel(name="sim-gemini", output_tokens=12),
        SimModel(name="sim-short", output_tokens=4),
        SimModel(name="sim-embed", kind="embedding", dimensions=16),
        *(SimModel(name=name, output_tokens=4) for name in FAULTS),
    ]
    with SimServer(Fleet(seed=7, models=models), instant=True) as server:
        for name, fault in FAULTS.items():
            assert httpx.patch(f"{server.url}/_sim/models/{name}", json={"faults": {fault: 1.0}}).status_code == 200
        yield server


@pytest.fixture(scope="module")
def keys(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Service-account key files from the simulator: name → {path, info}."""
    folder = tmp_path_factory.mktemp("vertex-keys")
    out: dict[str, dict[str, Any]] = {}
    for name in KEY_NAMES:
        lifetime = SHORT_LIFETIME_S if name == "short" else 3600
        info = httpx.get(f"{sim.url}/_vertex/service-account", params={"lifetime_s": lifetime}).json()
        path = folder / f"{name}.json"
        path.write_text(json.dumps(info))
        out[name] = {"path": path, "info": info}
    return out


def _dep(name: str, provider: str, model: str, sim: SimServer, key: Path, price: str = "{input: 3, output: 15}") -> str:
    options = f'{{project: sim-project, location: us-east5, credentials_file: "{key}"}}'
    return (
        f'  - {{name: {name}, provider: {provider}, model: {model}, api_base: "{sim.url}", options: {options}, '
        f"price: {price}, timeouts: {{connect: 2, first_token: 5, total: 10}}}}"
    )


@pytest.fixture(scope="module")
def gateway(sim: SimServer, keys: dict[str, dict[str, Any]]) -> Iterator[BackgroundServer]:
    main = keys["main"]["path"]
    lines = [
        "deployments:",
        _dep("claude@vertex", "vertex_anthropic", "sim-claude", sim, main),
        _dep("gemini@vertex", "vertex", "sim-gemini", sim, main, "{input: 0.1, output: 0.4}"),
        _dep("short@vertex", "vertex", "sim-short", sim, keys["short"]["path"]),
        _dep("revoked@vertex", "vertex_anthropic", "sim-claude", sim, keys["revoked"]["path"]),
        _dep("guarded@vertex", "vertex_anthropic", "sim-claude", sim, keys["guarded"]["path"]),
        _dep("e429@vertex", "vertex_anthropic", "sim-429", sim, main),
        _dep("e500@vertex", "vertex_anthropic", "sim-500", sim, main),
        _dep("e503@vertex", "vertex", "sim-503", sim, main),
        _dep("embed@vertex", "vertex", "sim-embed", sim, main, "{input: 0.02, output: 0}").replace(
            "provider: vertex,", "provider: vertex, kind: embedding,"
        ),
        "models:",
        "  claude: {candidates: [claude@vertex]}",
        "  gemini: {candidates: [gemini@vertex]}",
        "  short: {candidates: [short@vertex]}",
        "  revoked: {candidates: [revoked@vertex]}",
        "  guarded: {candidates: [guarded@vertex]}",
        "  e429: {candidates: [e429@vertex]}",
        "  e500: {candidates: [e500@vertex]}",
        "  e503: {candidates: [e503@vertex]}",
        "  embed: {candidates: [embed@vertex]}",
    ]
    config = parse_config("\n".join(lines) + "\n", source="vertex.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server


@pytest.fixture(scope="module")
def oai(gateway: BackgroundServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def claude(gateway: BackgroundServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-client", max_retries=0) as client:
        yield client


def tokens(sim: SimServer) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(f"{sim.url}/_vertex/tokens").json()
    return counts


def received(sim: SimServer, model: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = httpx.get(f"{sim.url}/_sim/requests/{model}").json()["requests"]
    return entries


def ask(text: str = "Repeat: hello vertex") -> Any:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------- tokens


def test_tokens_are_refreshed_before_they_expire(oai: openai.OpenAI, sim: SimServer) -> None:
    """4-second tokens, requests every 0.25 s for 5.5 s: new tokens are fetched at half-life, and the
    simulator never sees an expired one (no 401, no failed request)."""
    before = tokens(sim)
    started = time.monotonic()
    answered = 0
    while time.monotonic() - started < 5.5:
        answer = oai.chat.completions.create(model="short", messages=ask("Repeat: tick"))
        assert answer.choices[0].message.content == "tick"
        answered += 1
        time.sleep(0.25)
    after = tokens(sim)
    assert answered >= 15
    assert after["issued"] - before["issued"] >= 3  # the first, then one about every 2 s
    assert after["issued"] - before["issued"] <= 5  # refreshed at half-life, not on every request
    assert after["unauthenticated"] == before["unauthenticated"]
    assert after["refused"] == before["refused"] == 0


def test_a_revoked_token_fails_once_then_a_fresh_one_is_used(
    oai: openai.OpenAI, sim: SimServer, keys: dict[str, dict[str, Any]]
) -> None:
    assert oai.chat.completions.create(model="revoked", messages=ask()).choices[0].message.content == "hello vertex"
    email = keys["revoked"]["info"]["client_email"]
    assert httpx.post(f"{sim.url}/_vertex/revoke", params={"client_email": email}).json() == {"revoked": 1}
    before = tokens(sim)
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="revoked", messages=ask())
    assert info.value.status_code == 502
    assert info.value.response.headers["x-modelyard-attempts"].startswith("1; revoked@vertex auth")
    answer = oai.chat.completions.create(model="revoked", messages=ask())
    assert answer.choices[0].message.content == "hello vertex"
    after = tokens(sim)
    assert after["unauthenticated"] - before["unauthenticated"] == 1
    assert after["issued"] - before["issued"] == 1  # exactly one new token, fetched after the refusal


# ----------------------------------------------------------------------------- Claude Code-like traffic


def test_claude_code_thinking_conversation_passes_through_natively(claude: anthropic.Anthropic, sim: SimServer) -> None:
    sim.reset()
    messages: list[Any] = [{"role": "user", "content": "Use read_file on setup.py and summarise it."}]
    first = claude.messages.create(
        model="claude",
        max_tokens=4096,
        system=SYSTEM,
        tools=TOOLS,
        thinking=THINKING,
        messages=messages,
        extra_headers={"anthropic-beta": BETA},
    )
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    assert first.content[0].type == "thinking" and first.content[0].signature
    tool_use = first.content[1]
    assert tool_use.type == "tool_use"
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "setup()"}]},
    ]
    # Turn 2 streams; the simulator refuses it (400) if the signed thinking block came back altered.
    with claude.messages.stream(
        model="claude", max_tokens=4096, system=SYSTEM, tools=TOOLS, thinking=THINKING, messages=messages
    ) as stream:
        second = stream.get_final_message()
    assert second.content[0].type == "thinking" and second.content[0].signature
    assert second.content[-1].type == "text" and "setup()" in second.content[-1].text
    assert second.model == "claude"  # the client sees the name it asked for

    upstream = received(sim, "sim-claude")
    assert [e["path"].rsplit(":", 1)[-1] for e in upstream] == ["rawPredict", "streamRawPredict"]
    assert all(e["path"].startswith("/v1/projects/sim-project/locations/us-east5/") for e in upstream)
    for entry in upstream:
        body = json.loads(entry["body"])
        assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16"
        assert body["system"] == SYSTEM  # cache_control intact
        assert "authorization" not in entry["headers"] and "sk-client" not in json.dumps(entry)
    assert upstream[0]["headers"].get("anthropic-beta") == BETA
    returned = json.loads(upstream[1]["body"])["messages"][1]["content"][0]
    assert returned == first.content[0].model_dump(exclude_none=True)  # the signed block, as issued


def test_native_bytes_are_the_clients_with_model_swapped(gateway: BackgroundServer, sim: SimServer) -> None:
    sim.reset()
    body = {
        "model": "claude",
        "max_tokens": 256,
        "thinking": THINKING,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "H\u00e9llo"}]}],
        "top_k": 5,
    }
    sent = json.dumps(body, indent=1).encode()
    answer = httpx.post(
        f"{gateway.url}/v1/messages", content=sent, headers={"content-type": "application/json"}, timeout=20
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelyard-provider"] == "vertex_anthropic"
    (entry,) = received(sim, "sim-claude")
    assert entry["body"].encode() == sent.replace(b'"model": "claude"', b'"anthropic_version":"vertex-2023-10-16"', 1)


def test_count_tokens_through_vertex(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="claude", system=SYSTEM, messages=ask())
    assert counted.input_tokens > 800  # the long system prompt, counted by the provider's endpoint


# ----------------------------------------------------------------------------- translated, cost, errors


@pytest.mark.parametrize(
    ("model", "provider", "price"), [("claude", "vertex_anthropic", (3, 15)), ("gemini", "vertex", (0.1, 0.4))]
)
def test_openai_clients_get_answers_and_cost(oai: openai.OpenAI, model: str, provider: str, price: Any) -> None:
    raw = oai.chat.completions.with_raw_response.create(model=model, messages=ask())
    answer = raw.parse()
    assert answer.choices[0].message.content == "hello vertex" and answer.usage is not None
    assert raw.headers["x-modelyard-provider"] == provider
    expected = (answer.usage.prompt_tokens * price[0] + answer.usage.completion_tokens * price[1]) / 1e6
    assert float(raw.headers["x-modelyard-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    stream = oai.chat.completions.create(
        model=model, messages=ask(), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello vertex"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_gemini_reasoning_and_tools_through_vertex(oai: openai.OpenAI, sim: SimServer) -> None:
    sim.reset()
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    answer = oai.chat.completions.create(
        model="gemini", messages=ask("weather in Rome?"), tools=[tool], tool_choice="required"
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    (entry,) = received(sim, "sim-gemini")
    body = json.loads(entry["body"])
    assert body["tools"] == [
        {"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object"}}]}
    ]
    assert (
        entry["path"]
        == "/v1/projects/sim-project/locations/us-east5/publishers/google/models/sim-gemini:generateContent"
    )


def test_embeddings_through_vertex_predict(oai: openai.OpenAI, sim: SimServer) -> None:
    raw = oai.embeddings.with_raw_response.create(model="embed", input=["alpha", "beta gamma"], dimensions=8)
    answer = raw.parse()
    assert [len(item.embedding) for item in answer.data] == [8, 8]
    assert answer.usage.prompt_tokens == 5  # the provider's own token counts (2 + 3)
    assert float(raw.headers["x-modelyard-cost-usd"]) == pytest.approx(5 * 0.02 / 1e6, rel=1e-6)


@pytest.mark.parametrize(
    ("model", "status", "kind"),
    [("e429", 429, "rate_limited"), ("e500", 502, "server"), ("e503", 503, "overloaded")],
)
def test_error_kinds(oai: openai.OpenAI, model: str, status: int, kind: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model=model, messages=ask())
    assert info.value.status_code == status
    attempts = info.value.response.headers["x-modelyard-attempts"]
    assert f"{model}@vertex {kind}" in attempts


# ----------------------------------------------------------------------------- no secrets out, nothing off-box


def _secrets(keys: dict[str, dict[str, Any]]) -> list[str]:
    """A line from the middle of each private key (the PEM's base64 body)."""
    return [k["info"]["private_key"].splitlines()[10] for k in keys.values()]


def test_no_private_key_or_access_token_reaches_a_client(
    gateway: BackgroundServer, sim: SimServer, keys: dict[str, dict[str, Any]]
) -> None:
    dumps: list[str] = []
    with LoopbackGuard() as guard, httpx.Client(base_url=gateway.url, timeout=20) as client:
        # `guarded` has a key file no request used yet: its token is fetched here, under the guard.
        for model in ("guarded", "claude", "gemini", "e429", "e500", "nope"):
            for stream in (False, True):
                r = client.post("/v1/chat/completions", json={"model": model, "messages": ask(), "stream": stream})
                dumps.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            if model.startswith("e"):
                continue  # /v1/messages to a deployment whose circuit is open takes 30 s (any provider; reported)
            r = client.post("/v1/messages", json={"model": model, "max_tokens": 50, "messages": ask()})
            dumps.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        dumps.append(client.get("/v1/models").text)
    assert not guard.outside()
    assert any(d.startswith("200") for d in dumps) and any(d.startswith("4") or d.startswith("5") for d in dumps)
    everything = "\n".join(dumps)
    assert "ya29." not in everything and "Bearer" not in everything
    for line in _secrets(keys):
        assert len(line) > 40 and line not in everything
    for key in keys.values():
        assert str(key["path"]) not in everything


# ----------------------------------------------------------------------------- `modelyard serve`


def test_serve_process_with_application_default_credentials(
    sim: SimServer, keys: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The real process, credentials found by ADC (GOOGLE_APPLICATION_CREDENTIALS), no metadata server."""
    config = tmp_path / "modelyard.yaml"
    config.write_text(
        "deployments:\n"
        f'  - {{name: claude@vertex, provider: vertex_anthropic, model: sim-claude, api_base: "{sim.url}", '
        "options: {project: sim-project, location: global}, price: {input: 3, output: 15}}\n"
        "models:\n"
        "  claude: {candidates: [claude@vertex]}\n"
    )
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    env = {
        "GOOGLE_APPLICATION_CREDENTIALS": str(keys["process"]["path"]),
        "CLOUDSDK_CONFIG": str(gcloud),  # no user's gcloud credentials
        "NO_GCE_CHECK": "True",  # google-auth never probes the metadata server
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    before = tokens(sim)
    with (
        GatewayProcess(config, env=env) as process,
        anthropic.Anthropic(base_url=process.url, api_key="sk-client", max_retries=0) as client,
    ):
        message = client.messages.create(model="claude", max_tokens=100, messages=ask())
        assert message.content[0].type == "text" and message.content[0].text == "hello vertex"
        with client.messages.stream(model="claude", max_tokens=100, messages=ask("Repeat: one two")) as stream:
            assert "".join(stream.text_stream) == "one two"
    assert tokens(sim)["issued"] - before["issued"] == 1  # one token served both requests
    (last,) = received(sim, "sim-claude")[-1:]
    assert (
        last["path"]
        == "/v1/projects/sim-project/locations/global/publishers/anthropic/models/sim-claude:streamRawPredict"
    )
