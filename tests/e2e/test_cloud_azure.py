"""Azure OpenAI through the real gateway to the simulator's Azure routes, with the official openai SDK.

Content-filter refusals (prompt and answer, plain and streamed) fail over only where the model allows it;
Entra ID tokens come from real azure-identity (ClientSecretCredential) talking to the simulator's token
endpoint over loopback TLS (azure-identity refuses an http authority), requested once, reused, refreshed as
they expire; a 429's `x-ratelimit-reset-tokens` is waited for; cost is priced; `modelyard serve` runs it.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import openai
import pytest
import uvicorn

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim import SimServer
from modelyard.sim.fleet import default_fleet
from modelyard.testing.loopback import LoopbackGuard
from modelyard.testing.process import GatewayProcess

KEY = "sk-test-azure-secret"
TIMEOUTS = "timeouts: {connect: 2, first_token: 5, total: 10}"
PRICE = "price: {input: 0.1, output: 0.4}"


# ----------------------------------------------------------------------------- a loopback TLS authority


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the CA bundle azure-identity's requests session trusts)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "authority.pem", folder / "authority.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class TLSAuthority:
    """The simulator's app (its Entra token endpoint) served over TLS on loopback, in a thread."""

    def __init__(self, app: object, cert: Path, key: Path) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_level="warning",
            access_log=False,
            lifespan="off",
            log_config=None,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> TLSAuthority:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the TLS authority did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    fleet = msgspec.structs.replace(default_fleet(), api_key=KEY)
    with SimServer(fleet, seed=5, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def authority(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TLSAuthority, Path]]:
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    with TLSAuthority(sim.app, cert, key) as server:
        yield server, cert


def config_yaml(sim_url: str, authority_url: str) -> str:
    azure = f'provider: azure, api_base: "{sim_url}", {PRICE}, {TIMEOUTS}'
    entra = (
        f'tenant_id: tenant-1, client_secret: {KEY}, authority_host: "{authority_url}", '
        "disable_instance_discovery: true"
    )
    limited = "headers: {x-sim-fault: rate_limit, x-sim-azure-retry: reset-only}"
    openai_base = f'api_base: "{sim_url}/v1"'
    return f"""
deployments:
  - {{name: az, model: sim-small, api_key: {KEY}, {azure}}}
  - {{name: az-v1, model: sim-small, api_key: {KEY}, options: {{api_version: v1}}, {azure}}}
  - {{name: az-resp, model: sim-small, api_key: {KEY}, options: {{api_version: v1, responses_api: true}}, {azure}}}
  - {{name: az-limited, model: sim-small, api_key: {KEY}, {limited}, {azure}}}
  - {{name: az-entra, model: sim-small, options: {{client_id: app-1, {entra}}}, {azure}}}
  - {{name: az-entra-short, model: sim-small, options: {{client_id: app-ttl-3, {entra}}}, {azure}}}
  - {{name: oa, provider: openai, model: sim-medium, {openai_base}, api_key: {KEY}, tier: 1, {PRICE}, {TIMEOUTS}}}
models:
  azure: {{candidates: [az]}}
  azure-v1: {{candidates: [az-v1]}}
  azure-responses: {{candidates: [az-resp]}}
  guarded: {{candidates: [az, oa], options: {{failover_on_content_filter: true}}}}
  strict: {{candidates: [az, oa]}}
  limited: {{candidates: [az-limited, oa]}}
  entra: {{candidates: [az-entra]}}
  entra-short: {{candidates: [az-entra-short]}}
"""


@pytest.fixture(scope="module")
def gateway(
    sim: SimServer, authority: tuple[TLSAuthority, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundServer]:
    server, cert = authority
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # azure-identity's requests session trusts the loopback CA
        for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST"):
            patch.delenv(name, raising=False)
        config = parse_config(config_yaml(sim.url, f"https://127.0.0.1:{server.port}"), source="azure.yaml")
        with BackgroundServer(create_app(config)) as gw:
            yield gw


@pytest.fixture(scope="module")
def client(gateway: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0)


def ask(text: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def upstream_paths(sim: SimServer, model: str = "sim-small") -> list[str]:
    return [entry["path"] for entry in sim.app.received.snapshot(model)]


# ----------------------------------------------------------------------------- plain traffic


def test_chat_reaches_the_deployment_url_and_is_priced(client: openai.OpenAI, sim: SimServer) -> None:
    raw = client.chat.completions.with_raw_response.create(model="azure", messages=ask())
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert answer.usage is not None
    usage = answer.usage
    assert upstream_paths(sim)[-1] == "/openai/deployments/sim-small/chat/completions"
    expected = (usage.prompt_tokens * 0.1 + usage.completion_tokens * 0.4) / 1_000_000
    assert float(raw.headers["x-modelyard-cost-usd"]) == pytest.approx(expected, abs=1e-8)
    assert raw.headers["x-modelyard-attempts"].startswith("1; az ok")


def test_v1_api_stream(client: openai.OpenAI, sim: SimServer) -> None:
    chunks = list(client.chat.completions.create(model="azure-v1", messages=ask(), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert upstream_paths(sim)[-1] == "/openai/v1/chat/completions"


def test_responses_api_on_v1(client: openai.OpenAI, sim: SimServer) -> None:
    response = client.responses.create(model="azure-responses", input="hello")
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0
    # The Responses codec asks the adapter whether it speaks the Responses wire: Azure's inherits OpenAI's, so
    # the client's body passes through to Azure's v1 Responses route.
    assert upstream_paths(sim)[-1] == "/openai/v1/responses"


# ----------------------------------------------------------------------------- content filter


@pytest.mark.parametrize("marker", ["AZURE-FILTER-PROMPT", "AZURE-FILTER-ANSWER"])
@pytest.mark.parametrize("stream", [False, True])
def test_content_filter_fails_over_when_allowed(client: openai.OpenAI, marker: str, stream: bool) -> None:
    raw = client.chat.completions.with_raw_response.create(model="guarded", messages=ask(marker), stream=stream)
    attempts = raw.headers["x-modelyard-attempts"]
    assert attempts.startswith("2; az content_filter") and "oa ok" in attempts
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    assert text


@pytest.mark.parametrize("marker", ["AZURE-FILTER-PROMPT", "AZURE-FILTER-ANSWER"])
@pytest.mark.parametrize("stream", [False, True])
def test_content_filter_is_a_400_when_not_allowed(client: openai.OpenAI, marker: str, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="strict", messages=ask(marker), stream=stream)
    assert caught.value.status_code == 400
    assert caught.value.code == "content_filter"
    assert caught.value.response.headers["x-modelyard-attempts"].startswith("1; az content_filter")


# ----------------------------------------------------------------------------- rate limits


def test_rate_limit_reset_header_is_waited_for_then_fails_over(client: openai.OpenAI) -> None:
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="limited", messages=ask())
    elapsed = time.monotonic() - started
    attempts = raw.headers["x-modelyard-attempts"]
    assert attempts.startswith("3; az-limited rate_limited") and attempts.count("az-limited rate_limited") == 2
    assert "oa ok" in attempts
    assert elapsed >= 1.0  # the simulator's x-ratelimit-reset-tokens: 1 (no retry-after headers)
    assert raw.parse().choices[0].message.content


# ----------------------------------------------------------------------------- Entra ID


def token_requests(sim: SimServer, client_id: str) -> int:
    return sum(1 for e in sim.app.received.snapshot("entra-token") if f'"client_id":"{client_id}"' in e["body"])


def test_entra_token_requested_once_and_reused(client: openai.OpenAI, sim: SimServer) -> None:
    with LoopbackGuard() as guard:
        for _ in range(3):
            answer = client.chat.completions.create(model="entra", messages=ask())
            assert answer.choices[0].message.content
    assert token_requests(sim, "app-1") == 1
    assert not guard.outside()
    headers = sim.app.received.snapshot("sim-small")[-1]["headers"]
    assert "api-key" not in headers and "authorization" not in headers  # recorded without credentials


def test_entra_token_refreshed_after_expiry(client: openai.OpenAI, sim: SimServer) -> None:
    with LoopbackGuard() as guard:
        client.chat.completions.create(model="entra-short", messages=ask())
        client.chat.completions.create(model="entra-short", messages=ask())
        assert token_requests(sim, "app-ttl-3") == 1  # a 3 s token is reused for its first 1.5 s
        time.sleep(3.1)  # expired: the simulator would refuse it now
        answer = client.chat.completions.create(model="entra-short", messages=ask())
    assert answer.choices[0].message.content
    assert token_requests(sim, "app-ttl-3") == 2
    assert not guard.outside()


# ----------------------------------------------------------------------------- `modelyard serve`


def test_served_process(sim: SimServer, tmp_path: Path) -> None:
    config = tmp_path / "azure.yaml"
    config.write_text(
        f"""
deployments:
  - {{name: az, provider: azure, model: sim-small, api_base: "{sim.url}", api_key: {KEY}, {PRICE}, {TIMEOUTS}}}
models:
  azure: {{candidates: [az]}}
"""
    )
    with GatewayProcess(config) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)
        answer = client.chat.completions.create(model="azure", messages=ask("from the process"))
        chunks = list(client.chat.completions.create(model="azure", messages=ask(), stream=True))
        log = gw.log_text()
    assert answer.choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert upstream_paths(sim)[-1] == "/openai/deployments/sim-small/chat/completions"
    assert KEY not in log
