"""The Gemini wire format: raw HTTP against the documented shapes, and the `google-genai` SDK if installed."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from modelyard.sim import SimServer
from tests.unit.sim.sim_helpers import fleet, sse

KEY = {"x-goog-api-key": "AIza-anything"}


def post(sim: SimServer, path: str, body: dict[str, Any], query: str = "", **headers: str) -> httpx.Response:
    return httpx.post(f"{sim.gemini_base}/models/{path}{query}", json=body, headers={**KEY, **headers})


def text_request(text: str, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return body


def test_generate_content_shape(sim: SimServer) -> None:
    body = text_request("Repeat: hello gemini")
    body["systemInstruction"] = {"parts": [{"text": "Be nice."}]}
    data = post(sim, "sim-small:generateContent", body).json()
    assert set(data) == {"candidates", "usageMetadata", "modelVersion", "responseId"}
    candidate = data["candidates"][0]
    assert candidate["content"] == {"parts": [{"text": "hello gemini"}], "role": "model"}
    assert candidate["finishReason"] == "STOP" and candidate["index"] == 0
    usage = data["usageMetadata"]
    assert usage["promptTokenCount"] == 2 + 5  # "Be nice." + "Repeat: hello gemini"
    assert usage["candidatesTokenCount"] == 3
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert usage["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 7}]
    assert data["modelVersion"] == "sim-small" and data["responseId"]


def test_stream_generate_content_sse_fragments(sim: SimServer) -> None:
    r = post(sim, "sim-small:streamGenerateContent", text_request("Repeat: a b c d e f g h i j"), "?alt=sse")
    assert r.headers["content-type"].startswith("text/event-stream")
    assert b"\r\n\r\n" in r.content  # Gemini frames events with CRLF
    fragments = [json.loads(data) for _, data in sse(r.content)]
    assert len(fragments) >= 2
    for fragment in fragments:
        assert {"candidates", "usageMetadata", "modelVersion", "responseId"} <= set(fragment)
        assert fragment["candidates"][0]["content"]["role"] == "model"
    text = "".join(p["text"] for f in fragments for p in f["candidates"][0]["content"]["parts"])
    assert text == "a b c d e f g h i j"
    assert all("finishReason" not in f["candidates"][0] for f in fragments[:-1])
    last = fragments[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["candidatesTokenCount"] == 5
    assert len({f["responseId"] for f in fragments}) == 1


def test_stream_without_alt_sse_is_one_json_array(sim: SimServer) -> None:
    r = post(sim, "sim-small:streamGenerateContent", text_request("Repeat: x y z"))
    fragments = json.loads(r.content)
    assert isinstance(fragments, list) and fragments[-1]["candidates"][0]["finishReason"] == "STOP"


def test_max_output_tokens_and_stop_sequences(sim: SimServer) -> None:
    data = post(sim, "sim-large:generateContent", text_request("hi", maxOutputTokens=4)).json()
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert data["usageMetadata"]["candidatesTokenCount"] <= 4
    data = post(sim, "sim-large:generateContent", text_request("Repeat: one|two", stopSequences=["|"])).json()
    assert data["candidates"][0]["content"]["parts"][0]["text"] == "one"
    assert data["candidates"][0]["finishReason"] == "STOP"


WEATHER_DECL = {
    "name": "get_weather",
    "description": "Weather",
    "parameters": {
        "type": "OBJECT",
        "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"}},
        "required": ["city"],
    },
}


def test_function_calling_modes(sim: SimServer) -> None:
    body = text_request("hi")
    body["tools"] = [{"functionDeclarations": [WEATHER_DECL]}]
    body["toolConfig"] = {"functionCallingConfig": {"mode": "ANY"}}
    data = post(sim, "sim-small:generateContent", body).json()
    part = data["candidates"][0]["content"]["parts"][0]
    assert part["functionCall"]["name"] == "get_weather"
    assert isinstance(part["functionCall"]["args"]["city"], str)
    assert data["candidates"][0]["finishReason"] == "STOP"
    body = text_request("what would get_weather say")
    body["tools"] = [{"function_declarations": [WEATHER_DECL]}]  # snake_case works too
    data = post(sim, "sim-small:generateContent", body).json()
    assert data["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "get_weather"
    body["toolConfig"] = {"functionCallingConfig": {"mode": "NONE"}}
    data = post(sim, "sim-small:generateContent", body).json()
    assert "text" in data["candidates"][0]["content"]["parts"][0]


def test_function_response_convention(sim: SimServer) -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "weather via get_weather"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]},
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"result": "-3C"}}},
                ],
            },
        ],
        "tools": [{"functionDeclarations": [WEATHER_DECL]}],
    }
    data = post(sim, "sim-small:generateContent", body).json()
    assert data["candidates"][0]["content"]["parts"] == [{"text": "Tool result received: -3C"}]


def test_json_response_schemas(sim: SimServer) -> None:
    openapi = {
        "type": "OBJECT",
        "properties": {"name": {"type": "STRING"}, "n": {"type": "INTEGER"}},
        "required": ["name", "n"],
    }
    data = post(
        sim,
        "sim-small:generateContent",
        text_request("json", responseMimeType="application/json", responseSchema=openapi),
    ).json()
    doc = json.loads(data["candidates"][0]["content"]["parts"][0]["text"])
    assert isinstance(doc["name"], str) and isinstance(doc["n"], int)
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "number"}}},
        "required": ["items"],
    }
    data = post(
        sim,
        "sim-small:generateContent",
        text_request("json", responseMimeType="application/json", responseJsonSchema=schema),
    ).json()
    jsonschema.validate(json.loads(data["candidates"][0]["content"]["parts"][0]["text"]), schema)


def test_embed_and_batch_embed(sim: SimServer) -> None:
    one = post(
        sim, "sim-embed:embedContent", {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 32}
    ).json()
    assert len(one["embedding"]["values"]) == 32
    batch = post(
        sim,
        "sim-embed:batchEmbedContents",
        {
            "requests": [
                {"model": "models/sim-embed", "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 32},
                {"model": "models/sim-embed", "content": {"parts": [{"text": "world"}]}, "outputDimensionality": 32},
            ]
        },
    ).json()
    assert [len(e["values"]) for e in batch["embeddings"]] == [32, 32]
    assert batch["embeddings"][0]["values"] == one["embedding"]["values"]
    assert batch["embeddings"][1]["values"] != one["embedding"]["values"]


def test_embed_ignores_parts_that_are_not_text(sim: SimServer) -> None:
    for parts in ([{"text": 5}, {"text": "hi"}], 7, [None, {"text": None}]):
        r = post(sim, "sim-embed:embedContent", {"content": {"parts": parts}})
        assert r.status_code == 200, r.text


def test_errors_in_gemini_format(sim: SimServer) -> None:
    r = post(sim, "gemini-nope:generateContent", text_request("hi"))
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == 404 and error["status"] == "NOT_FOUND" and "gemini-nope" in error["message"]
    r = post(sim, "sim-small:generateContent", {"contents": []})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    r = post(sim, "sim-small:generateContent", text_request("hi"), **{"x-sim-fault": "rate_limit"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"


def test_models_list(sim: SimServer) -> None:
    data = httpx.get(sim.gemini_base + "/models", headers=KEY).json()
    names = {m["name"] for m in data["models"]}
    assert "models/sim-small" in names
    one = httpx.get(sim.gemini_base + "/models/sim-small", headers=KEY).json()
    assert "generateContent" in one["supportedGenerationMethods"]


def test_key_in_header_or_query() -> None:
    with SimServer(fleet({"name": "m"}, api_key="goog")) as sim:
        url = f"{sim.gemini_base}/models/m:generateContent"
        assert httpx.post(url, json=text_request("hi")).status_code == 401
        bad = httpx.post(url, json=text_request("hi"), headers={"x-goog-api-key": "nope"})
        assert bad.status_code == 401 and bad.json()["error"]["status"] == "UNAUTHENTICATED"
        assert httpx.post(url, json=text_request("hi"), headers={"x-goog-api-key": "goog"}).status_code == 200
        assert httpx.post(url + "?key=goog", json=text_request("hi")).status_code == 200


# ---------------------------------------------------------------- the official google-genai SDK


def test_google_genai_sdk_round_trip(sim: SimServer) -> None:
    genai = pytest.importorskip("google.genai")
    types = pytest.importorskip("google.genai.types")
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=sim.url))
    r = client.models.generate_content(model="sim-medium", contents="Repeat: from the sdk")
    assert r.text == "from the sdk"
    assert r.usage_metadata.candidates_token_count == 3
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    chunks = list(client.models.generate_content_stream(model="sim-medium", contents="Repeat: p q r s t u v"))
    assert "".join(c.text or "" for c in chunks) == "p q r s t u v"
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    e = client.models.embed_content(
        model="sim-embed", contents=["a", "b"], config=types.EmbedContentConfig(output_dimensionality=8)
    )
    assert [len(x.values) for x in e.embeddings] == [8, 8]


def test_google_genai_automatic_function_calling_loop(sim: SimServer) -> None:
    genai = pytest.importorskip("google.genai")
    types = pytest.importorskip("google.genai.types")
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=sim.url))
    seen: list[str] = []

    def get_weather(city: str) -> str:
        """Weather for a city."""
        seen.append(city)
        return "22C"

    chat = client.chats.create(model="sim-small", config=types.GenerateContentConfig(tools=[get_weather]))
    r = chat.send_message("What does get_weather say for Paris?")
    assert len(seen) == 1 and isinstance(seen[0], str)
    assert r.text == "Tool result received: 22C"


def test_images_cache_and_thoughts_in_usage_metadata() -> None:
    spec = {"name": "g", "cache_hit_rate": 1.0, "reasoning_tokens": 9}
    with SimServer(fleet(spec)) as sim:
        image = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
        body = {"contents": [{"role": "user", "parts": [image, {"text": "Repeat: " + "w" * 392}]}]}
        data = httpx.post(f"{sim.gemini_base}/models/g:generateContent", json=body).json()
        usage = data["usageMetadata"]
        assert usage["promptTokenCount"] == 85 + 100
        assert usage["cachedContentTokenCount"] == (85 + 100) * 3 // 4
        assert usage["thoughtsTokenCount"] == 9
        assert usage["candidatesTokenCount"] == 98  # the answer alone; thoughts are counted apart
        assert usage["totalTokenCount"] == 185 + 98 + 9
