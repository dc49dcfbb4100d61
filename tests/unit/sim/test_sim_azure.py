"""The simulator's Azure OpenAI routes, through the official SDK's `AzureOpenAI` client and raw ASGI calls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import openai
import pytest

from modelyard.sim import SimServer
from modelyard.sim.app import create_app
from modelyard.sim.cloud_azure import ENTRA_SCOPE, claims, issue
from tests.unit.sim.sim_helpers import Result, asgi_call, chat_body, fleet, sse

VERSION = "2024-10-21"
KEY = "sk-fleet-key"


@pytest.fixture(scope="module")
def keyed() -> Iterator[SimServer]:
    """A simulator whose fleet requires a key: the api-key, and the Entra client secret."""
    spec = [{"name": "m", "kind": "chat"}, {"name": "e", "kind": "embedding", "dimensions": 8}]
    with SimServer(fleet(*spec, api_key=KEY), instant=True) as server:
        yield server


def call(method: str, path: str, body: Any = b"", headers: dict[str, str] | None = None, query: str = "") -> Result:
    app = create_app(fleet({"name": "m"}, {"name": "e", "kind": "embedding", "dimensions": 8}, api_key=KEY))
    return asyncio.run(asgi_call(app, method, path, body, headers, query.encode()))


def deployment_path(dep: str = "m", op: str = "chat/completions") -> str:
    return f"/openai/deployments/{dep}/{op}"


# ----------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("method", "path", "claimed"),
    [
        ("POST", "/openai/deployments/x/chat/completions", True),
        ("POST", "/openai/deployments/x/embeddings", True),
        ("POST", "/openai/deployments/x/audio/transcriptions", False),
        ("POST", "/openai/v1/chat/completions", True),
        ("POST", "/openai/v1/responses", True),
        ("POST", "/openai/responses", True),
        ("GET", "/openai/v1/responses/resp_1", True),
        ("POST", "/tenant-1/oauth2/v2.0/token", True),
        ("GET", "/tenant-1/v2.0/.well-known/openid-configuration", True),
        ("POST", "/v1/chat/completions", False),
        ("GET", "/openai/deployments/x/chat/completions", False),
    ],
)
def test_claims(method: str, path: str, claimed: bool) -> None:
    assert claims(method, path) is claimed


def test_sdk_chat_on_the_dated_api(keyed: SimServer) -> None:
    client = openai.AzureOpenAI(azure_endpoint=keyed.url, api_key=KEY, api_version=VERSION, max_retries=0)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content
    assert answer.model == "m"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    seen = keyed.app.received.snapshot("m")[-1]
    assert seen["path"] == "/openai/deployments/m/chat/completions"
    assert "api-key" not in seen["headers"]  # credentials are never recorded


def test_sdk_stream_on_the_dated_api(keyed: SimServer) -> None:
    client = openai.AzureOpenAI(azure_endpoint=keyed.url, api_key=KEY, api_version=VERSION, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_sdk_embeddings(keyed: SimServer) -> None:
    client = openai.AzureOpenAI(azure_endpoint=keyed.url, api_key=KEY, api_version=VERSION, max_retries=0)
    out = client.embeddings.create(model="e", input=["a", "b"])
    assert len(out.data) == 2
    assert len(out.data[0].embedding) == 8


def test_sdk_v1_api_chat_and_responses(keyed: SimServer) -> None:
    client = openai.OpenAI(base_url=keyed.url + "/openai/v1", api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    response = client.responses.create(model="m", input="hi")
    assert response.output_text


def test_path_deployment_answers_whatever_the_body_says() -> None:
    got = call("POST", deployment_path("m"), chat_body("not-a-model"), {"api-key": KEY}, f"api-version={VERSION}")
    assert got.status == 200
    assert got.json()["model"] == "m"


@pytest.mark.parametrize(
    ("path", "query", "headers", "status", "code"),
    [
        (deployment_path(), "", {"api-key": KEY}, 404, "404"),
        (deployment_path("nope"), f"api-version={VERSION}", {"api-key": KEY}, 404, "DeploymentNotFound"),
        (deployment_path(), f"api-version={VERSION}", {}, 401, "401"),
        (deployment_path(), f"api-version={VERSION}", {"api-key": "wrong"}, 401, "401"),
        (deployment_path(), f"api-version={VERSION}", {"authorization": "Bearer forged"}, 401, "401"),
        ("/openai/v1/chat/completions", "", {"api-key": KEY}, 404, "DeploymentNotFound"),
    ],
)
def test_azure_errors(path: str, query: str, headers: dict[str, str], status: int, code: str) -> None:
    body = chat_body("nope" if path.startswith("/openai/v1") else "m")
    got = call("POST", path, body, headers, query)
    assert got.status == status
    assert got.json()["error"]["code"] == code


# ----------------------------------------------------------------------------- Entra ID


def token_request(form: dict[str, str]) -> Result:
    return call(
        "POST",
        "/tenant-1/oauth2/v2.0/token",
        urlencode(form).encode(),
        {"content-type": "application/x-www-form-urlencoded"},
    )


GRANT = {"grant_type": "client_credentials", "client_id": "app-1", "client_secret": KEY, "scope": ENTRA_SCOPE}


def test_token_endpoint_issues_bearer_tokens_the_data_plane_accepts(keyed: SimServer) -> None:
    import httpx

    got = httpx.post(f"{keyed.url}/tenant-1/oauth2/v2.0/token", data=GRANT)
    assert got.status_code == 200
    token = got.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3599
    url = f"{keyed.url}{deployment_path()}?api-version={VERSION}"
    answer = httpx.post(url, json=chat_body(), headers={"authorization": f"Bearer {token['access_token']}"})
    assert answer.status_code == 200
    embedded = httpx.post(
        f"{keyed.url}{deployment_path('e', 'embeddings')}?api-version={VERSION}",
        json={"model": "e", "input": "x"},
        headers={"authorization": f"Bearer {token['access_token']}"},
    )
    assert embedded.status_code == 200
    logged = keyed.app.received.snapshot("entra-token")[-1]
    assert json.loads(logged["body"]) == {
        "grant_type": "client_credentials",
        "client_id": "app-1",
        "scope": ENTRA_SCOPE,
    }


def test_token_lifetime_from_client_id() -> None:
    assert token_request({**GRANT, "client_id": "app-ttl-5"}).json()["expires_in"] == 5


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"scope": "https://management.azure.com/.default"}, 400, "invalid_scope"),
    ],
)
def test_token_refusals(change: dict[str, str], status: int, error: str) -> None:
    got = token_request({**GRANT, **change})
    assert got.status == status
    assert got.json()["error"] == error


def test_expired_and_tampered_tokens_are_refused() -> None:
    app = create_app(fleet({"name": "m"}, api_key=KEY))
    expired = issue(app, "app-1", ENTRA_SCOPE, 60, now=time.time() - 120)
    valid = issue(app, "app-1", ENTRA_SCOPE, 60)
    other_audience = issue(app, "app-1", "https://management.azure.com/.default", 60)
    query = f"api-version={VERSION}".encode()
    for token, status in ((expired, 401), (valid[:-2] + "00", 401), (other_audience, 401), (valid, 200)):
        headers = {"authorization": f"Bearer {token}"}
        got = asyncio.run(asgi_call(app, "POST", deployment_path(), chat_body(), headers, query))
        assert got.status == status, token


def test_openid_configuration_points_at_this_host() -> None:
    got = call("GET", "/tenant-1/v2.0/.well-known/openid-configuration", headers={"host": "127.0.0.1:9"})
    config = got.json()
    assert config["token_endpoint"] == "http://127.0.0.1:9/tenant-1/oauth2/v2.0/token"
    assert config["issuer"] == "http://127.0.0.1:9/tenant-1/v2.0"


# ----------------------------------------------------------------------------- content filter and 429s


@pytest.mark.parametrize(
    ("text", "headers"),
    [("say AZURE-FILTER-PROMPT", {}), ("hello", {"x-sim-fault": "content_filter"})],
)
def test_prompt_filter(text: str, headers: dict[str, str]) -> None:
    got = call("POST", deployment_path(), chat_body("m", text), {"api-key": KEY, **headers}, f"api-version={VERSION}")
    assert got.status == 400
    error = got.json()["error"]
    assert error["code"] == "content_filter"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["violence"] == {"filtered": True, "severity": "high"}


def test_answer_filter() -> None:
    body = chat_body("m", "AZURE-FILTER-ANSWER")
    got = call("POST", deployment_path(), body, {"api-key": KEY}, f"api-version={VERSION}")
    assert got.status == 200
    choice = got.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["content_filter_results"]["violence"]["filtered"] is True


def test_answer_filter_streamed() -> None:
    body = chat_body("m", "AZURE-FILTER-ANSWER", stream=True, stream_options={"include_usage": True})
    got = call("POST", deployment_path(), body, {"api-key": KEY}, f"api-version={VERSION}")
    events = [data for _, data in sse(got.body)]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"] == [] and "prompt_filter_results" in chunks[0]
    assert chunks[1]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[2]["usage"]["completion_tokens"] == 3


def test_rate_limit_carries_azure_headers() -> None:
    headers = {"api-key": KEY, "x-sim-fault": "rate_limit"}
    got = call("POST", deployment_path(), chat_body(), headers, f"api-version={VERSION}")
    assert got.status == 429
    assert got.json()["error"]["code"] == "429"
    assert "Please retry after" in got.json()["error"]["message"]
    assert got.headers["retry-after"] == got.headers["x-ratelimit-reset-tokens"]
    assert got.headers["retry-after-ms"]
    assert got.headers["x-ratelimit-remaining-requests"] == "0"


def test_rate_limit_reset_only() -> None:
    headers = {"api-key": KEY, "x-sim-fault": "rate_limit", "x-sim-azure-retry": "reset-only"}
    got = call("POST", deployment_path(), chat_body(), headers, f"api-version={VERSION}")
    assert got.status == 429
    assert "retry-after" not in got.headers and "retry-after-ms" not in got.headers
    assert float(got.headers["x-ratelimit-reset-tokens"]) > 0
