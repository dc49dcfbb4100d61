"""Bedrock credentials and SigV4: signatures botocore verifies, the credential chain resolved once per
deployment on a worker thread, refreshed when botocore says so, dropped when refused.

No test here reaches AWS: the chain's files point at tmp files, instance metadata is disabled, and a
loopback guard asserts no socket left the machine.
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from modelyard.config.model import Deployment
from modelyard.providers import bedrock
from modelyard.providers.base import HttpCall, discover
from modelyard.providers.bedrock import BedrockAdapter, resolve_credentials, sign
from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.sim.cloud_bedrock import ACCESS_KEY, SECRET_KEY, verify
from modelyard.testing.loopback import LoopbackGuard

URL = "http://127.0.0.1:8123/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS environment, config files in tmp, instance metadata off."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    return tmp_path


def dep(name: str = "b", api_key: str | None = None, **options: Any) -> Deployment:
    return Deployment(
        name=name, provider="bedrock", model="m", api_key=api_key, options={"region": "us-east-1", **options}
    )


def call(body: bytes = b'{"messages":[]}', headers: dict[str, str] | None = None) -> HttpCall:
    return HttpCall("POST", URL, {"Content-Type": "application/json", **(headers or {})}, body)


def as_scope(signed: HttpCall) -> tuple[dict[str, Any], dict[str, str]]:
    """The ASGI view the simulator gets of a signed call (host as the transport sends it)."""
    path = URL.split("8123", 1)[1]
    headers = {k.lower(): v for k, v in signed.headers.items()} | {"host": "127.0.0.1:8123"}
    scope = {"method": "POST", "path": path.replace("%3A", ":"), "raw_path": path.encode(), "query_string": b""}
    return scope, headers


def test_the_adapter_has_the_capabilities() -> None:
    caps = discover(BedrockAdapter())
    assert caps.credentials is not None and caps.framing is not None
    assert caps.native is None


def test_signature_is_one_botocore_verifies() -> None:
    signed = sign(call(), Credentials(ACCESS_KEY, SECRET_KEY).get_frozen_credentials(), "us-east-1")
    auth = signed.headers["Authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "/us-east-1/bedrock/aws4_request" in auth
    assert "SignedHeaders=content-type;host;x-amz-date" in auth
    assert SECRET_KEY not in auth
    scope, headers = as_scope(signed)
    assert verify(scope, headers, signed.body) is None


@pytest.mark.parametrize(
    ("tamper", "refusal"),
    [
        (lambda s, h, b: (s, h, b + b" "), "InvalidSignatureException"),  # the body changed after signing
        (lambda s, h, b: ({**s, "raw_path": s["raw_path"].replace(b"%3A", b":")}, h, b), "InvalidSignatureException"),
        (lambda s, h, b: (s, {**h, "content-type": "text/plain"}, b), "InvalidSignatureException"),
        (lambda s, h, b: (s, {**h, "x-amz-date": "20200101T000000Z"}, b), "InvalidSignatureException"),
        (lambda s, h, b: (s, {k: v for k, v in h.items() if k != "authorization"}, b), "MissingAuthentication"),
    ],
)
def test_a_tampered_request_is_refused(tamper: Any, refusal: str) -> None:
    signed = sign(call(), Credentials(ACCESS_KEY, SECRET_KEY).get_frozen_credentials(), "us-east-1")
    scope, headers, body = tamper(*as_scope(signed), signed.body)
    result = verify(scope, headers, body)
    assert result is not None and result[0].startswith(refusal)


def test_a_wrong_secret_or_key_is_refused() -> None:
    wrong = sign(call(), Credentials(ACCESS_KEY, "not-the-secret").get_frozen_credentials(), "us-east-1")
    result = verify(*as_scope(wrong), wrong.body)
    assert result is not None and result[0] == "InvalidSignatureException"
    assert "does not match" in result[1]
    unknown = sign(call(), Credentials("AKIDOTHER", SECRET_KEY).get_frozen_credentials(), "us-east-1")
    result = verify(*as_scope(unknown), unknown.body)
    assert result is not None and result[0] == "UnrecognizedClientException"


def test_session_token_is_sent_and_signed() -> None:
    signed = sign(call(), Credentials(ACCESS_KEY, SECRET_KEY, "session-token-1").get_frozen_credentials(), "eu-west-1")
    assert signed.headers["X-Amz-Security-Token"] == "session-token-1"
    assert "x-amz-security-token" in signed.headers["Authorization"]
    assert verify(*as_scope(signed), signed.body) is None


async def test_api_key_is_a_bearer_token_and_nothing_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bedrock, "resolve_credentials", lambda opts: pytest.fail("no chain for an API key"))
    signed = await BedrockAdapter().authorize(dep(api_key="bedrock-api-key-1"), call())
    assert signed.headers["Authorization"] == "Bearer bedrock-api-key-1"
    assert "X-Amz-Date" not in signed.headers


async def test_credentials_resolved_once_per_deployment_on_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []

    def resolve(opts: Any) -> Credentials:
        threads.append(threading.current_thread().name)
        return Credentials(ACCESS_KEY, SECRET_KEY)

    monkeypatch.setattr(bedrock, "resolve_credentials", resolve)
    adapter = BedrockAdapter()
    first, second = dep("one"), dep("two")
    for _ in range(3):
        signed = await adapter.authorize(first, call())
        assert verify(*as_scope(signed), signed.body) is None
    await adapter.authorize(second, call())
    assert len(threads) == 2  # one per deployment
    assert threading.main_thread().name not in threads
    adapter.credentials_rejected(first)
    await adapter.authorize(first, call())
    assert len(threads) == 3  # refused: resolved again


async def test_refreshable_credentials_refresh_on_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    refreshed: list[str] = []
    now = datetime.datetime.now(datetime.UTC)

    def refresh() -> dict[str, str]:
        refreshed.append(threading.current_thread().name)
        expiry = now + datetime.timedelta(hours=1)
        return {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "token": "fresh", "expiry_time": expiry.isoformat()}

    expiring = RefreshableCredentials(
        ACCESS_KEY, SECRET_KEY, "stale", now + datetime.timedelta(seconds=30), refresh, "test"
    )
    monkeypatch.setattr(bedrock, "resolve_credentials", lambda opts: expiring)
    signed = await BedrockAdapter().authorize(dep(), call())
    assert refreshed and refreshed[0] != threading.main_thread().name
    assert signed.headers["X-Amz-Security-Token"] == "fresh"


def test_explicit_keys_win() -> None:
    options = bedrock.BedrockOptions(
        region="us-east-1", aws_access_key_id="AK", aws_secret_access_key="SK", aws_session_token="T"
    )
    creds = resolve_credentials(options).get_frozen_credentials()
    assert (creds.access_key, creds.secret_key, creds.token) == ("AK", "SK", "T")


def test_default_chain_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    with LoopbackGuard() as guard:
        creds = resolve_credentials(bedrock.BedrockOptions(region="us-east-1")).get_frozen_credentials()
    assert (creds.access_key, creds.secret_key) == ("AKIDENV", "env-secret")
    assert guard.outside() == []


def test_a_profile_reads_the_shared_credentials_file(no_ambient_aws: Path) -> None:
    (no_ambient_aws / "credentials").write_text(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n"
        "[team]\naws_access_key_id = AKIDTEAM\naws_secret_access_key = team-secret\n"
    )
    with LoopbackGuard() as guard:
        team = resolve_credentials(bedrock.BedrockOptions(region="us-east-1", profile="team")).get_frozen_credentials()
        default = resolve_credentials(bedrock.BedrockOptions(region="us-east-1")).get_frozen_credentials()
    assert (team.access_key, team.secret_key) == ("AKIDTEAM", "team-secret")
    assert default.access_key == "AKIDDEFAULT"
    assert guard.outside() == []


async def test_no_credentials_anywhere_is_an_auth_error() -> None:
    with LoopbackGuard() as guard, pytest.raises(ProviderError) as info:
        await BedrockAdapter().authorize(dep(), call())
    assert info.value.kind is ErrorKind.AUTH
    assert guard.outside() == []
