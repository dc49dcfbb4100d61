"""The golden responses (issue 20): a fixed set of requests through a real `modelyard serve`, recorded as bytes.

Issue 20 rewrites the gateway's hot path for speed and promises that cost, usage and headers stay
byte-identical. This module is the one copy of what is sent and how an answer is recorded: the recorder
(`scripts/record_golden.py`) writes `tests/data/golden/*.json` from it, and `test_golden_responses.py` replays
the same requests against the current tree and diffs. Each fixture holds the status, the response headers
(names lower-cased; date, request ids and timings dropped or masked), the body bytes (a stream's events
concatenated), and the spend row the request left in the store, read back after a graceful stop.

Normalisation (`normalise_body`, `normalise_headers`), the only liberty taken with the bytes, covers values
that differed between two runs of the same tree and nothing else:
- headers `date`, `x-request-id`, `request-id`, `x-modelyard-latency-ms`, `x-modelyard-queue-ms` are dropped;
  in `x-modelyard-attempts` each attempt's `<n>ms` becomes `<ms>`; `retry-after`'s value becomes `<s>`;
  the remaining header lines are sorted (their order carries no meaning; names and values are compared);
- in bodies, in place (`_BODY_MASKS`; the bytes around a masked value, spacing included, are compared as
  they are): `"created"`/`"created_at"` numbers → 0; `"id"`/`"item_id"` strings starting `chatcmpl-`/`msg_`/
  `resp_` (minted per request from the clock) → `<id>`; `"latency_ms"` numbers (an explanation's attempts)
  → 0; a rate limit's `try again in <s>s`; a budget refusal's `(renews <time> UTC)`.

The simulator is pinned: a fresh one per run (its per-model request counters start at zero), seed 7, no
latency, and its answers drawn from the JSON *content* of the upstream body rather than its bytes
(`GoldenSimApp`), so a gateway that encodes the same upstream request differently gets the same answer.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import modelyard
from modelyard.sim.app import SimApp
from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "golden"
MASTER = "sk-golden-master-0123456789"
SIM_SEED = 7

#: Headers whose value differs on every request (the issue: "request id, latency, date").
VARYING_HEADERS = frozenset({"date", "x-request-id", "request-id", "x-modelyard-latency-ms", "x-modelyard-queue-ms"})
_ATTEMPT_MS = re.compile(rb"\b\d+ms\b")
#: Body values that differ between two runs of the same tree, masked in place (group 1 and 3 kept).
_BODY_MASKS = (
    # timestamps: the simulator's and the gateway's `created`, the Responses API's `created_at`
    (re.compile(rb'("(?:created|created_at)"\s*:\s*)(\d+(?:\.\d+)?)()'), b"0"),
    # ids minted per request from the clock or a random source (a cache replay's, translated answers')
    (re.compile(rb'("(?:id|item_id)"\s*:\s*"(?:chatcmpl-|msg_|resp_))([^"]*)(")'), b"<id>"),
    # timings: an explanation's per-attempt latency, a rate limit's wait, a budget period's renewal minute
    (re.compile(rb'("latency_ms"\s*:\s*)(\d+(?:\.\d+)?)()'), b"0"),
    (re.compile(rb"(try again in )(\d+)(s)"), b"<s>"),
    (re.compile(rb"(\(renews )(\d{4}-\d\d-\d\d \d\d:\d\d)( UTC\))"), b"<time>"),
)

CONFIG = """
deployments:
  - {{name: small@openai, provider: openai, model: sim-small, api_base: "{sim}/v1",
      price: {{input: 0.1, output: 0.4}}}}
  - {{name: medium@openai, provider: openai, model: sim-medium, api_base: "{sim}/v1",
      price: {{input: 0.8, output: 2.4}}}}
  - {{name: small@anthropic, provider: anthropic, model: sim-small, api_base: "{sim}",
      price: {{input: 0.1, output: 0.4}}}}
  - {{name: medium@anthropic, provider: anthropic, model: sim-medium, api_base: "{sim}",
      price: {{input: 0.8, output: 2.4}}, capabilities: [tools, json_object, json_schema, streaming, reasoning]}}
  - {{name: small@gemini, provider: gemini, model: sim-small, api_base: "{sim}",
      price: {{input: 0.1, output: 0.4}}}}
  - {{name: failing@openai, provider: openai, model: sim-medium, api_base: "{sim}/v1",
      price: {{input: 0.8, output: 2.4}}, headers: {{x-sim-fault: server_error}}}}
  - {{name: embed@openai, provider: openai, kind: embedding, model: sim-embed, api_base: "{sim}/v1",
      price: {{input: 0.02, output: 0}}}}
models:
  via-openai: {{candidates: [small@openai]}}
  via-anthropic: {{candidates: [small@anthropic]}}
  via-gemini: {{candidates: [small@gemini]}}
  thinker: {{candidates: [medium@anthropic]}}
  cheapest: {{candidates: [medium@openai, small@anthropic], strategy: cost}}
  ordered: {{candidates: [medium@anthropic, small@openai], strategy: priority}}
  failover: {{candidates: [failing@openai], fallbacks: [via-openai], retries: 0}}
  cached: {{candidates: [small@openai], cache: {{enabled: true}}}}
  embed: {{candidates: [embed@openai]}}
server:
  max_body_bytes: 65536
access:
  master_key: {master}
spend:
  store: "{store}"
  flush_interval_s: 0.05
drain:
  grace_s: 0
  deadline_s: 5
"""

#: Virtual keys made through the admin API before the requests (name → limits).
KEYS: dict[str, dict[str, Any]] = {
    "tenant": {"rpm": 10_000, "tpm": 10_000_000, "budget_usd": 100.0},
    "poor": {"budget_usd": 0.000001},
    "limited": {"rpm": 2},
}

#: The spend row's columns that do not vary between runs (not its id, time, latency or key id).
SPEND_COLUMNS = (
    "key_name",
    "model",
    "deployment",
    "provider",
    "endpoint",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "status",
    "error_kind",
)


@dataclass(frozen=True)
class Golden:
    """One recorded request: who sends what where. `raw` is sent as the body bytes instead of `body`."""

    name: str
    path: str
    body: dict[str, Any] | None = None
    key: str | None = "tenant"
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body).encode()

    def described(self) -> dict[str, Any]:
        """The request as the fixture shows it (a large raw body by its size only)."""
        shown: dict[str, Any] = {"path": self.path, "key": self.key}
        if self.headers:
            shown["headers"] = self.headers
        if self.raw is None:
            shown["body"] = self.body
        elif len(self.raw) <= 256:
            shown["raw"] = self.raw.decode("utf-8", "replace")
        else:
            shown["raw_bytes"] = len(self.raw)
        return shown


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
STREAM_USAGE = {"include_usage": True}


def _chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 24, "messages": _user(text), **extra}


def _messages(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 24, "messages": _user(text), **extra}


def _responses(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_output_tokens": 24, "input": text, **extra}


CHAT, MESSAGES, RESPONSES = "/v1/chat/completions", "/v1/messages", "/v1/responses"

#: The requests, in the order they are sent (the order matters: the simulator's draws and the response
#: cache and rate limits depend on what came before).
REQUESTS: tuple[Golden, ...] = (
    # chat completions, one per wire, plain and streamed
    Golden("chat_openai", CHAT, _chat("via-openai", "Say hello to the golden test.")),
    Golden("chat_anthropic", CHAT, _chat("via-anthropic", "Name three rivers.")),
    Golden("chat_gemini", CHAT, _chat("via-gemini", "Name three mountains.")),
    Golden("chat_master_key", CHAT, _chat("via-openai", "The master key asks."), key="master"),
    Golden("chat_stream_openai", CHAT, _chat("via-openai", "Stream me a line.", stream=True)),
    Golden(
        "chat_stream_openai_usage",
        CHAT,
        _chat("via-openai", "Stream me a line with usage.", stream=True, stream_options=STREAM_USAGE),
    ),
    Golden(
        "chat_stream_anthropic_usage",
        CHAT,
        _chat("via-anthropic", "Stream from the other wire.", stream=True, stream_options=STREAM_USAGE),
    ),
    Golden(
        "chat_stream_gemini_usage",
        CHAT,
        _chat("via-gemini", "Stream from the third wire.", stream=True, stream_options=STREAM_USAGE),
    ),
    Golden("chat_n2", CHAT, _chat("via-openai", "Two answers please.", n=2)),
    Golden("chat_tools", CHAT, _chat("via-openai", "Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required")),
    Golden(
        "chat_tools_stream",
        CHAT,
        _chat(
            "via-openai",
            "Weather in Rome?",
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
            stream_options=STREAM_USAGE,
        ),
    ),
    Golden(
        "chat_tools_anthropic",
        CHAT,
        _chat("via-anthropic", "Weather in Oslo?", tools=[WEATHER_TOOL], tool_choice="required"),
    ),
    Golden(
        "chat_json_mode",
        CHAT,
        _chat("via-openai", "A JSON object with a name.", response_format={"type": "json_object"}),
    ),
    Golden("chat_strategy_cost", CHAT, _chat("cheapest", "The cheaper one answers.")),
    Golden("chat_strategy_priority", CHAT, _chat("ordered", "The first one answers.")),
    Golden("chat_failover", CHAT, _chat("failover", "The first deployment fails.")),
    Golden("chat_explain", CHAT, _chat("cheapest", "Explain the route."), headers={"x-modelyard-explain": "1"}),
    # the response cache: a miss, then the same request again (a hit, plain and streamed)
    Golden("cache_miss", CHAT, _chat("cached", "Cache this answer.", temperature=0)),
    Golden("cache_hit", CHAT, _chat("cached", "Cache this answer.", temperature=0)),
    Golden(
        "cache_hit_stream",
        CHAT,
        _chat("cached", "Cache this answer.", temperature=0, stream=True, stream_options=STREAM_USAGE),
    ),
    # Anthropic messages
    Golden("messages_anthropic", MESSAGES, _messages("via-anthropic", "Hello from the messages API.")),
    Golden("messages_openai", MESSAGES, _messages("via-openai", "Messages to an OpenAI wire.")),
    Golden("messages_stream_anthropic", MESSAGES, _messages("via-anthropic", "Stream messages.", stream=True)),
    Golden("messages_stream_openai", MESSAGES, _messages("via-openai", "Stream messages, translated.", stream=True)),
    Golden(
        "messages_tools",
        MESSAGES,
        _messages("via-anthropic", "Weather in Lima?", tools=[ANTHROPIC_TOOL], tool_choice={"type": "any"}),
    ),
    Golden(
        "messages_thinking",
        MESSAGES,
        {
            **_messages("thinker", "Think first."),
            "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ),
    Golden(
        "messages_thinking_stream",
        MESSAGES,
        {
            **_messages("thinker", "Think first, streamed.", stream=True),
            "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ),
    # Responses API
    Golden("responses_openai", RESPONSES, _responses("via-openai", "A response, please.", store=False)),
    Golden("responses_anthropic", RESPONSES, _responses("via-anthropic", "A translated response.", store=False)),
    Golden(
        "responses_stream",
        RESPONSES,
        _responses("via-openai", "A streamed response.", store=False, stream=True),
    ),
    Golden(
        "responses_stream_anthropic",
        RESPONSES,
        _responses("via-anthropic", "A streamed, translated response.", store=False, stream=True),
    ),
    # embeddings
    Golden("embeddings", "/v1/embeddings", {"model": "embed", "input": ["golden one", "golden two"]}),
    # errors
    Golden("error_bad_json", CHAT, raw=b'{"model": "via-openai", "messages": ['),
    Golden("error_unknown_model", CHAT, _chat("no-such-model", "Who answers?")),
    Golden("error_no_key", CHAT, _chat("via-openai", "No key."), key=None),
    Golden("error_wrong_key", CHAT, _chat("via-openai", "A wrong key."), key="sk-not-a-key"),
    Golden("error_too_large", CHAT, raw=b'{"model": "via-openai", "messages": [], "pad": "' + b"x" * 70_000 + b'"}'),
    Golden("error_over_budget", CHAT, _chat("via-openai", "Spend more than I have."), key="poor"),
    Golden("error_messages_over_budget", MESSAGES, _messages("via-anthropic", "Still too poor."), key="poor"),
    Golden("limited_first", CHAT, _chat("via-openai", "One."), key="limited"),
    Golden("limited_second", CHAT, _chat("via-openai", "Two."), key="limited"),
    Golden("error_rate_limited", CHAT, _chat("via-openai", "Three: too many."), key="limited"),
    Golden("error_bad_param", CHAT, _chat("via-openai", "A bad temperature.", temperature=9)),
)


class GoldenSimApp(SimApp):
    """The simulator, drawing each answer from the upstream body's JSON content rather than its bytes: the
    gateway may encode the same upstream request another way (key order, spacing) without changing the answer."""

    def _rng(self, model: str, body: bytes) -> Any:
        try:
            body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
        except ValueError:
            pass
        return super()._rng(model, body)


@contextmanager
def pinned_sim() -> Iterator[SimServer]:
    """A fresh simulator for one run: seed `SIM_SEED`, no latency, counters at zero."""
    sim = SimServer(seed=SIM_SEED, instant=True)
    sim.app = GoldenSimApp(sim.fleet, SIM_SEED)
    with sim:
        yield sim


def normalise_headers(raw: list[tuple[bytes, bytes]]) -> list[list[str]]:
    """Names lower-cased, the varying ones dropped, attempt timings masked; sorted (the order of header lines
    carries no meaning, their values do)."""
    kept = []
    for name, value in raw:
        lower = name.lower()
        if lower.decode("latin-1") in VARYING_HEADERS:
            continue
        if lower == b"x-modelyard-attempts":
            value = _ATTEMPT_MS.sub(b"<ms>", value)
        elif lower == b"retry-after":  # a rate limit's wait, as the body's `try again in <s>s`
            value = b"<s>"
        kept.append([lower.decode("latin-1"), value.decode("latin-1")])
    return sorted(kept)


def normalise_body(body: bytes) -> bytes:
    for pattern, mask in _BODY_MASKS:
        body = pattern.sub(rb"\g<1>" + mask + rb"\g<3>", body)
    return body


def _key_header(key: str | None, secrets: dict[str, str]) -> dict[str, str]:
    if key is None:
        return {}
    secret = MASTER if key == "master" else secrets.get(key, key)
    return {"authorization": f"Bearer {secret}"}


def _send(client: httpx.Client, url: str, golden: Golden, secrets: dict[str, str]) -> tuple[int, list[Any], bytes, str]:
    headers = {"content-type": "application/json", **_key_header(golden.key, secrets), **golden.headers}
    with client.stream("POST", url + golden.path, content=golden.content(), headers=headers) as response:
        body = b"".join(response.iter_raw())  # the bytes as sent: chunk boundaries are not compared
        raw = list(response.headers.raw)
        request_id = response.headers.get("x-request-id", "")
    return response.status_code, normalise_headers(raw), normalise_body(body), request_id


def _spend_rows(store: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(store) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(f"SELECT id, {', '.join(SPEND_COLUMNS)} FROM modelyard_spend").fetchall()
    wanted = set(ids)
    return {row["id"]: {c: row[c] for c in SPEND_COLUMNS} for row in rows if row["id"] in wanted}


def _same_code_env() -> dict[str, str]:
    """PYTHONPATH for the gateway process: the `modelyard` this process imported, so the tree under test is
    the one served (not whichever copy the virtualenv has installed)."""
    src = str(Path(modelyard.__file__).resolve().parents[1])
    inherited = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": src + (os.pathsep + inherited if inherited else "")}


def run(workdir: Path) -> list[dict[str, Any]]:
    """Send every request of `REQUESTS` through a fresh gateway process on a fresh simulator; the records
    (one per request, in order) as the fixtures hold them."""
    store = workdir / "spend.db"
    config = workdir / "golden.yaml"
    with pinned_sim() as sim:
        config.write_text(CONFIG.format(sim=sim.url, master=MASTER, store=store))
        answers = []
        gateway = GatewayProcess(config, log=workdir / "gateway.log", env=_same_code_env())
        with gateway, httpx.Client(timeout=30) as client:
            secrets = {}
            for name, limits in KEYS.items():
                made = client.post(
                    gateway.url + "/admin/keys",
                    json={"name": f"golden-{name}", **limits},
                    headers={"authorization": f"Bearer {MASTER}"},
                )
                assert made.status_code == 200, made.text
                secrets[name] = str(made.json()["key"])
            for golden in REQUESTS:
                answers.append((golden, *_send(client, gateway.url, golden, secrets)))
            gateway.stop()  # SIGTERM: the spend log is flushed before the process exits
        rows = _spend_rows(store, [a[4] for a in answers])
    return [
        {
            "name": golden.name,
            "request": golden.described(),
            "status": status,
            "headers": headers,
            "body": body.decode("utf-8", "surrogateescape"),
            "spend": rows.get(request_id),
        }
        for golden, status, headers, body, request_id in answers
    ]


def fixture_path(name: str) -> Path:
    return FIXTURES / f"{name}.json"


def encode_record(record: dict[str, Any]) -> str:
    """A fixture's text: stable key order, the body kept as one string (floats by repr: exact)."""
    return json.dumps(record, indent=1, ensure_ascii=False) + "\n"


def write_fixtures(records: list[dict[str, Any]]) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for old in FIXTURES.glob("*.json"):
        old.unlink()
    for record in records:
        fixture_path(record["name"]).write_text(encode_record(record))
