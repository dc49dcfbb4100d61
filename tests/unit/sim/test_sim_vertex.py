"""The simulator's Vertex AI routes (sim/cloud_vertex.py): the token endpoint verifies google-auth's JWT
assertion as Google does, model routes want a live access token, and Gemini and Claude answer at Vertex
URLs in their own wire formats (Claude's body without `model`, with `anthropic_version`)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC
from typing import Any
from urllib.parse import urlencode

import pytest
from google.auth import crypt, jwt

from modelyard.sim import SimServer
from modelyard.sim.app import SimApp, create_app
from modelyard.sim.cloud_vertex import GOOGLE_TOKEN_AUDIENCE, JWT_GRANT, claims, state_of
from tests.unit.sim.sim_helpers import asgi_call, fleet, sse

VERTEX = "/v1/projects/p/locations/us-central1/publishers"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
FORM = {"content-type": "application/x-www-form-urlencoded", "host": "127.0.0.1:9999"}


@pytest.fixture
def app() -> SimApp:
    return create_app(fleet({"name": "m"}, {"name": "e", "kind": "embedding", "dimensions": 8}))


async def service_account(app: SimApp, lifetime_s: float = 3600) -> dict[str, Any]:
    result = await asgi_call(
        app,
        "GET",
        "/_vertex/service-account",
        headers={"host": "127.0.0.1:9999"},
        query=f"lifetime_s={lifetime_s}".encode(),
    )
    assert result.status == 200
    info: dict[str, Any] = result.json()
    return info


def assertion(info: dict[str, Any], **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": info["client_email"], "aud": GOOGLE_TOKEN_AUDIENCE, "scope": SCOPE, "iat": now, "exp": now + 3600}
    claims.update(overrides)
    signer = crypt.RSASigner.from_service_account_info(info)
    token: bytes = jwt.encode(signer, claims)
    return token.decode()


async def exchange(app: SimApp, grant: str, grant_type: str = JWT_GRANT) -> Any:
    body = urlencode({"grant_type": grant_type, "assertion": grant}).encode()
    return await asgi_call(app, "POST", "/oauth2/token", body, FORM)


async def access_token(app: SimApp, lifetime_s: float = 3600) -> str:
    info = await service_account(app, lifetime_s)
    result = await exchange(app, assertion(info))
    assert result.status == 200, result.body
    token: str = result.json()["access_token"]
    return token


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json", **extra}


def claude_body(**extra: Any) -> dict[str, Any]:
    return {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Repeat: hello vertex"}],
        **extra,
    }


GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Repeat: hello vertex"}]}]}


# ----------------------------------------------------------------------------- routing


def test_claims_only_vertex_paths() -> None:
    assert claims("POST", f"{VERTEX}/google/models/m:generateContent")
    assert claims("POST", f"{VERTEX}/anthropic/models/claude-x@2025:streamRawPredict")
    assert claims("POST", "/v1beta1/projects/p/locations/global/publishers/google/models/m:predict")
    assert claims("POST", "/oauth2/token") and claims("GET", "/_vertex/service-account")
    assert not claims("POST", "/v1/messages") and not claims("POST", "/v1beta/models/m:generateContent")
    assert not claims("POST", f"{VERTEX}/meta/models/llama:rawPredict")


# ----------------------------------------------------------------------------- the token endpoint


async def test_service_account_file_points_at_the_simulator(app: SimApp) -> None:
    info = await service_account(app)
    assert info["type"] == "service_account" and info["token_uri"] == "http://127.0.0.1:9999/oauth2/token"
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert info["client_email"].endswith("@sim-project.iam.gserviceaccount.com")


async def test_a_valid_assertion_gets_a_token_with_its_lifetime(app: SimApp) -> None:
    info = await service_account(app, lifetime_s=90)
    result = await exchange(app, assertion(info))
    assert result.status == 200
    answer = result.json()
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 90
    assert answer["access_token"].startswith("ya29.")
    assert state_of(app).issued == 1


async def _other_key_assertion(app: SimApp) -> str:
    info = await service_account(app)
    other = await service_account(app)
    forged = dict(other, private_key_id=info["private_key_id"], client_email=info["client_email"])
    return assertion(forged)  # signed by another key under this account's key id


async def _expired(app: SimApp) -> str:
    info = await service_account(app)
    now = int(time.time())
    return assertion(info, iat=now - 4000, exp=now - 400)


@pytest.mark.parametrize(
    ("make", "description"),
    [
        (_other_key_assertion, "Invalid JWT Signature."),
        (_expired, "short-lived"),
    ],
)
async def test_bad_signatures_and_expired_assertions_are_refused(app: SimApp, make: Any, description: str) -> None:
    result = await exchange(app, await make(app))
    assert result.status == 400
    assert result.json()["error"] == "invalid_grant" and description in result.json()["error_description"]
    assert state_of(app).issued == 0 and state_of(app).refused == 1


@pytest.mark.parametrize(
    ("overrides", "description"),
    [
        ({"aud": "http://127.0.0.1:9999/oauth2/token"}, "aud"),
        ({"iss": "someone@else.iam.gserviceaccount.com"}, "iss"),
        ({"scope": "https://www.googleapis.com/auth/userinfo.email"}, "scope"),
        ({"exp": int(time.time()) + 7200}, "short-lived"),
    ],
)
async def test_claims_are_checked(app: SimApp, overrides: dict[str, Any], description: str) -> None:
    info = await service_account(app)
    result = await exchange(app, assertion(info, **overrides))
    assert result.status == 400 and description in result.json()["error_description"]


async def test_unknown_keys_grant_types_and_garbage_are_refused(app: SimApp) -> None:
    info = await service_account(app)
    unknown = dict(info, private_key_id="0" * 40)
    assert (await exchange(app, assertion(unknown))).json()["error_description"] == "Invalid JWT Signature."
    assert (await exchange(app, assertion(info), "client_credentials")).json()["error"] == "unsupported_grant_type"
    assert (await exchange(app, "not.a-jwt")).status == 400
    assert (await exchange(app, "")).status == 400
    assert state_of(app).refused == 4


def test_google_auth_refreshes_against_the_running_simulator(sim: SimServer) -> None:
    """google-auth's own service-account flow (its JWT, its HTTP transport) on loopback."""
    import httpx
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account as sa

    info = httpx.get(f"{sim.url}/_vertex/service-account", params={"lifetime_s": 120}).json()
    credentials = sa.Credentials.from_service_account_info(info, scopes=[SCOPE])
    credentials.refresh(Request())
    assert credentials.token and credentials.token.startswith("ya29.sim-")
    assert credentials.expiry is not None
    remaining = credentials.expiry.replace(tzinfo=UTC).timestamp() - time.time()  # google-auth: naive UTC
    assert 60 < remaining <= 121
    answer = httpx.post(
        f"{sim.url}{VERTEX}/google/models/sim-small:generateContent",
        json=GEMINI_BODY,
        headers={"authorization": f"Bearer {credentials.token}"},
    )
    assert answer.status_code == 200 and answer.json()["candidates"][0]["content"]["parts"][0]["text"] == "hello vertex"


# ----------------------------------------------------------------------------- model routes need a live token


@pytest.mark.parametrize("publisher", ["google", "anthropic"])
async def test_missing_unknown_expired_and_revoked_tokens_are_unauthenticated(app: SimApp, publisher: str) -> None:
    path = f"{VERTEX}/{publisher}/models/m:" + ("generateContent" if publisher == "google" else "rawPredict")
    body = GEMINI_BODY if publisher == "google" else claude_body()
    token = await access_token(app)
    assert (await asgi_call(app, "POST", path, body, bearer(token))).status == 200
    for headers in ({"content-type": "application/json"}, bearer("ya29.never-issued")):
        result = await asgi_call(app, "POST", path, body, headers)
        assert result.status == 401
        assert result.json()["error"]["status"] == "UNAUTHENTICATED" and result.json()["error"]["code"] == 401
    state_of(app).tokens[token] = (time.time() - 1, "expired@p.iam.gserviceaccount.com")
    assert (await asgi_call(app, "POST", path, body, bearer(token))).status == 401
    fresh = await access_token(app)
    assert (await asgi_call(app, "POST", "/_vertex/revoke", b"")).status == 200
    assert (await asgi_call(app, "POST", path, body, bearer(fresh))).status == 401
    counts = (await asgi_call(app, "GET", "/_vertex/tokens")).json()
    assert counts == {"issued": 2, "live": 0, "refused": 0, "revoked": 1, "unauthenticated": 4}


async def test_short_lived_tokens_expire(app: SimApp) -> None:
    token = await access_token(app, lifetime_s=1)
    path = f"{VERTEX}/google/models/m:generateContent"
    assert (await asgi_call(app, "POST", path, GEMINI_BODY, bearer(token))).status == 200
    await asyncio.sleep(1.05)
    assert (await asgi_call(app, "POST", path, GEMINI_BODY, bearer(token))).status == 401


# ----------------------------------------------------------------------------- Gemini and Claude at Vertex URLs


async def test_gemini_generate_and_stream(app: SimApp) -> None:
    token = await access_token(app)
    plain = await asgi_call(app, "POST", f"{VERTEX}/google/models/m:generateContent", GEMINI_BODY, bearer(token))
    assert plain.status == 200 and plain.json()["candidates"][0]["content"]["parts"][0]["text"] == "hello vertex"
    streamed = await asgi_call(
        app, "POST", f"{VERTEX}/google/models/m:streamGenerateContent", GEMINI_BODY, bearer(token), query=b"alt=sse"
    )
    assert streamed.status == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    text = "".join(
        part.get("text", "")
        for _, data in sse(streamed.body)
        for part in json.loads(data)["candidates"][0]["content"]["parts"]
    )
    assert text == "hello vertex"


async def test_claude_raw_predict_and_stream(app: SimApp) -> None:
    token = await access_token(app)
    plain = await asgi_call(app, "POST", f"{VERTEX}/anthropic/models/m:rawPredict", claude_body(), bearer(token))
    assert plain.status == 200, plain.body
    assert plain.json()["type"] == "message" and plain.json()["content"][0]["text"] == "hello vertex"
    streamed = await asgi_call(
        app, "POST", f"{VERTEX}/anthropic/models/m:streamRawPredict", claude_body(stream=True), bearer(token)
    )
    names = [name for name, _ in sse(streamed.body)]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    (recorded, _) = (await asgi_call(app, "GET", "/_sim/requests/m")).json()["requests"]
    assert recorded["path"].endswith(":rawPredict") and "authorization" not in recorded["headers"]
    assert "model" not in json.loads(recorded["body"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (claude_body(model="m"), "model: Extra inputs are not permitted"),
        (claude_body(anthropic_version="2023-06-01"), "anthropic_version"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "anthropic_version"),
    ],
)
async def test_claude_body_must_be_vertexs(app: SimApp, body: dict[str, Any], message: str) -> None:
    token = await access_token(app)
    result = await asgi_call(app, "POST", f"{VERTEX}/anthropic/models/m:rawPredict", body, bearer(token))
    assert result.status == 400
    assert result.json()["error"]["type"] == "invalid_request_error" and message in result.json()["error"]["message"]


async def test_unknown_model_and_method(app: SimApp) -> None:
    token = await access_token(app)
    result = await asgi_call(app, "POST", f"{VERTEX}/anthropic/models/nope:rawPredict", claude_body(), bearer(token))
    assert result.status == 404 and result.json()["error"]["type"] == "not_found_error"
    result = await asgi_call(app, "POST", f"{VERTEX}/google/models/m:countTokens", GEMINI_BODY, bearer(token))
    assert result.status == 404 and result.json()["error"]["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("publisher", "method", "body", "fault", "status", "check"),
    [
        ("google", "generateContent", GEMINI_BODY, "rate_limit", 429, ("status", "RESOURCE_EXHAUSTED")),
        ("google", "generateContent", GEMINI_BODY, "unavailable", 503, ("status", "UNAVAILABLE")),
        ("anthropic", "rawPredict", claude_body(), "rate_limit", 429, ("type", "rate_limit_error")),
        ("anthropic", "rawPredict", claude_body(), "unavailable", 529, ("type", "overloaded_error")),
        ("anthropic", "rawPredict", claude_body(), "server_error", 500, ("type", "api_error")),
    ],
)
async def test_faults_render_in_the_publishers_shape(
    app: SimApp, publisher: str, method: str, body: Any, fault: str, status: int, check: tuple[str, str]
) -> None:
    token = await access_token(app)
    path = f"{VERTEX}/{publisher}/models/m:{method}"
    result = await asgi_call(app, "POST", path, body, bearer(token, **{"x-sim-fault": fault}))
    assert result.status == status
    key, value = check
    assert result.json()["error"][key] == value


async def test_claude_count_tokens(app: SimApp) -> None:
    token = await access_token(app)
    path = f"{VERTEX}/anthropic/models/count-tokens:rawPredict"
    body = {"anthropic_version": "vertex-2023-10-16", "model": "m", "messages": [{"role": "user", "content": "hi"}]}
    result = await asgi_call(app, "POST", path, body, bearer(token))
    assert result.status == 200 and result.json()["input_tokens"] > 0
    body.pop("anthropic_version")
    assert (await asgi_call(app, "POST", path, body, bearer(token))).status == 400


async def test_predict_embeddings(app: SimApp) -> None:
    token = await access_token(app)
    body = {"instances": [{"content": "alpha"}, {"content": "beta gamma"}], "parameters": {"outputDimensionality": 4}}
    result = await asgi_call(app, "POST", f"{VERTEX}/google/models/e:predict", body, bearer(token))
    assert result.status == 200
    predictions = result.json()["predictions"]
    assert [len(p["embeddings"]["values"]) for p in predictions] == [4, 4]
    assert [p["embeddings"]["statistics"]["token_count"] for p in predictions] == [2, 3]
    bad = await asgi_call(app, "POST", f"{VERTEX}/google/models/e:predict", {"instances": []}, bearer(token))
    assert bad.status == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_revoke_one_accounts_tokens(app: SimApp) -> None:
    first, second = await service_account(app), await service_account(app)
    tokens = [(await exchange(app, assertion(info))).json()["access_token"] for info in (first, second)]
    revoked = await asgi_call(
        app, "POST", "/_vertex/revoke", b"", query=f"client_email={first['client_email']}".encode()
    )
    assert revoked.json() == {"revoked": 1}
    path = f"{VERTEX}/google/models/m:generateContent"
    assert (await asgi_call(app, "POST", path, GEMINI_BODY, bearer(tokens[0]))).status == 401
    assert (await asgi_call(app, "POST", path, GEMINI_BODY, bearer(tokens[1]))).status == 200
