"""Vertex AI's OAuth2 tokens (providers/vertex_auth.py and the adapters' CredentialRefresh): refreshed before
expiry on a worker thread, one refresh at a time, dropped when the provider refuses them; and google-auth's
real service-account flow driven through a fake transport (nothing leaves the process)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from modelyard.config.model import Deployment
from modelyard.providers.base import HttpCall, discover
from modelyard.providers.vertex import VertexAnthropicAdapter, VertexGeminiAdapter
from modelyard.providers.vertex_auth import CLOUD_PLATFORM_SCOPE, REFRESH_MARGIN_S, TokenSource, load_service_account


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCredentials:
    """google-auth's credentials as TokenSource uses them: `refresh(request)` sets `token` and `expiry`."""

    def __init__(
        self, clock: FakeClock, lifetime_s: float | None = 3600.0, gate: threading.Event | None = None
    ) -> None:
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.gate = gate
        self.token: str | None = None
        self.expiry: datetime | None = None
        self.refreshes = 0
        self.threads: list[int] = []
        self.fail_next = False

    def refresh(self, request: Any) -> None:
        self.threads.append(threading.get_ident())
        if self.gate is not None:
            assert self.gate.wait(5)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("token endpoint down")
        self.refreshes += 1
        self.token = f"ya29.fake-{self.refreshes}"
        if self.lifetime_s is None:
            self.expiry = None
            return
        naive_utc = datetime.fromtimestamp(self.clock() + self.lifetime_s, UTC).replace(tzinfo=None)
        self.expiry = naive_utc  # google-auth keeps a naive UTC datetime


def source(creds: FakeCredentials, clock: FakeClock) -> TokenSource:
    return TokenSource(lambda: creds, clock=clock, request_factory=lambda: "request")


async def test_first_call_refreshes_then_the_token_is_cached() -> None:
    clock = FakeClock()
    creds = FakeCredentials(clock)
    tokens = source(creds, clock)
    assert await tokens.token() == "ya29.fake-1"
    clock.now += 60
    assert await tokens.token() == "ya29.fake-1"
    assert creds.refreshes == 1 and tokens.refreshes == 1


async def test_refresh_happens_before_expiry_not_after() -> None:
    clock = FakeClock()
    creds = FakeCredentials(clock, lifetime_s=3600)
    tokens = source(creds, clock)
    await tokens.token()
    clock.now += 3600 - REFRESH_MARGIN_S - 1  # 301 s left: still good
    assert await tokens.token() == "ya29.fake-1"
    clock.now += 2  # 299 s left: inside the margin, refreshed while the old token is still valid
    assert await tokens.token() == "ya29.fake-2"
    assert creds.refreshes == 2


async def test_short_lived_tokens_refresh_at_half_life() -> None:
    clock = FakeClock()
    creds = FakeCredentials(clock, lifetime_s=10)
    tokens = source(creds, clock)
    await tokens.token()
    clock.now += 4.9
    assert await tokens.token() == "ya29.fake-1"
    clock.now += 0.2
    assert await tokens.token() == "ya29.fake-2"


async def test_refresh_runs_on_a_worker_thread() -> None:
    clock = FakeClock()
    creds = FakeCredentials(clock)
    await source(creds, clock).token()
    assert creds.threads and creds.threads[0] != threading.get_ident()


async def test_concurrent_callers_share_one_refresh() -> None:
    clock = FakeClock()
    gate = threading.Event()
    creds = FakeCredentials(clock, gate=gate)
    tokens = source(creds, clock)
    waiting = [asyncio.create_task(tokens.token()) for _ in range(20)]
    await asyncio.sleep(0.05)  # all 20 are now waiting on the one refresh in flight
    assert len(creds.threads) == 1
    gate.set()
    assert set(await asyncio.gather(*waiting)) == {"ya29.fake-1"}
    assert creds.refreshes == 1


async def test_reject_forces_the_next_call_to_refresh() -> None:
    clock = FakeClock()
    creds = FakeCredentials(clock)
    tokens = source(creds, clock)
    await tokens.token()
    tokens.reject()
    assert await tokens.token() == "ya29.fake-2"


async def test_a_failed_refresh_raises_and_the_next_call_tries_again() -> None:
    clock = FakeClock()
    creds = FakeCredentials(clock)
    tokens = source(creds, clock)
    creds.fail_next = True
    with pytest.raises(RuntimeError, match="token endpoint down"):
        await tokens.token()
    assert await tokens.token() == "ya29.fake-1"


async def test_credentials_are_loaded_once() -> None:
    clock = FakeClock()
    creds = FakeCredentials(clock, lifetime_s=1)
    loads = []

    def load() -> FakeCredentials:
        loads.append(1)
        return creds

    tokens = TokenSource(load, clock=clock, request_factory=lambda: "request")
    for _ in range(3):
        await tokens.token()
        clock.now += 5
    assert len(loads) == 1 and creds.refreshes == 3


async def test_a_token_without_expiry_is_kept() -> None:
    clock = FakeClock()
    creds = FakeCredentials(clock, lifetime_s=None)
    tokens = source(creds, clock)
    await tokens.token()
    clock.now += 10**6
    assert await tokens.token() == "ya29.fake-1"


# ----------------------------------------------------------------------------- the adapters' capability


def gemini_dep(**options: Any) -> Deployment:
    return Deployment(name="g@vertex", provider="vertex", model="gemini-2.5-flash", options={"project": "p", **options})


def claude_dep(**options: Any) -> Deployment:
    opts = {"project": "p", **options}
    return Deployment(name="c@vertex", provider="vertex_anthropic", model="claude-sonnet-4-5", options=opts)


def test_both_adapters_have_credential_refresh() -> None:
    assert discover(VertexGeminiAdapter()).credentials is not None
    caps = discover(VertexAnthropicAdapter())
    assert caps.credentials is not None and caps.native is not None and caps.count_tokens is not None


async def test_authorize_adds_the_bearer_token_without_touching_the_call() -> None:
    adapter = VertexGeminiAdapter()
    clock = FakeClock()
    creds = FakeCredentials(clock)
    dep = gemini_dep(credentials_file="/keys/sa.json")
    adapter._sources["file:/keys/sa.json"] = source(creds, clock)
    call = HttpCall("POST", "https://x", {"content-type": "application/json"}, b"{}")
    signed = await adapter.authorize(dep, call)
    assert signed.headers == {"content-type": "application/json", "Authorization": "Bearer ya29.fake-1"}
    assert "Authorization" not in call.headers and signed.body == call.body and signed.url == call.url
    adapter.credentials_rejected(dep)
    assert (await adapter.authorize(dep, call)).headers["Authorization"] == "Bearer ya29.fake-2"


async def test_a_fixed_access_token_is_used_as_is() -> None:
    adapter = VertexAnthropicAdapter()
    dep = claude_dep(access_token="ya29.minted-elsewhere")
    signed = await adapter.authorize(dep, HttpCall("POST", "https://x", {}, b""))
    assert signed.headers["Authorization"] == "Bearer ya29.minted-elsewhere"
    adapter.credentials_rejected(dep)  # nothing to refresh: no source is made
    assert adapter._sources == {}


def test_one_token_source_per_credentials_source() -> None:
    adapter = VertexGeminiAdapter()
    a = adapter.token_source(gemini_dep(credentials_file="/k/a.json").options)
    assert adapter.token_source(gemini_dep(credentials_file="/k/a.json", location="global").options) is a
    assert adapter.token_source(gemini_dep(credentials_file="/k/b.json").options) is not a
    adc = adapter.token_source(gemini_dep().options)
    assert adc is not a and adapter.token_source(gemini_dep(location="eu").options) is adc


# ----------------------------------------------------------------------------- google-auth's own flow


class _Response:
    def __init__(self, status: int, data: bytes) -> None:
        self.status = status
        self.headers = {"content-type": "application/json"}
        self.data = data


class FakeTransport:
    """google.auth.transport.Request: records the token request and answers like Google's endpoint."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None, **_: Any) -> _Response:
        self.calls.append({"url": url, "method": method, "body": body, "headers": headers})
        answer = {"access_token": f"ya29.real-flow-{len(self.calls)}", "expires_in": 3600, "token_type": "Bearer"}
        return _Response(200, json.dumps(answer).encode())


def _key_file(tmp_path: Path) -> tuple[Path, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": pem.decode(),
        "client_email": "gw@p.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return path, key.public_key()


async def test_service_account_file_through_google_auth(tmp_path: Path) -> None:
    from google.auth import jwt

    path, _public = _key_file(tmp_path)
    transport = FakeTransport()
    tokens = TokenSource(lambda: load_service_account(str(path)), request_factory=lambda: transport)
    started = time.time()
    assert await tokens.token() == "ya29.real-flow-1"
    assert await tokens.token() == "ya29.real-flow-1"  # cached: one request to the token endpoint
    (call,) = transport.calls
    assert call["url"] == "http://127.0.0.1:9/token" and call["method"] == "POST"
    form = parse_qs(call["body"].decode())
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    claims = jwt.decode(form["assertion"][0], verify=False)
    assert claims["iss"] == "gw@p.iam.gserviceaccount.com" and claims["scope"] == CLOUD_PLATFORM_SCOPE
    assert claims["exp"] - claims["iat"] == 3600 and abs(claims["iat"] - started) < 60
    # google-auth's expiry (naive UTC) became a refresh time 5 minutes before it.
    refresh_at = tokens._refresh_at
    assert refresh_at is not None
    assert refresh_at == pytest.approx(started + 3600 - REFRESH_MARGIN_S, abs=30)
    assert datetime.fromtimestamp(refresh_at, UTC) < datetime.now(UTC) + timedelta(hours=1)
