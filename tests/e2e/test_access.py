"""Money and access end to end: the real gateway (uvicorn on loopback) over the simulator, driven by the
official openai and anthropic SDKs. Keys, model permissions, RPM limits, exact budgets under 100
concurrent requests, revocation, spend reports, /metrics, and a clean shutdown that loses no spend record.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.accounting.budgets import NANO
from modelyard.config.loader import parse_config
from modelyard.config.model import Config
from modelyard.routing.features import chat_features
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.server.validation import validate_chat
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer

MASTER = "sk-master-test-0123456789"
PRICE_IN, PRICE_OUT = 3.0, 15.0  # USD per 1M tokens
PROMPT: Any = [{"role": "user", "content": "Say something short about budgets."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    fleet = Fleet(
        models=[
            SimModel(name="sim-fast", output_tokens=12),
            SimModel(name="sim-slow", ttft_ms=2500.0, output_tokens=12),
        ]
    )
    with SimServer(fleet) as server:
        yield server


def make_config(sim: SimServer, tmp_path: Path, **extra: str) -> Config:
    text = f"""
deployments:
  - name: fast@openai
    provider: openai
    model: sim-fast
    api_base: {sim.openai_base}
    api_key: sim
    price: {{input: {PRICE_IN}, output: {PRICE_OUT}}}
  - name: slow@openai
    provider: openai
    model: sim-slow
    api_base: {sim.openai_base}
    api_key: sim
    price: {{input: {PRICE_IN}, output: {PRICE_OUT}}}
    timeouts: {{first_token: 30, total: 60}}
models:
  smart: {{candidates: [fast@openai]}}
  fast: {{candidates: [fast@openai]}}
  slow: {{candidates: [slow@openai]}}
access:
  master_key: {extra.get("master", MASTER)}
  {extra.get("access", "")}
spend:
  store: {tmp_path / "modelyard.db"}
  flush_interval_s: 0.05
"""
    return parse_config(text, env={})


@contextmanager
def gateway(config: Config) -> Iterator[str]:
    with BackgroundServer(create_app(config)) as server:
        yield server.url


def admin(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30, **kwargs)


def create_key(url: str, **body: Any) -> dict[str, Any]:
    response = admin(url, "POST", "/admin/keys", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def url(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway(make_config(sim, tmp_path_factory.mktemp("gw"))) as address:
        yield address


# --------------------------------------------------------------------------- authentication


def test_request_with_a_virtual_key_is_priced(url: str) -> None:
    made = create_key(url, name="team-a", models=["smart", "fast"])
    assert made["key"].startswith("sk-my-") and "key_hash" not in made
    raw = client(url, made["key"]).chat.completions.with_raw_response.create(
        model="smart", messages=PROMPT, max_tokens=20
    )
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None
    expected = (usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT) / 1e6
    assert float(raw.headers["x-modelyard-cost-usd"]) == pytest.approx(expected, abs=1e-8)
    assert usage.model_extra is not None and usage.model_extra["cost"] == pytest.approx(expected)


def test_unknown_and_missing_keys_are_401(url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as unknown:
        client(url, "sk-my-not-a-real-key-at-all").chat.completions.create(model="smart", messages=PROMPT)
    assert unknown.value.code == "invalid_api_key"
    assert "sk-my-not-a-real" not in str(unknown.value.body)  # never echo a whole key
    response = httpx.post(url + "/v1/chat/completions", json={"model": "smart", "messages": PROMPT})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_models_list_needs_a_key_when_keys_are_on(url: str) -> None:
    assert httpx.get(url + "/v1/models").status_code == 401
    made = create_key(url, name="lister")
    assert {"smart", "fast"} <= {m.id for m in client(url, made["key"]).models.list()}


def test_model_outside_the_key_is_403(url: str) -> None:
    made = create_key(url, name="only-fast", models="fast")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(url, made["key"]).chat.completions.create(model="smart", messages=PROMPT)
    assert denied.value.code == "model_not_allowed"
    assert client(url, made["key"]).chat.completions.create(model="fast", messages=PROMPT)


def test_revoked_key_is_refused_at_once(url: str) -> None:
    made = create_key(url, name="short-lived")
    sdk = client(url, made["key"])
    sdk.chat.completions.create(model="fast", messages=PROMPT)
    response = admin(url, "DELETE", f"/admin/keys/{made['id']}")
    assert response.status_code == 200 and response.json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="fast", messages=PROMPT)
    listed = admin(url, "GET", "/admin/keys", params={"all": "true"}).json()["data"]
    assert next(k for k in listed if k["id"] == made["id"])["status"] == "revoked"
    assert made["id"] not in {k["id"] for k in admin(url, "GET", "/admin/keys").json()["data"]}
    assert admin(url, "DELETE", "/admin/keys/key_nope").status_code == 404


def test_expired_key_is_401(url: str) -> None:
    made = create_key(url, name="expiring", expires_in="1s")
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError) as expired:
        client(url, made["key"]).chat.completions.create(model="fast", messages=PROMPT)
    assert "expired" in str(expired.value)


def test_admin_api_needs_the_master_key(url: str) -> None:
    assert httpx.get(url + "/admin/keys").status_code == 401
    made = create_key(url, name="not-admin")
    denied = httpx.get(url + "/admin/keys", headers={"Authorization": f"Bearer {made['key']}"})
    assert denied.status_code == 401
    bad = admin(url, "POST", "/admin/keys", json={"name": "x", "rpm": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"


def test_anthropic_sdk_with_x_api_key_and_bearer(url: str) -> None:
    made = create_key(url, name="claude-users")
    for sdk in (
        anthropic.Anthropic(base_url=url, api_key=made["key"], max_retries=0),
        anthropic.Anthropic(base_url=url, auth_token=made["key"], max_retries=0),
    ):
        message = sdk.messages.create(model="fast", max_tokens=30, messages=PROMPT)
        assert message.usage.output_tokens > 0
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=url, api_key="sk-my-wrong", max_retries=0).messages.create(
            model="fast", max_tokens=30, messages=PROMPT
        )


# --------------------------------------------------------------------------- limits and budgets


def test_rpm_limit_is_429_with_retry_after(url: str) -> None:
    made = create_key(url, name="slowpoke", rpm=2)
    sdk = client(url, made["key"])
    for _ in range(2):
        sdk.chat.completions.create(model="fast", messages=PROMPT)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="fast", messages=PROMPT)
    assert limited.value.code == "rate_limit_exceeded"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60


def estimate_nano(max_tokens: int) -> int:
    features = chat_features(validate_chat({"model": "slow", "messages": PROMPT, "max_tokens": max_tokens}))
    return round((features.prompt_tokens * PRICE_IN + max_tokens * PRICE_OUT) * 1000)


def test_budget_lets_exactly_what_it_can_pay_for_through_100_concurrent_requests(url: str) -> None:
    max_tokens = 200
    estimate = estimate_nano(max_tokens)
    budget_usd = (10 * estimate + estimate // 2) / NANO  # pays for 10.5 estimates: exactly 10 may start
    made = create_key(url, name="budgeted", budget_usd=budget_usd, period="30d")

    async def run() -> list[Any]:
        sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=made["key"], max_retries=0, timeout=60)
        calls = [
            sdk.chat.completions.with_raw_response.create(model="slow", messages=PROMPT, max_tokens=max_tokens)
            for _ in range(100)
        ]
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await sdk.close()

    results = asyncio.run(run())
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(answered) == 10  # the sim holds each answer 2.5 s: all 100 were decided before any settled
    assert len(refused) == 90
    assert all(r.code == "insufficient_quota" and r.type == "insufficient_quota" for r in refused)
    charged = sum(float(r.headers["x-modelyard-cost-usd"]) for r in answered)
    key = next(k for k in admin(url, "GET", "/admin/keys").json()["data"] if k["id"] == made["id"])
    assert key["spend"]["reserved_usd"] == 0
    assert key["spend"]["spent_usd"] == pytest.approx(charged, abs=1e-8)
    assert key["spend"]["spent_usd"] <= budget_usd


def test_streaming_is_settled_and_priced_in_the_final_chunk(url: str) -> None:
    made = create_key(url, name="streamer", budget_usd=1.0)
    stream = client(url, made["key"]).chat.completions.create(
        model="fast", messages=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.model_extra is not None
    expected = (usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT) / 1e6
    assert usage.model_extra["cost"] == pytest.approx(expected)
    key = next(k for k in admin(url, "GET", "/admin/keys").json()["data"] if k["id"] == made["id"])
    assert key["spend"] == {**key["spend"], "spent_usd": pytest.approx(expected, abs=1e-8), "reserved_usd": 0}


# --------------------------------------------------------------------------- reports and metrics


def test_spend_report_by_model_key_and_day(url: str) -> None:
    made = create_key(url, name="reporter")
    sdk = client(url, made["key"])
    costs = []
    for model in ("fast", "fast", "smart"):
        raw = sdk.chat.completions.with_raw_response.create(model=model, messages=PROMPT)
        costs.append(float(raw.headers["x-modelyard-cost-usd"]))
    by_key = admin(url, "GET", "/admin/spend", params={"by": "key", "since": "1d"}).json()
    mine = next(row for row in by_key["data"] if row["group"] == made["id"])
    assert mine["name"] == "reporter" and mine["requests"] == 3
    assert mine["cost_usd"] == pytest.approx(sum(costs), abs=1e-8)
    by_model = admin(url, "GET", "/admin/spend", params={"by": "model", "since": "7d"}).json()
    assert {"fast", "smart"} <= {row["group"] for row in by_model["data"]}
    assert by_model["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in by_model["data"]))
    by_day = admin(url, "GET", "/admin/spend", params={"by": "day"}).json()
    assert by_day["data"][-1]["group"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert admin(url, "GET", "/admin/spend", params={"by": "colour"}).status_code == 400


def test_metrics_are_scraped_and_parsed(url: str) -> None:
    made = create_key(url, name="metered")
    sdk = client(url, made["key"])
    for _ in range(3):
        sdk.chat.completions.create(model="fast", messages=PROMPT)
    with pytest.raises(openai.AuthenticationError):
        client(url, "sk-my-wrong").chat.completions.create(model="fast", messages=PROMPT)
    text = httpx.get(url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ok = [
        s
        for s in families["modelyard_requests"].samples
        if s.name == "modelyard_requests_total"
        and s.labels == {"model": "fast", "deployment": "fast@openai", "status": "ok"}
    ]
    assert ok and ok[0].value >= 3
    errors = families["modelyard_errors"].samples
    assert any(s.labels.get("kind") == "http_401" and s.value >= 1 for s in errors)
    counts = [
        s
        for s in families["modelyard_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels.get("model") == "fast"
    ]
    assert counts and counts[0].value >= 3
    cost = [s for s in families["modelyard_cost_usd"].samples if s.labels.get("deployment") == "fast@openai"]
    assert cost and cost[0].value > 0
    assert {s.labels["deployment"] for s in families["modelyard_breaker_state"].samples} == {
        "fast@openai",
        "slow@openai",
    }
    assert "modelyard_in_flight" in families and "modelyard_tokens" in families


# --------------------------------------------------------------------------- modes and shutdown


def test_master_key_is_limited_unless_exempt(sim: SimServer, tmp_path: Path) -> None:
    limited = make_config(sim, tmp_path, access="master_limits: {rpm: 1}")
    with gateway(limited) as address:
        sdk = client(address, MASTER)
        sdk.chat.completions.create(model="fast", messages=PROMPT)
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="fast", messages=PROMPT)
    exempt = make_config(sim, tmp_path, access="master_limits: {rpm: 1}\n  master_unlimited: true")
    with gateway(exempt) as address:
        sdk = client(address, MASTER)
        for _ in range(3):
            sdk.chat.completions.create(model="fast", messages=PROMPT)


def test_open_mode_without_keys(sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(sim, tmp_path, master="null")
    with caplog.at_level("WARNING", logger="modelyard.access"), gateway(config) as address:
        answer = client(address, "anything").chat.completions.create(model="fast", messages=PROMPT)
        assert answer.choices[0].message.content
        assert httpx.get(address + "/admin/keys").status_code == 403  # no master key: no admin API
    assert any("OPEN MODE" in record.getMessage() for record in caplog.records)


def test_clean_shutdown_writes_every_spend_record(sim: SimServer, tmp_path: Path) -> None:
    config = make_config(sim, tmp_path)
    with gateway(config) as address:
        made = create_key(address, name="flushed")
        sdk = client(address, made["key"])
        for _ in range(25):
            sdk.chat.completions.create(model="fast", messages=PROMPT)
    db = sqlite3.connect(tmp_path / "modelyard.db")
    try:
        sql = "SELECT COUNT(*) FROM modelyard_spend WHERE key_id = ?"
        count = db.execute(sql, (made["id"],)).fetchone()[0]
        hashes = db.execute("SELECT key_hash FROM modelyard_keys").fetchall()
    finally:
        db.close()
    assert count == 25
    assert made["key"] not in {h[0] for h in hashes}
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("modelyard.db*") if p.is_file())  # the spool too
    assert made["key"].encode() not in blob


# --------------------------------------------------------------------------- the command line


def test_cli_through_the_admin_api(url: str) -> None:
    from typer.testing import CliRunner

    from modelyard.cli.admin import app

    runner = CliRunner(env={"COLUMNS": "250"})
    made = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--name",
            "cli-team",
            "--budget-usd",
            "50",
            "--period",
            "30d",
            "--models",
            "smart,fast",
            "--rpm",
            "600",
            "--tpm",
            "200000",
            "--url",
            url,
            "--master-key",
            MASTER,
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    key = __import__("json").loads(made.stdout)
    assert key["models"] == ["fast", "smart"] and key["rpm"] == 600 and key["budget_usd"] == 50.0
    assert key["period_s"] == 30 * 86400.0
    client(url, key["key"]).chat.completions.create(model="fast", messages=PROMPT)
    listed = runner.invoke(app, ["keys", "list", "--url", url, "--master-key", MASTER])
    assert listed.exit_code == 0 and key["id"] in listed.stdout and key["key"] not in listed.stdout
    report = runner.invoke(app, ["spend", "--by", "key", "--since", "1d", "--url", url, "--master-key", MASTER])
    assert report.exit_code == 0 and key["id"] in report.stdout
    revoked = runner.invoke(app, ["keys", "revoke", key["id"], "--url", url, "--master-key", MASTER])
    assert revoked.exit_code == 0
    with pytest.raises(openai.AuthenticationError):
        client(url, key["key"]).chat.completions.create(model="fast", messages=PROMPT)
    wrong = runner.invoke(app, ["keys", "list", "--url", url, "--master-key", "nope"])
    assert wrong.exit_code == 2 and "401" in wrong.output


def test_cli_straight_to_the_store(sim: SimServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modelyard.cli.admin import app

    config_file = tmp_path / "modelyard.yaml"
    config_file.write_text(f"deployments: []\nspend: {{store: {tmp_path / 'cli.db'}}}\n")
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--name", "offline", "--config", str(config_file), "--json"])
    assert made.exit_code == 0, made.output
    key = __import__("json").loads(made.stdout)
    config = make_config(sim, tmp_path)
    config.spend.store = str(tmp_path / "cli.db")
    with gateway(config) as address:  # a gateway on the same store accepts the key made offline
        assert client(address, key["key"]).chat.completions.create(model="fast", messages=PROMPT)
    report = runner.invoke(app, ["spend", "--by", "model", "--config", str(config_file), "--json"])
    assert report.exit_code == 0
    assert __import__("json").loads(report.stdout)["total_requests"] == 1
    both = runner.invoke(app, ["keys", "list", "--config", str(config_file), "--url", "http://x"])
    assert both.exit_code == 2
    memory = tmp_path / "memory.yaml"
    memory.write_text("deployments: []\n")
    assert runner.invoke(app, ["keys", "list", "--config", str(memory)]).exit_code == 2


# --------------------------------------------------------------------------- two replicas, one budget


def _reachable(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.redis
@pytest.mark.postgres
def test_two_replicas_share_keys_limits_and_budgets(sim: SimServer, tmp_path: Path) -> None:
    if not _reachable(6379) or not _reachable(5432):
        pytest.skip("needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432")
    import uuid

    tag = uuid.uuid4().hex[:10]
    dsn = f"postgresql://postgres@127.0.0.1:5432/test?schema=e2e_{tag}"
    config = make_config(sim, tmp_path)
    config.spend.store = dsn
    config.state.redis_url = "redis://127.0.0.1:6379/0"
    config.state.prefix = f"modelyard_e2e_{tag}"
    max_tokens = 200
    estimate = estimate_nano(max_tokens)
    budget_usd = (10 * estimate + estimate // 2) / NANO
    try:
        with gateway(config) as first, gateway(config) as second:
            made = create_key(first, name="shared", budget_usd=budget_usd, rpm=1000)

            async def run() -> list[Any]:
                clients = [
                    openai.AsyncOpenAI(base_url=u + "/v1", api_key=made["key"], max_retries=0, timeout=60)
                    for u in (first, second)
                ]
                calls = [
                    clients[i % 2].chat.completions.with_raw_response.create(
                        model="slow", messages=PROMPT, max_tokens=max_tokens
                    )
                    for i in range(100)
                ]
                try:
                    return await asyncio.gather(*calls, return_exceptions=True)
                finally:
                    for c in clients:
                        await c.close()

            results = asyncio.run(run())
            answered = [r for r in results if not isinstance(r, BaseException)]
            assert len(answered) == 10  # one budget across both replicas, not 10 each
            assert all(
                isinstance(r, openai.RateLimitError) and r.code == "insufficient_quota"
                for r in results
                if isinstance(r, BaseException)
            )
            spent = [k for k in admin(second, "GET", "/admin/keys").json()["data"] if k["id"] == made["id"]]
            assert spent[0]["spend"]["spent_usd"] <= budget_usd  # both replicas read the same Redis ledger
            assert spent[0]["spend"]["reserved_usd"] == 0
    finally:
        import asyncpg
        import redis

        async def drop() -> None:
            conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
            await conn.execute(f'DROP SCHEMA IF EXISTS "e2e_{tag}" CASCADE')
            await conn.close()

        asyncio.run(drop())
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for key in client.scan_iter(match=f"modelyard_e2e_{tag}:*"):
            client.delete(key)
        client.close()


def test_cli_makes_an_admin_key_the_admin_api_accepts(sim: SimServer, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from modelyard.cli.admin import app

    config_file = tmp_path / "modelyard.yaml"
    config_file.write_text(f"deployments: []\nspend: {{store: {tmp_path / 'cli.db'}}}\n")
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--name", "ops", "--admin", "--config", str(config_file), "--json"])
    plain = runner.invoke(app, ["keys", "create", "--name", "app", "--config", str(config_file), "--json"])
    assert made.exit_code == 0 and plain.exit_code == 0, made.output + plain.output
    admin_key, plain_key = json.loads(made.stdout), json.loads(plain.stdout)
    assert admin_key["metadata"] == {"role": "admin"} and plain_key["metadata"] == {}
    config = make_config(sim, tmp_path)
    config.spend.store = str(tmp_path / "cli.db")
    with gateway(config) as address:
        listed = httpx.get(f"{address}/admin/keys", headers={"authorization": f"Bearer {admin_key['key']}"})
        refused = httpx.get(f"{address}/admin/keys", headers={"authorization": f"Bearer {plain_key['key']}"})
    assert listed.status_code == 200 and {k["name"] for k in listed.json()["data"]} == {"ops", "app"}
    assert refused.status_code == 401
