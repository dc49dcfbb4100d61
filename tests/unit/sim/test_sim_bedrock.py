"""The simulator's Bedrock routes over real HTTP: SigV4 verified with botocore, Converse shapes, the binary
event stream (decoded here by botocore's parser), Bedrock's errors and the faults."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

from modelyard.providers.base import HttpCall
from modelyard.providers.bedrock import sign
from modelyard.sim import SimServer
from modelyard.sim.behaviour import count_tokens
from modelyard.sim.cloud_bedrock import ACCESS_KEY, API_KEY, SECRET_KEY, resolve_model

FLEET = {"sim-small": 1, "sim-large": 1, "sim-embed": 1}


def post(
    sim: SimServer,
    body: dict[str, Any],
    model: str = "sim-small",
    stream: bool = False,
    secret: str = SECRET_KEY,
    key: str = ACCESS_KEY,
    bearer: str | None = None,
    **headers: str,
) -> httpx.Response:
    op = "converse-stream" if stream else "converse"
    model_id = model.replace(":", "%3A").replace("/", "%2F")
    call = HttpCall(
        "POST",
        f"{sim.url}/model/{model_id}/{op}",
        {"content-type": "application/json", **headers},
        json.dumps(body).encode(),
    )
    if bearer is not None:
        call.headers["Authorization"] = f"Bearer {bearer}"
    else:
        call = sign(call, Credentials(key, secret).get_frozen_credentials(), "us-east-1")
    return httpx.post(call.url, content=call.body, headers=call.headers, timeout=10)


def converse(text: str = "Repeat: hello bedrock", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"text": text}]}], **fields}


def events(raw: bytes) -> list[tuple[dict[str, Any], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(dict(m.headers), m.payload) for m in buffer]


def test_converse_shape(sim: SimServer) -> None:
    r = post(sim, converse(system=[{"text": "Be nice."}], inferenceConfig={"maxTokens": 100}))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["output"] == {"message": {"role": "assistant", "content": [{"text": "hello bedrock"}]}}
    assert data["stopReason"] == "end_turn"
    usage = data["usage"]
    assert usage["inputTokens"] == count_tokens("Be nice.") + count_tokens("Repeat: hello bedrock")
    assert usage["outputTokens"] == count_tokens("hello bedrock")
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert data["metrics"]["latencyMs"] >= 0


def test_converse_stream_is_a_valid_event_stream(sim: SimServer) -> None:
    r = post(sim, converse("Repeat: a b c"), stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.amazon.eventstream"
    got = events(r.content)  # botocore checks both CRCs of every message
    names = [h[":event-type"] for h, _ in got]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    assert all(h[":message-type"] == "event" and h[":content-type"] == "application/json" for h, _ in got)
    text = "".join(json.loads(p)["delta"]["text"] for h, p in got if h[":event-type"] == "contentBlockDelta")
    assert text == "a b c"
    assert json.loads(got[-2][1]) == {"stopReason": "end_turn"}
    assert json.loads(got[-1][1])["usage"]["outputTokens"] == count_tokens("a b c")


def test_tool_use_round(sim: SimServer) -> None:
    tools = {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "inputSchema": {
                        "json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
                    },
                }
            }
        ],
        "toolChoice": {"tool": {"name": "get_weather"}},
    }
    data = post(sim, converse("Weather in Paris?", toolConfig=tools)).json()
    assert data["stopReason"] == "tool_use"
    use = data["output"]["message"]["content"][0]["toolUse"]
    assert use["name"] == "get_weather" and isinstance(use["input"]["city"], str)
    assert use["toolUseId"].startswith("tooluse_")
    streamed = events(post(sim, converse("Weather in Paris?", toolConfig=tools), stream=True).content)
    start = next(json.loads(p) for h, p in streamed if h[":event-type"] == "contentBlockStart")
    assert start["start"]["toolUse"]["name"] == "get_weather"
    args = "".join(
        json.loads(p)["delta"]["toolUse"]["input"] for h, p in streamed if h[":event-type"] == "contentBlockDelta"
    )
    assert isinstance(json.loads(args)["city"], str)
    followup = {
        "messages": [
            {"role": "user", "content": [{"text": "Weather in Paris?"}]},
            {"role": "assistant", "content": [{"toolUse": use}]},
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": "22C"}]}}],
            },
        ],
        "toolConfig": {"tools": tools["tools"]},
    }
    answer = post(sim, followup).json()
    assert answer["output"]["message"]["content"][0]["text"].startswith("Tool result received: 22C")


def test_structured_output(sim: SimServer) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["label"],
    }
    config = {
        "textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": json.dumps(schema), "name": "v"}}}
    }
    data = post(sim, converse("Classify", outputConfig=config)).json()
    assert json.loads(data["output"]["message"]["content"][0]["text"])["label"] in ("yes", "no")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}, "must start with a user message"),
        (
            {"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]},
            "alternate",
        ),
        ({"messages": [{"role": "user", "content": [{"text": "  "}]}]}, "blank text"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "x"}]}}]}
                ]
            },
            "toolConfig field must be defined",
        ),
        (
            {"messages": [{"role": "user", "content": [{"image": {"format": "tiff", "source": {"bytes": "AA=="}}}]}]},
            "format",
        ),
    ],
)
def test_validation_errors(sim: SimServer, body: dict[str, Any], message: str) -> None:
    r = post(sim, body)
    assert r.status_code == 400
    assert r.headers["x-amzn-errortype"].startswith("ValidationException:")
    assert message in r.json()["message"]


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("sim-small", "sim-small"),
        ("us.sim-small", "sim-small"),
        ("us.anthropic.sim-small-v1:0", "sim-small"),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/sim-large", "sim-large"),
        ("unknown-model", "unknown-model"),
    ],
)
def test_model_ids_map_to_the_fleet(model_id: str, expected: str) -> None:
    assert resolve_model(model_id, FLEET) == expected


def test_profile_ids_and_arns_are_served(sim: SimServer) -> None:
    for model in ("us.anthropic.sim-small-v1:0", "arn:aws:bedrock:us-east-1:1:inference-profile/sim-small"):
        r = post(sim, converse(), model=model)
        assert r.status_code == 200, (model, r.text)
    received = httpx.get(f"{sim.url}/_sim/requests/sim-small").json()["requests"]
    assert len(received) == 2


def test_unknown_model_is_resource_not_found(sim: SimServer) -> None:
    r = post(sim, converse(), model="nope")
    assert r.status_code == 404
    assert r.headers["x-amzn-errortype"].startswith("ResourceNotFoundException:")


@pytest.mark.parametrize(
    ("kwargs", "error_type"),
    [
        ({"secret": "wrong-secret"}, "InvalidSignatureException"),
        ({"key": "AKIDUNKNOWN"}, "UnrecognizedClientException"),
        ({"bearer": "not-the-api-key"}, "UnrecognizedClientException"),
    ],
)
def test_bad_credentials_are_403s(sim: SimServer, kwargs: dict[str, Any], error_type: str) -> None:
    r = post(sim, converse(), **kwargs)
    assert r.status_code == 403
    assert r.headers["x-amzn-errortype"].split(":", 1)[0] == error_type
    assert httpx.get(f"{sim.url}/_sim/requests/sim-small").json()["requests"] == []  # the model saw nothing


def test_unsigned_request_is_refused(sim: SimServer) -> None:
    r = httpx.post(f"{sim.url}/model/sim-small/converse", json=converse())
    assert r.status_code == 403
    assert r.headers["x-amzn-errortype"].startswith("MissingAuthenticationTokenException")


def test_bedrock_api_key(sim: SimServer) -> None:
    assert post(sim, converse(), bearer=API_KEY).status_code == 200


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        ("rate_limit", 429, "ThrottlingException"),
        ("server_error", 500, "InternalServerException"),
        ("unavailable", 503, "ServiceUnavailableException"),
    ],
)
def test_status_faults(sim: SimServer, fault: str, status: int, error_type: str) -> None:
    r = post(sim, converse(), **{"x-sim-fault": fault})
    assert r.status_code == status
    assert r.headers["x-amzn-errortype"].split(":", 1)[0] == error_type
    assert r.json()["message"]


def test_cut_stream_ends_before_message_stop(sim: SimServer) -> None:
    r = post(sim, converse("Repeat: one two three four"), stream=True, **{"x-sim-fault": "cut_stream"})
    names = [h[":event-type"] for h, _ in events(r.content)]
    assert "messageStop" not in names and names[0] == "messageStart"


def test_malformed_stream_breaks_one_payload(sim: SimServer) -> None:
    r = post(sim, converse("Repeat: one two three four"), stream=True, **{"x-sim-fault": "malformed"})
    broken = 0
    for _, payload in events(r.content):  # the frames stay valid: the JSON inside one is cut
        try:
            json.loads(payload)
        except json.JSONDecodeError:
            broken += 1
    assert broken == 1


def test_context_length(sim: SimServer) -> None:
    r = post(sim, converse("word " * 2_000_000))
    assert r.status_code == 400
    assert "Input is too long" in r.json()["message"]
