"""Guardrails through the real gateway with the official SDKs (openai chat and Responses, anthropic messages),
streaming and not, against the simulator on loopback.

- a PII answer is redacted, in the stream too, and no unredacted byte ever reaches the client (raw bytes);
- an invalid JSON answer is retried on the next candidate and the client gets the valid one (both paid);
- an input with a card number is blocked before any upstream call (the simulator's counters prove it);
- a `python:` check that raises fails closed: a clear error naming the check, never the answer;
- per-request guardrails can add built-in checks only, and cannot remove configured ones.
"""

from __future__ import annotations

import json
import sqlite3
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
from modelyard.sim.fleet import load_fleet
from modelyard.sim.server import SimServer

EMAIL = "alice.smith@example.com"
PHONE = "+1 415 555 0134"
CARD = "4111 1111 1111 1111"  # a test Visa number (Luhn-valid)
PII_PROMPT = f"Repeat: you can reach alice at {EMAIL} or on {PHONE}, any time this week"
EXTRACT_PROMPT = "Extract the order number from: order 42 shipped"
RAISING = "tests.e2e.test_guardrails:raising_check"

FLEET = """
seed: 5
models:
  - {name: sim-small, price: {input: 0.1, output: 0.4}, quality: 0.0, ttft_ms: 0, tokens_per_second: 4000}
  - {name: sim-large, price: {input: 1.0, output: 2.0}, quality: 1.0, ttft_ms: 0, tokens_per_second: 4000}
"""
SUITE = f"""
schema: modelyard.acceptance/v1
name: guardrail-e2e
tasks:
  extraction:
    cases:
      - id: order
        prompt: "{EXTRACT_PROMPT}"
        reference: '{{"order": 42}}'
        wrong: 'Sure! The order is {{"order": 42'
"""


def raising_check(text: str, context: Any) -> bool:
    """A check with a bug: the gateway must fail closed and name it."""
    raise RuntimeError("the checker's own bug")


def config_yaml(sim_url: str, spend_db: Path) -> str:
    deployments = [
        f'{{name: small@openai, provider: openai, model: sim-small, api_base: "{sim_url}/v1", api_key: sk-x, '
        "price: {input: 0.1, output: 0.4}}",
        f'{{name: large@openai, provider: openai, model: sim-large, api_base: "{sim_url}/v1", api_key: sk-x, '
        "price: {input: 1.0, output: 2.0}}",
        f'{{name: small@anthropic, provider: anthropic, model: sim-small, api_base: "{sim_url}", api_key: sk-x, '
        "price: {input: 0.1, output: 0.4}}",
    ]
    return f"""
spend: {{store: "{spend_db}", flush_interval_s: 0.05}}
deployments:
{"".join(f"  - {d}{chr(10)}" for d in deployments)}
guardrails:
  pii-out: [{{check: pii, action: redact}}]
  cards-in: [{{check: pii, stage: input, action: block, name: cards-in, kinds: [card]}}]
  words: [{{check: keywords, words: [forbidden], name: words}}]
  json-retry: [{{check: json_schema, action: retry}}]
models:
  plain: {{candidates: [small@openai]}}
  redact: {{candidates: [small@openai], guardrails: [pii-out]}}
  redact-anthropic: {{candidates: [small@anthropic], guardrails: [pii-out]}}
  extract: {{strategy: priority, candidates: [small@openai, large@openai], guardrails: [json-retry]}}
  guarded-in: {{candidates: [small@openai], guardrails: [cards-in]}}
  buggy: {{candidates: [small@openai], guardrails: [{{check: python, function: "{RAISING}"}}]}}
  redact-in: {{candidates: [small@anthropic], guardrails: [{{check: pii, stage: input, action: redact}}]}}
  words: {{candidates: [small@openai, small@anthropic], guardrails: [words]}}
  words-anthropic: {{candidates: [small@anthropic], guardrails: [words]}}
  extract-anthropic:
    strategy: priority
    candidates: [small@anthropic, large@openai]
    guardrails: [{{check: json_schema, action: retry, json_schema: {{type: object, required: [order]}}}}]
  warned: {{candidates: [small@openai], guardrails: [{{check: pii, action: warn, name: pii-warn}}]}}
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[SimServer]:
    root = tmp_path_factory.mktemp("guard-sim")
    (root / "fleet.yaml").write_text(FLEET)
    (root / "suite.yaml").write_text(SUITE)
    with SimServer(load_fleet(root / "fleet.yaml")) as server:
        server.add_answer_keys(root / "suite.yaml")
        yield server


@pytest.fixture(scope="module")
def spend_db(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guard-spend") / "spend.db"


@pytest.fixture(scope="module")
def gateway(sim: SimServer, spend_db: Path) -> Iterator[BackgroundServer]:
    config = parse_config(config_yaml(sim.url, spend_db), source="guardrails-e2e.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server


@pytest.fixture(scope="module")
def oai(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0)


@pytest.fixture(scope="module")
def claude(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="sk-client", max_retries=0)


def leaks(data: str | bytes, secret: str = EMAIL, size: int = 6) -> list[str]:
    """Every `size`-character piece of `secret` found in `data` (none may reach the client)."""
    text = data.decode() if isinstance(data, bytes) else data
    return [secret[i : i + size] for i in range(len(secret) - size + 1) if secret[i : i + size] in text]


def sim_requests(sim: SimServer, model: str) -> int:
    return sim_tokens(sim, model, "requests")


def sim_tokens(sim: SimServer, model: str, counter: str) -> int:
    return int(sim.stats()["models"].get(model, {}).get(counter, 0))


def spend_row(spend_db: Path, gateway: BackgroundServer, request_id: str, columns: str) -> tuple[Any, ...]:
    """A request's spend row, once the writer has put it in the store (it flushes every 50 ms here)."""
    for _ in range(200):
        with sqlite3.connect(spend_db) as db:
            row = db.execute(f"SELECT {columns} FROM modelyard_spend WHERE id = ?", (request_id,)).fetchone()
        if row is not None:
            return tuple(row)
        httpx.get(gateway.url + "/health/live")
        time.sleep(0.01)
    raise AssertionError(f"no spend row for {request_id}")


# ---------------------------------------------------------------------------- redaction


def test_pii_answer_redacted_chat(oai, sim):
    raw = oai.chat.completions.with_raw_response.create(
        model="redact", messages=[{"role": "user", "content": PII_PROMPT}]
    )
    text = raw.parse().choices[0].message.content
    assert "any time this week" in text and not leaks(text) and not leaks(text, PHONE.replace(" ", ""), 6)
    header = raw.headers["x-modelyard-guardrails"]
    assert "pii:output:redact fired" in header


def test_pii_redacted_in_the_chat_stream_no_unredacted_byte(gateway):
    body = {"model": "redact", "stream": True, "messages": [{"role": "user", "content": PII_PROMPT}]}
    raw = b""
    pieces = 0
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            raw += piece
            pieces += 1
            assert not leaks(raw), raw  # at no point, not only at the end
    assert b"[DONE]" in raw
    text = "".join(
        (choice.get("delta") or {}).get("content") or ""
        for line in raw.decode().splitlines()
        if line.startswith("data: {")
        for choice in json.loads(line[6:])["choices"]
    )
    assert "you can reach alice at" in text and "any time this week" in text
    assert text.count("[") >= 1 and not leaks(text)


def test_pii_redacted_in_the_anthropic_stream_native_pass_through_off(gateway, claude):
    body = {
        "model": "redact-anthropic",
        "max_tokens": 200,
        "stream": True,
        "messages": [{"role": "user", "content": PII_PROMPT}],
    }
    raw = b""
    headers = {"x-api-key": "sk-client", "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            raw += piece
            assert not leaks(raw)
    assert b"message_stop" in raw
    message = claude.messages.create(
        model="redact-anthropic", max_tokens=200, messages=[{"role": "user", "content": PII_PROMPT}]
    )
    text = message.content[0].text
    assert "any time this week" in text and not leaks(text)


def test_pii_redacted_on_the_responses_api_streaming_and_not(oai, gateway):
    response = oai.responses.create(model="redact", input=PII_PROMPT)
    assert "any time this week" in response.output_text and not leaks(response.output_text)
    raw = b""
    body = {"model": "redact", "input": PII_PROMPT, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, timeout=30) as streamed:
        for piece in streamed.iter_raw():
            raw += piece
            assert not leaks(raw)
    assert b"response.completed" in raw
    with oai.responses.stream(model="redact", input=PII_PROMPT) as stream:
        final = stream.get_final_response()
    assert "any time this week" in final.output_text and not leaks(final.output_text)


# ---------------------------------------------------------------------------- retry on invalid JSON


@pytest.mark.parametrize("stream", [False, True])
def test_invalid_json_retried_on_the_next_candidate(oai, gateway, sim, spend_db, stream):
    before_small, before_large = sim_requests(sim, "sim-small"), sim_requests(sim, "sim-large")
    before_out = sim_tokens(sim, "sim-small", "tokens_out")
    kwargs: dict[str, Any] = {
        "model": "extract",
        "messages": [{"role": "user", "content": EXTRACT_PROMPT}],
        "response_format": {"type": "json_object"},
    }
    usage = None
    if not stream:
        raw = oai.chat.completions.with_raw_response.create(**kwargs)
        answer = raw.parse()
        text, usage, headers = answer.choices[0].message.content, answer.usage, raw.headers
    else:
        with oai.chat.completions.with_streaming_response.create(stream=True, **kwargs) as response:
            headers = response.headers
            text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert json.loads(text) == {"order": 42}  # the valid answer, from the second candidate
    assert headers["x-modelyard-model"] == "large@openai"
    attempts = headers["x-modelyard-attempts"]
    assert attempts.startswith("2;") and "small@openai guardrail" in attempts
    assert sim_requests(sim, "sim-small") == before_small + 1 and sim_requests(sim, "sim-large") == before_large + 1
    assert "json_schema:output:retry fired" in headers["x-modelyard-guardrails"]
    attempts_n, cost, logged = spend_row(spend_db, gateway, headers["x-request-id"], "attempts, cost_usd, guardrails")
    assert attempts_n == 2 and "json_schema:output:retry fired" in logged
    small_cost = (sim_tokens(sim, "sim-small", "tokens_out") - before_out) * 0.4 / 1e6
    assert small_cost > 0 and cost > small_cost  # the rejected answer is paid for, beside the accepted one
    if usage is not None:
        assert float(headers["x-modelyard-cost-usd"]) == pytest.approx(cost)
        assert cost > (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6  # more than the one used


@pytest.mark.parametrize("stream", [False, True])
def test_invalid_json_retried_through_the_responses_api(oai, sim, stream):
    before_small = sim_requests(sim, "sim-small")
    fmt = {"format": {"type": "json_object"}}
    if stream:
        with oai.responses.stream(model="extract", input=EXTRACT_PROMPT, text=fmt) as events:
            text = events.get_final_response().output_text
    else:
        text = oai.responses.create(model="extract", input=EXTRACT_PROMPT, text=fmt).output_text
    assert json.loads(text) == {"order": 42} and sim_requests(sim, "sim-small") == before_small + 1


@pytest.mark.parametrize("stream", [False, True])
def test_invalid_json_retried_through_the_anthropic_ingress(claude, sim, stream):
    before_small = sim_requests(sim, "sim-small")
    kwargs: dict[str, Any] = {
        "model": "extract-anthropic",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": EXTRACT_PROMPT}],
    }
    if stream:
        with claude.messages.stream(**kwargs) as events:
            text = events.get_final_text()
    else:
        text = claude.messages.create(**kwargs).content[0].text
    assert json.loads(text) == {"order": 42}  # the schema check asked the next candidate
    assert sim_requests(sim, "sim-small") == before_small + 1


def test_invalid_json_on_every_candidate_is_a_422_naming_the_check(oai, gateway, spend_db):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.chat.completions.create(
            model="extract",
            messages=[{"role": "user", "content": EXTRACT_PROMPT}],
            response_format={"type": "json_object"},
            extra_body={"modelyard": {"candidates": ["small@openai"]}},
        )
    message = info.value.body["message"]
    assert "json_schema" in message and '"order": 42' not in message
    headers = info.value.response.headers
    assert "json_schema:output:retry fired" in headers["x-modelyard-guardrails"]
    assert "small@openai guardrail" in headers["x-modelyard-attempts"]
    cost, status, logged = spend_row(spend_db, gateway, headers["x-request-id"], "cost_usd, status, guardrails")
    assert status == "error" and cost > 0 and "json_schema:output:retry fired" in logged  # the rejected answer's cost


# ---------------------------------------------------------------------------- input blocked


def test_card_number_in_the_input_blocked_before_any_upstream_call(oai, claude, sim):
    before = sim_requests(sim, "sim-small")
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.chat.completions.create(model="guarded-in", messages=[{"role": "user", "content": f"my card: {CARD}"}])
    assert "cards-in" in info.value.body["message"] and CARD not in str(info.value.body)
    assert "cards-in:input:block fired" in info.value.response.headers["x-modelyard-guardrails"]
    with pytest.raises(anthropic.UnprocessableEntityError) as ainfo:
        claude.messages.create(
            model="guarded-in", max_tokens=50, messages=[{"role": "user", "content": f"my card: {CARD}"}]
        )
    assert ainfo.value.body["error"]["type"] == "invalid_request_error" and "cards-in" in str(ainfo.value.body)
    with pytest.raises(openai.UnprocessableEntityError):
        oai.responses.create(model="guarded-in", input=f"my card: {CARD}", stream=False)
    assert sim_requests(sim, "sim-small") == before  # nothing was sent upstream
    fine = oai.chat.completions.create(model="guarded-in", messages=[{"role": "user", "content": "Repeat: ok"}])
    assert fine.choices[0].message.content == "ok" and sim_requests(sim, "sim-small") == before + 1


# ---------------------------------------------------------------------------- a check that raises


@pytest.mark.parametrize("stream", [False, True])
def test_a_python_check_that_raises_fails_closed_naming_it(oai, gateway, stream):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.chat.completions.create(
            model="buggy", messages=[{"role": "user", "content": "Repeat: the unchecked answer"}], stream=stream
        )
    body = json.dumps(info.value.body)
    assert "`python`" in body and "fails closed" in body
    assert "unchecked answer" not in body and "Traceback" not in body and "own bug" not in body
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'label="python",result="error",stage="output"' in metrics


# ---------------------------------------------------------------------------- input redaction, mid-stream block, warn


def last_upstream_text(sim: SimServer) -> str:
    received = httpx.get(sim.url + "/_sim/requests/sim-small").json()["requests"]
    return json.dumps(received[-1])


def test_input_redacted_before_it_goes_upstream_even_on_pass_through(claude, oai, sim):
    message = claude.messages.create(
        model="redact-in", max_tokens=200, messages=[{"role": "user", "content": PII_PROMPT}]
    )
    upstream = last_upstream_text(sim)
    assert "you can reach alice at" in upstream and not leaks(upstream)  # the client's bytes were not forwarded
    assert not leaks(message.content[0].text)  # the model only ever saw the redacted prompt
    raw = oai.chat.completions.with_raw_response.create(
        model="redact-in", messages=[{"role": "user", "content": PII_PROMPT}]
    )
    assert not leaks(last_upstream_text(sim)) and "input:redact fired" in raw.headers["x-modelyard-guardrails"]


BLOCKED_PROMPT = "Repeat: " + "a perfectly harmless sentence goes first, " * 6 + "then the forbidden word, then more"


@pytest.mark.parametrize(
    ("path", "model", "body", "error_marker"),
    [
        ("/v1/chat/completions", "words", {"messages": [{"role": "user", "content": BLOCKED_PROMPT}]}, b'"error"'),
        (
            "/v1/messages",
            "words-anthropic",
            {"max_tokens": 500, "messages": [{"role": "user", "content": BLOCKED_PROMPT}]},
            b"event: error",
        ),
        ("/v1/responses", "words", {"input": BLOCKED_PROMPT}, b"response.failed"),
    ],
)
def test_a_block_mid_stream_ends_with_the_ingress_error_event(gateway, path, model, body, error_marker):
    headers = {"x-api-key": "sk-client", "anthropic-version": "2023-06-01"}
    raw = b""
    with httpx.stream(
        "POST", gateway.url + path, json={"model": model, "stream": True, **body}, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            raw += piece
    assert b"forbidden" not in raw and b"harmless" in raw  # what came before the match was sent
    assert error_marker in raw and b"words" in raw  # the error event names the check
    assert b"[DONE]" not in raw and b"message_stop" not in raw and b"response.completed" not in raw


def test_warn_only_reports(oai, gateway):
    raw = oai.chat.completions.with_raw_response.create(
        model="warned", messages=[{"role": "user", "content": PII_PROMPT}]
    )
    assert EMAIL in raw.parse().choices[0].message.content  # unchanged
    assert "pii-warn:output:warn fired" in raw.headers["x-modelyard-guardrails"]
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'modelyard_guardrail_checks_total{action="warn",label="pii-warn",result="fired",stage="output"}' in metrics


# ---------------------------------------------------------------------------- per request


def test_request_may_add_built_in_checks(oai):
    plain = oai.chat.completions.create(model="plain", messages=[{"role": "user", "content": PII_PROMPT}])
    assert leaks(plain.choices[0].message.content)  # no guardrail on `plain`: the address comes back
    raw = oai.chat.completions.with_raw_response.create(
        model="plain",
        messages=[{"role": "user", "content": PII_PROMPT}],
        extra_body={"modelyard": {"guardrails": [{"check": "pii", "action": "redact"}]}},
    )
    assert not leaks(raw.parse().choices[0].message.content)
    assert "pii:output:redact fired" in raw.headers["x-modelyard-guardrails"]


def test_request_guardrails_on_the_anthropic_and_responses_ingresses(claude, oai, sim):
    added = {"modelyard": {"guardrails": [{"check": "pii", "action": "redact"}]}}
    message = claude.messages.create(
        model="plain", max_tokens=200, messages=[{"role": "user", "content": PII_PROMPT}], extra_body=added
    )
    assert "any time this week" in message.content[0].text and not leaks(message.content[0].text)
    response = oai.responses.create(model="plain", input=PII_PROMPT, extra_body=added)
    assert "any time this week" in response.output_text and not leaks(response.output_text)
    passed = claude.messages.create(  # pass-through (input checks only, nothing found): options never go upstream
        model="redact-in",
        max_tokens=50,
        messages=[{"role": "user", "content": "Repeat: hi"}],
        extra_body={"modelyard": {"tags": ["e2e"]}},
    )
    assert passed.content[0].text == "hi" and "modelyard" not in last_upstream_text(sim)
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model="plain",
            max_tokens=20,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"modelyard": {"guardrails": [{"check": "regex", "patterns": ["x"]}]}},
        )
    assert "regex" in str(info.value.body)


@pytest.mark.parametrize(
    "spec",
    [
        {"check": "python", "function": RAISING},
        {"check": "regex", "patterns": ["(a+)+$"]},
    ],
)
def test_request_cannot_add_code_or_raw_patterns(oai, spec):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model="plain",
            messages=[{"role": "user", "content": "Repeat: hi"}],
            extra_body={"modelyard": {"guardrails": [spec]}},
        )
    assert info.value.body["param"] == "modelyard.guardrails" and spec["check"] in info.value.body["message"]


def test_request_cannot_remove_or_weaken_configured_checks(oai, sim):
    before = sim_requests(sim, "sim-small")
    weaker = [{"check": "pii", "stage": "input", "action": "warn", "name": "cards-in"}]
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(
            model="guarded-in",
            messages=[{"role": "user", "content": f"my card: {CARD}"}],
            extra_body={"modelyard": {"guardrails": weaker}},
        )
    assert sim_requests(sim, "sim-small") == before


# ---------------------------------------------------------------------------- spend log and metrics


def test_findings_reach_the_spend_log(oai, spend_db, gateway):
    raw = oai.chat.completions.with_raw_response.create(
        model="redact", messages=[{"role": "user", "content": PII_PROMPT}]
    )
    (logged,) = spend_row(spend_db, gateway, raw.headers["x-request-id"], "guardrails")
    assert "pii:output:redact fired" in logged
    (nothing,) = spend_row(
        spend_db,
        gateway,
        oai.chat.completions.with_raw_response.create(
            model="plain", messages=[{"role": "user", "content": "Repeat: hi"}]
        ).headers["x-request-id"],
        "guardrails",
    )
    assert nothing is None  # no guardrails applied: nothing to log
    body = {"model": "redact", "stream": True, "messages": [{"role": "user", "content": PII_PROMPT}]}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
        response.read()
    (streamed,) = spend_row(spend_db, gateway, response.headers["x-request-id"], "guardrails")
    assert "pii:output:redact fired" in streamed  # found while streaming, after the headers went out


def test_findings_counted_in_metrics(oai, gateway):
    oai.chat.completions.create(model="redact", messages=[{"role": "user", "content": PII_PROMPT}])
    text = httpx.get(gateway.url + "/metrics").text
    fired = [
        line
        for line in text.splitlines()
        if line.startswith("modelyard_guardrail_checks_total{") and 'label="pii"' in line and 'result="fired"' in line
    ]
    assert fired and float(fired[0].rsplit(" ", 1)[1]) >= 1


# ---------------------------------------------------------------------------- per key

MASTER = "sk-master-guardrails-e2e"


@pytest.fixture(scope="module")
def keyed_gateway(sim: SimServer, tmp_path_factory) -> Iterator[BackgroundServer]:
    spend = tmp_path_factory.mktemp("guard-keyed") / "spend.db"
    text = config_yaml(sim.url, spend) + f"access: {{master_key: {MASTER}}}\n"
    with BackgroundServer(create_app(parse_config(text, source="guardrails-keyed.yaml"))) as server:
        yield server


def new_key(gateway: BackgroundServer, metadata: dict[str, str]) -> httpx.Response:
    return httpx.post(
        gateway.url + "/admin/keys",
        json={"name": "guarded-key", "metadata": metadata},
        headers={"authorization": f"Bearer {MASTER}"},
    )


def test_a_keys_guardrail_sets_apply_to_every_model_it_calls(keyed_gateway, sim):
    made = new_key(keyed_gateway, {"guardrails": "cards-in, pii-out"})
    assert made.status_code == 200, made.text
    client = openai.OpenAI(base_url=keyed_gateway.url + "/v1", api_key=made.json()["key"], max_retries=0)
    before = sim_requests(sim, "sim-small")
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="plain", messages=[{"role": "user", "content": f"card {CARD}"}])
    assert "cards-in" in info.value.body["message"] and sim_requests(sim, "sim-small") == before
    answer = client.chat.completions.create(model="plain", messages=[{"role": "user", "content": PII_PROMPT}])
    assert not leaks(answer.choices[0].message.content)
    unguarded = openai.OpenAI(base_url=keyed_gateway.url + "/v1", api_key=MASTER, max_retries=0)
    plain = unguarded.chat.completions.create(model="plain", messages=[{"role": "user", "content": PII_PROMPT}])
    assert leaks(plain.choices[0].message.content)  # another key: the model itself has no guardrails


def test_a_key_naming_an_unknown_set_is_refused_when_made(keyed_gateway):
    made = new_key(keyed_gateway, {"guardrails": "cards-in,no-such-set"})
    assert made.status_code == 400 and made.json()["error"]["param"] == "metadata.guardrails"
    assert "no-such-set" in made.json()["error"]["message"]
