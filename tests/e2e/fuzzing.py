"""A property-based abuse harness against the real gateway process (issue #10, item 7).

`Stack` starts the provider simulator (`modelyard sim`, no faults, instant answers) and the gateway
(`modelyard serve`) as real processes; `fuzz(stack, route)` runs hypothesis over one route's request
strategy and checks every answer with `problems()`: no 5xx (the simulator has no faults, so any 5xx comes
from client input), no traceback text, and an error body of the ingress's shape. A later endpoint joins
with one `Route(...)` line in test_fuzz.py: a name, the error shape of its ingress, a strategy of `Probe`s
and a number of examples.

The value strategies here (`hostile`, `odd_text`, `json_values`, `mutated`, `modelyard_headers`) produce
what a hostile client sends and `json.dumps` cannot: raw `NaN`/`Infinity`/`1e400` tokens, integers beyond
64 bits, 100k-deep nesting, NUL bytes, lone surrogates, invalid UTF-8, megabyte strings.

Scale with MODELYARD_FUZZ_SCALE (examples multiplier, default 1), pick another seed with MODELYARD_FUZZ_SEED
(default: derandomized, the same requests every CI run), use a PostgreSQL store with MODELYARD_FUZZ_STORE=<dsn>
(default: SQLite in the test's directory), and list every finding instead of stopping at the first with
MODELYARD_FUZZ_COLLECT=<file>.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from modelyard.testing.process import CLI, GatewayProcess, free_port, wait_http

MASTER = "sk-master-fuzz-0123456789"
SCALE = float(os.environ.get("MODELYARD_FUZZ_SCALE", "1"))
SEED = os.environ.get("MODELYARD_FUZZ_SEED")
Shape = Literal["openai", "anthropic", "html"]

# --------------------------------------------------------------------------- requests and answers


@dataclass(frozen=True)
class Probe:
    """One request. `key` names a credential resolved at send time (keys are made when the stack starts):
    master, restricted (one model), fresh (the last key the fuzzer itself made), bad, none; `key_header`
    is how it is sent. `{fresh_id}` in the path is the id of that last made key."""

    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, bytes], ...] = ()
    key: str = "none"
    key_header: str = "bearer"
    #: Dashboard probes: `session` sends the logged-in session's cookie (and `{csrf}` in the body becomes its
    #: CSRF token), `stale` a cookie of a session that was logged out, `none` no cookie.
    session: str = "none"

    def repro(self, url: str, credential: str | None) -> str:
        """A curl-like reproduction: method, URL, headers, body (shortened past 1,500 bytes)."""
        lines = [f"{self.method} {url}{self.path}"]
        lines += [f"  {name}: {value!r}" for name, value in self._all_headers(credential)]
        body = self.body if len(self.body) <= 1500 else self.body[:1500] + b"...(%d bytes)" % len(self.body)
        lines.append(f"  body: {body!r}")
        return "\n".join(lines)

    def _all_headers(self, credential: str | None) -> list[tuple[str, bytes]]:
        out = list(self.headers)
        if credential is not None:
            name, value = KEY_HEADERS[self.key_header]
            out.append((name, value.format(key=credential).encode()))
        return out


#: How a credential travels: the OpenAI SDK's bearer token, the Anthropic SDK's x-api-key, and malformed forms.
KEY_HEADERS: dict[str, tuple[str, str]] = {
    "bearer": ("authorization", "Bearer {key}"),
    "x-api-key": ("x-api-key", "{key}"),
    "lower-bearer": ("authorization", "bearer {key}"),
    "no-scheme": ("authorization", "{key}"),
    "basic": ("authorization", "Basic {key}"),
    "spaces": ("authorization", "Bearer   {key}  "),
}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    #: Every Set-Cookie (a dict of headers keeps only the last of them).
    cookies: tuple[str, ...] = ()


class Connection:
    """One keep-alive HTTP/1.1 connection (http.client: the cheapest client per request), reopened when the
    server closes it."""

    def __init__(self, host: str, port: int, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes) -> Answer:
        try:
            return self._once(method, path, headers, body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()  # a kept-alive connection the server closed between requests: one retry, fresh
            return self._once(method, path, headers, body)

    def _once(self, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes) -> Answer:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        conn = self._conn
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        pairs = response.getheaders()
        cookies = tuple(v.split(";")[0] for k, v in pairs if k.lower() == "set-cookie")
        return Answer(response.status, {k.lower(): v for k, v in pairs}, data, cookies)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------- checks


TRACEBACK_MARKS = (b"Traceback", b'File "')


#: Routes whose errors are in Anthropic's shape; every other answer's errors are in OpenAI's.
ANTHROPIC_ROUTES = {("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens")}


def shape_of(probe: Probe) -> Shape:
    path = probe.path.split("?")[0]
    if path == "/ui" or path.startswith("/ui/"):
        return "html"  # the dashboard answers its errors as pages in its own layout
    return "anthropic" if (probe.method, path) in ANTHROPIC_ROUTES else "openai"


#: A 504 is the right answer to a client that asked for less time than this (x-modelyard-timeout-ms).
CLIENT_TIMEOUT_MS = 1000.0


def problems(probe: Probe, answer: Answer) -> list[str]:
    """Everything wrong with one answer: a 5xx (but the 504 a client asked for with a short timeout), a
    traceback, an error body not in the shape of the route's ingress."""
    found = []
    if answer.status >= 500 and not (answer.status == 504 and _short_timeout(probe)):
        found.append(f"status {answer.status}")
    for mark in TRACEBACK_MARKS:
        if mark in answer.body:
            found.append(f"traceback text {mark!r} in the body")
    if answer.status >= 400:
        found += _error_shape_problems(answer, shape_of(probe))
    return found


def _short_timeout(probe: Probe) -> bool:
    for name, value in probe.headers:
        if name == "x-modelyard-timeout-ms":
            try:
                return 0 < float(value) < CLIENT_TIMEOUT_MS
            except ValueError:
                return False
    return False


def _error_shape_problems(answer: Answer, shape: Shape) -> list[str]:
    if shape == "html":
        kind = answer.headers.get("content-type", "")
        found = [] if kind.startswith(("text/html", "text/plain")) else [f"dashboard error content-type {kind!r}"]
        if "frame-ancestors 'none'" not in answer.headers.get("content-security-policy", ""):
            found.append("dashboard error without its content-security-policy")
        return found
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return [f"error content-type {answer.headers.get('content-type')!r}"]
    try:
        body = json.loads(answer.body)
    except ValueError:
        return ["error body is not JSON"]
    if shape == "anthropic":
        ok = (
            isinstance(body, dict)
            and set(body) == {"type", "error"}
            and body["type"] == "error"
            and isinstance(body["error"], dict)
            and isinstance(body["error"].get("type"), str)
            and isinstance(body["error"].get("message"), str)
            and body["error"]["message"] != ""
        )
    else:
        ok = (
            isinstance(body, dict)
            and set(body) == {"error"}
            and isinstance(body["error"], dict)
            and set(body["error"]) == {"message", "type", "param", "code"}
            and isinstance(body["error"]["message"], str)
            and body["error"]["message"] != ""
        )
    return [] if ok else [f"error body not in the {shape} shape"]


# --------------------------------------------------------------------------- the processes


SIM_FLEET = """
seed: 0
models:
  - {name: sim-small, context_window: 32000, output_tokens: {min: 1, max: 6}, quality: 0.6}
  - {name: sim-tiny, context_window: 8000, output_tokens: 3, quality: 0.4}
  - {name: sim-embed, kind: embedding, dimensions: 16}
  - {name: sim-whisper, kind: transcription}
  - {name: sim-tts, kind: speech}
  - {name: sim-image, kind: image}
  - {name: sim-rerank, kind: rerank}
"""

#: Deployment names, the models over them, and the one model of the restricted key.
DEPLOYMENTS = (
    "small@openai",
    "small@anthropic",
    "small@gemini",
    "tiny@openai",
    "embed@openai",
    "embed@gemini",
    "resp@openai",
    "whisper@openai",
    "tts@openai",
    "image@openai",
    "rerank@openai",
)
MODELS = (
    "via-openai",
    "via-anthropic",
    "via-gemini",
    "mixed",
    "cheapest",
    "hedged",
    "embed",
    "embed-gemini",
    "via-responses",
    "guarded",
    "whisper",
    "tts",
    "image",
    "rerank",
)
RESTRICTED_MODELS = ("via-openai", "embed")


#: Guardrail sets of the `guarded` model: every stage and action, so fuzzed requests take those paths too.
GUARDRAIL_SETS = (
    "guardrails:",
    "  fuzz-out: [{check: pii, action: redact}, {check: secrets, action: block}, "
    "{check: json_schema, action: retry}, {check: max_length, max_chars: 100000}]",
    "  fuzz-in: [{check: injection, stage: input, action: warn}, "
    "{check: keywords, stage: input, words: [forbidden], action: redact}]",
)
#: What `extra_body.modelyard.guardrails` may name (and what it may not: code, raw patterns, made-up checks).
GUARDRAIL_CHECKS = (
    "pii",
    "secrets",
    "keywords",
    "json_schema",
    "injection",
    "empty",
    "truncated",
    "max_length",
    "regex",
    "python",
    "bogus",
)


def guardrail_specs() -> st.SearchStrategy[Any]:
    """Per-request guardrails (`modelyard.guardrails`): mostly plausible specs, with disallowed checks, wrong
    stage/action pairs, hostile parameters and bad schemas among them (a 4xx in the route's shape, never a
    5xx). Use it as the `guardrails` field of the `modelyard` overrides."""
    spec = st.fixed_dictionaries(
        {"check": st.sampled_from(GUARDRAIL_CHECKS)},
        optional={
            "stage": st.sampled_from(("input", "output", "both")),
            "action": st.sampled_from(("block", "redact", "retry", "warn", "drop")),
            "on_error": st.sampled_from(("fail", "allow", "maybe")),
            "name": st.one_of(st.sampled_from(("n", "fuzz-out", "a b", "")), odd_text(20)),
            "kinds": st.lists(st.sampled_from(("email", "card", "phone", "iban", "nope")), max_size=3),
            "words": st.lists(odd_text(20), max_size=4),
            "patterns": st.lists(st.sampled_from(("(a+)+$", "[", "x")), max_size=2),
            "max_chars": st.one_of(st.integers(-1, 100), hostile()),
            "function": st.sampled_from(("os:system", "builtins:eval", "x")),
            "replacement": odd_text(20),
            "json_schema": st.sampled_from(({"type": "object"}, {"$ref": "#"}, {}, {"type": "nope"}, [])),
        },
    )
    return st.one_of(st.lists(spec, max_size=4), st.lists(spec, min_size=33, max_size=34), hostile())


def gateway_yaml(sim_url: str, store: str, extra: str = "") -> str:
    """Every wire format, each strategy kind, fallbacks and hedging: the paths a fuzzed request can take."""
    bases = {"openai": f"{sim_url}/v1", "anthropic": sim_url, "gemini": sim_url}
    deps = [
        f'  - {{name: small@{w}, provider: {w}, model: sim-small, api_base: "{bases[w]}", api_key: sk-up-{w}, '
        "price: {input: 0.1, output: 0.4}, limits: {max_concurrency: 64}, "
        "timeouts: {connect: 2, first_token: 5, total: 10}}"
        for w in ("openai", "anthropic", "gemini")
    ]
    deps += [
        f'  - {{name: tiny@openai, provider: openai, model: sim-tiny, api_base: "{bases["openai"]}", '
        "context_window: 8000, price: {input: 0.05, output: 0.1}}",
        f"  - {{name: embed@openai, provider: openai, kind: embedding, model: sim-embed, "
        f'api_base: "{bases["openai"]}", price: {{input: 0.02, output: 0}}}}',
        f"  - {{name: embed@gemini, provider: gemini, kind: embedding, model: sim-embed, "
        f'api_base: "{sim_url}", price: {{input: 0.02, output: 0}}}}',
        f'  - {{name: resp@openai, provider: openai, model: sim-small, api_base: "{bases["openai"]}", '
        "price: {input: 0.1, output: 0.4}, options: {responses_api: true}}",
        # The non-chat endpoints (server/endpoints.py): audio, images, rerank.
        f"  - {{name: whisper@openai, provider: openai, kind: transcription, model: sim-whisper, "
        f'api_base: "{bases["openai"]}", price: {{audio_minute: 0.006}}}}',
        f'  - {{name: tts@openai, provider: openai, kind: speech, model: sim-tts, api_base: "{bases["openai"]}", '
        "price: {characters: 15.0}}",
        f'  - {{name: image@openai, provider: openai, kind: image, model: sim-image, api_base: "{bases["openai"]}", '
        "price: {image: 0.04}}",
        f"  - {{name: rerank@openai, provider: openai, kind: rerank, model: sim-rerank, "
        f'api_base: "{bases["openai"]}", price: {{search_unit: 2.0}}}}',
    ]
    return (
        "\n".join(
            [
                "deployments:",
                *deps,
                "models:",
                "  via-openai: {candidates: [small@openai], fallbacks: [via-anthropic]}",
                "  via-anthropic: {candidates: [small@anthropic]}",
                "  via-gemini: {candidates: [small@gemini]}",
                "  mixed: {candidates: [small@openai, small@anthropic, small@gemini, tiny@openai], strategy: weighted}",
                "  cheapest: {candidates: [small@openai, tiny@openai], strategy: cost, "
                "constraints: {max_cost_per_request: 1.0}}",
                "  hedged: {candidates: [small@openai, small@gemini], hedge_after_ms: 1}",
                "  embed: {candidates: [embed@openai]}",
                "  embed-gemini: {candidates: [embed@gemini]}",
                "  via-responses: {candidates: [resp@openai], fallbacks: [via-anthropic]}",
                "  whisper: {candidates: [whisper@openai]}",
                "  tts: {candidates: [tts@openai]}",
                "  image: {candidates: [image@openai]}",
                "  rerank: {candidates: [rerank@openai]}",
                "  guarded: {candidates: [small@openai, small@anthropic, small@gemini], "
                "guardrails: [fuzz-out, fuzz-in, {check: empty, action: retry}]}",
                *GUARDRAIL_SETS,
                "server: {max_body_bytes: 2000000}",
                # The response cache on: deterministic and opted-in requests take the lookup/store/replay path.
                "cache: {enabled: true, ttl_s: 30, max_entries: 500, max_bytes: 4000000}",
                f"access: {{master_key: {MASTER}, refresh_s: 0}}",
                f'spend: {{store: "{store}", flush_interval_s: 0.05}}',
                extra,
            ]
        )
        + "\n"
    )


@dataclass
class Stack:
    """The simulator and the gateway as processes, the keys the probes use, and counters over the run."""

    workdir: Path
    extra_config: str = ""
    sim_port: int = 0
    sim: subprocess.Popen[bytes] | None = None
    gateway: GatewayProcess | None = None
    keys: dict[str, str] = field(default_factory=dict)
    #: The dashboard: cookie headers per probe `session` value, and the live session's CSRF token.
    sessions: dict[str, str] = field(default_factory=dict)
    csrf: str = ""
    fresh_id: str = "key_none"
    #: The x-request-id of the last answered request: `{request_id}` in a probe's body becomes it (feedback).
    request_id: str = "req_none"
    sent: int = 0
    seconds: float = 0.0
    routes_run: set[str] = field(default_factory=set)
    baseline_rss: int = 0
    started: float = 0.0
    _conn: Connection | None = None

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def start(self) -> Stack:
        self.sim_port = free_port()
        fleet = self.workdir / "fleet.yaml"
        fleet.write_text(SIM_FLEET)
        with open(self.workdir / "sim.log", "ab") as log:
            self.sim = subprocess.Popen(
                [*CLI, "sim", "--port", str(self.sim_port), "--fleet", str(fleet)], stdout=log, stderr=log
            )
        try:
            wait_http(f"http://127.0.0.1:{self.sim_port}/_sim/health", self.sim)
            config = self.workdir / "gateway.yaml"
            store = os.environ.get("MODELYARD_FUZZ_STORE") or str(self.workdir / "spend.db")  # or a postgresql DSN
            config.write_text(gateway_yaml(f"http://127.0.0.1:{self.sim_port}", store, self.extra_config))
            self.gateway = GatewayProcess(config, log=self.workdir / "gateway.log").start()
            self._conn = Connection("127.0.0.1", self.gateway.port)
            self.keys = {"master": MASTER, "bad": "sk-not-a-key-" + "0" * 24}
            self.keys["restricted"] = self._new_key(
                {"name": "restricted", "models": list(RESTRICTED_MODELS), "budget_usd": 1000, "rpm": 1_000_000}
            )
            self.keys["fresh"] = self.keys["restricted"]
            # The fuzzer may DELETE /admin/keys/{fresh_id}: never the restricted key the later tests use (it
            # was revoked whenever no fuzzed key had been made yet, e.g. when most bodies are refused).
            self.fresh_id = "key_none"
            self.sessions["stale"], _ = self.log_in()
            self._send_raw("POST", "/ui/logout", [("cookie", self.sessions["stale"].encode())], b"")
            self.sessions["session"], self.csrf = self.log_in()
        except BaseException:
            self.stop()
            raise
        return self

    def _new_key(self, body: dict[str, Any]) -> str:
        answer = self.send(
            Probe(
                "POST", "/admin/keys", json.dumps(body).encode(), (("content-type", b"application/json"),), key="master"
            )
        )
        assert answer.status == 200, answer.body
        return str(json.loads(answer.body)["key"])

    def credential(self, probe: Probe) -> str | None:
        return self.keys.get(probe.key)

    def log_in(self) -> tuple[str, str]:
        """A dashboard session for the master key, as a browser gets one: (its cookie header, its CSRF token)."""
        form = self._send_raw("GET", "/ui/login", [], b"")
        login_cookie = next(c for c in form.cookies if c.startswith("modelyard_ui_login="))
        token = re.search(rb'name="login_token" value="([^"]+)"', form.body)
        assert token is not None, form.body[:500]
        body = urlencode({"key": MASTER, "login_token": token.group(1).decode(), "next": "/ui/keys"}).encode()
        headers = [("cookie", login_cookie.encode()), ("content-type", b"application/x-www-form-urlencoded")]
        answer = self._send_raw("POST", "/ui/login", headers, body)
        assert answer.status == 303, answer.body[:500]
        cookie = next(c for c in answer.cookies if c.startswith("modelyard_ui="))
        page = self._send_raw("GET", "/ui/keys", [("cookie", cookie.encode())], b"")
        csrf = re.search(rb'name="csrf" value="([^"]+)"', page.body)
        assert csrf is not None, page.body[:500]
        return cookie, csrf.group(1).decode()

    def _send_raw(self, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes) -> Answer:
        assert self._conn is not None
        return self._conn.request(method, path, headers, body)

    def send(self, probe: Probe) -> Answer:
        assert self._conn is not None
        path = probe.path.replace("{fresh_id}", self.fresh_id)
        headers = probe._all_headers(self.credential(probe))
        body = probe.body.replace(b"{request_id}", self.request_id.encode())
        cookie = self.sessions.get(probe.session)
        if cookie is not None:
            headers.append(("cookie", cookie.encode()))
            body = body.replace(b"%7Bcsrf%7D", self.csrf.encode()).replace(b"{csrf}", self.csrf.encode())
        started = time.perf_counter()
        answer = self._conn.request(probe.method, path, headers, body)
        self.seconds += time.perf_counter() - started
        self.sent += 1
        if probe.method == "POST" and path == "/admin/keys" and answer.status == 200:
            self._remember_fresh_key(answer)
        if answer.status == 200 and "x-request-id" in answer.headers:
            self.request_id = answer.headers["x-request-id"]
        return answer

    def _remember_fresh_key(self, answer: Answer) -> None:
        """A key the fuzzer made (with fuzzed limits) becomes the `fresh` credential of later probes."""
        try:
            made = json.loads(answer.body)
            self.keys["fresh"], self.fresh_id = str(made["key"]), str(made["id"])
        except (ValueError, KeyError, TypeError):
            pass

    def get(self, path: str, key: str = "none") -> Answer:
        return self.send(Probe("GET", path, key=key))

    def rss_bytes(self) -> int:
        assert self.gateway is not None
        return self.gateway.rss_bytes()

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        try:
            if self.gateway is not None:
                self.gateway.stop()
        finally:
            if self.sim is not None and self.sim.poll() is None:
                self.sim.terminate()
                try:
                    self.sim.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.sim.kill()
                    self.sim.wait(timeout=10)


# --------------------------------------------------------------------------- running a route


@dataclass(frozen=True)
class Route:
    """One endpoint under fuzz: a name, a strategy of probes, how many examples a CI run draws."""

    name: str
    probes: st.SearchStrategy[Probe]
    examples: int


#: With MODELYARD_FUZZ_COLLECT=<file>, problems are appended to the file (one JSON line each) instead of failing
#: the test at the first one: a way to list every distinct finding of a long run.
COLLECT = os.environ.get("MODELYARD_FUZZ_COLLECT")


def fuzz(stack: Stack, route: Route) -> tuple[int, float]:
    """Hypothesis over `route.probes` against the running stack; returns (requests sent, seconds)."""
    sent, started = stack.sent, time.monotonic()

    @settings(
        max_examples=max(1, int(route.examples * SCALE)),
        deadline=None,
        derandomize=SEED is None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
    )
    @given(route.probes)
    def run(probe: Probe) -> None:
        answer = stack.send(probe)
        found = problems(probe, answer)
        if found and COLLECT:
            _collect(stack, route, probe, answer, found)
        elif found:
            raise AssertionError(describe(stack, probe, answer, found))

    (seed(int(SEED))(run) if SEED is not None else run)()
    stack.routes_run.add(route.name)
    return stack.sent - sent, time.monotonic() - started


def report(request: Any, line: str) -> None:
    """A line in pytest's terminal output even when output is captured (the counts CI should show)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


def describe(stack: Stack, probe: Probe, answer: Answer, found: list[str]) -> str:
    return (
        f"{'; '.join(found)}\n{probe.repro(stack.url, stack.credential(probe))}\n"
        f"-> {answer.status} {answer.body[:2000]!r}"
    )


def _collect(stack: Stack, route: Route, probe: Probe, answer: Answer, found: list[str]) -> None:
    assert COLLECT is not None
    with open(COLLECT, "a") as out:
        out.write(
            json.dumps({"route": route.name, "problems": found, "report": describe(stack, probe, answer, found)}) + "\n"
        )


# --------------------------------------------------------------------------- hostile values


class Raw(str):
    """A JSON token written verbatim: what `json.dumps` will not produce (NaN, 1e400, 10k-deep nesting)."""

    __slots__ = ()

    def __repr__(self) -> str:  # short, for hypothesis's reports
        text = str(self)
        return f"Raw({text!r})" if len(text) <= 60 else f"Raw({text[:20]!r}...{len(text)} chars)"


def nested(depth: int, kind: str = "list") -> Raw:
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


#: Number tokens a JSON parser may turn into NaN, ±inf, 0, an arbitrary-precision int or an exception.
RAW_NUMBERS = tuple(
    Raw(t)
    for t in (
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1e-400",
        "1" + "0" * 400,
        "-" + "9" * 400,
        "-0",
        "0e0",
        "1.7976931348623157e308",
        "9007199254740993",
        "18446744073709551616",
        "-9223372036854775809",
        "1E+2",
        "0.0000000000000000000001",
    )
)
NUMBERS = (0, -1, 1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, 1e30, 1e300, -1e300, 1e-300, 0.5, -0.0)


def deep() -> st.SearchStrategy[Raw]:
    """Nesting 64 to 200,000 levels deep (built when drawn, so the strategy's repr stays short)."""
    return st.builds(nested, st.sampled_from((64, 1_000, 20_000, 200_000)), st.sampled_from(("list", "dict")))


ODD_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "a\udfffb",
    "\u202e\u2066evil",
    "\ufeff",
    "\U0001f4a9" * 3,
    "\uff46\uff55\uff4c\uff4c",
    "\r\n\r\nHTTP/1.1 200 OK",
    "'; DROP TABLE spend; --",
    "%s%n%x",
    "${HOME}",
    "{{7*7}}",
    "../../etc/passwd",
    "\\u0000",
    "null",
    "NaN",
    "-1",
    "1e400",
)


def huge_strings() -> st.SearchStrategy[str]:
    """Long values: a 20 kB model name, a 300 kB prompt, one just past the gateway's 2 MB body limit."""
    return st.sampled_from((20_000, 300_000, 2_100_000)).map(lambda n: "x" * n)


def odd_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Any unicode (control characters, NUL, RTL marks, astral planes, lone surrogates) or a known-odd string."""
    any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=max_size)
    longer = st.sampled_from((("x", 300), ("\u00e9", 2000), ("\U0001f4a9", 1000))).map(lambda c: c[0] * c[1])
    return st.one_of(st.sampled_from(ODD_STRINGS), any_text, longer)


def hostile() -> st.SearchStrategy[Any]:
    """One value of a wrong, extreme or malformed kind, for any field."""
    return st.one_of(
        st.sampled_from(RAW_NUMBERS),
        st.sampled_from(NUMBERS),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
        odd_text(),
        deep(),
        st.just([]),
        st.just({}),
        st.lists(st.sampled_from(NUMBERS), max_size=3),
        st.dictionaries(odd_text(8), st.sampled_from(RAW_NUMBERS + ODD_STRINGS), max_size=2),
        huge_strings().filter(lambda s: len(s) < 1_000_000),
    )


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Arbitrary JSON trees whose leaves are hostile values."""
    leaves = st.one_of(st.sampled_from(RAW_NUMBERS + NUMBERS + ODD_STRINGS), st.booleans(), st.none(), odd_text(8))
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text(8), inner, max_size=4),
        max_leaves=max_leaves,
    )


def sometimes(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], percent_bad: int) -> st.SearchStrategy[Any]:
    """`good`, or `bad` in about `percent_bad`% of the draws."""
    return st.integers(0, 99).flatmap(lambda i: bad if i < percent_bad else good)


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) inside a JSON tree, for a mutation to replace or delete."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield value, key
            yield from _slots(inner)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield value, i
            yield from _slots(inner)


@st.composite
def mutated(draw: Callable[..., Any], base: st.SearchStrategy[Any], max_mutations: int = 2) -> Any:
    """A well-formed request with up to `max_mutations` values anywhere inside it replaced by hostile ones,
    removed, or wrapped in a list (a third of the draws are left as they are)."""
    value = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(0, max_mutations))):
        slots = list(_slots(value))
        if not slots:
            break
        container, key = slots[draw(st.integers(0, len(slots) - 1))]
        action = draw(st.sampled_from(("replace", "replace", "delete", "wrap")))
        if action == "delete":
            del container[key]
        elif action == "wrap":
            container[key] = [container[key]]
        else:
            container[key] = draw(hostile())
    return value


def encode(value: Any, ascii_only: bool = True) -> bytes:
    """JSON text for a tree that may hold `Raw` tokens; lone surrogates go out as `\\ud800` escapes, or, with
    `ascii_only=False`, as the invalid UTF-8 bytes a careless client writes."""
    return _encode(value, ascii_only).encode("utf-8", "surrogatepass")


def _encode(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_encode(str(k), ascii_only)}:{_encode(v, ascii_only)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def json_bodies(requests: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Encoded request bodies, mostly ASCII-escaped, sometimes raw UTF-8 (with invalid bytes for surrogates)."""
    return st.builds(encode, requests, sometimes(st.just(True), st.just(False), 20))


GARBAGE = (
    b"",
    b"{",
    b"}",
    b"[",
    b"null",
    b"true",
    b"0",
    b'""',
    b"[1,2,3]",
    b"\xff\xfe\x00\x00",
    b"\x00" * 64,
    b'{"model": "via-openai"',
    b'{"a":1}{"b":2}',
    b"\xef\xbb\xbf{}",
    b"{'model': 'x'}",
    b"model=x&messages=y",
    b'{"model":"via-openai","messages":[{"role":"user","content":"hi"}]}garbage',
    b"\n" * 100,
)


def garbage_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(GARBAGE), st.binary(max_size=200), deep().map(lambda raw: str(raw).encode()))


# --------------------------------------------------------------------------- headers and keys


def _header_values(values: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(values).map(lambda v: v.encode())


#: Headers the gateway reads (routing hints, timeouts) plus content negotiation, with hostile values.
MODELYARD_HEADERS: dict[str, st.SearchStrategy[bytes]] = {
    "x-modelyard-timeout-ms": _header_values(
        (
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "-1",
            "0",
            "0.0001",
            "1",
            "50",
            "5000",
            "1e30",
            "1e309",
            "abc",
            "",
            "9" * 400,
            "0x10",
            " 100 ",
            "100ms",
            "1_000",
            "-0",
        )
    ),
    "x-modelyard-strategy": _header_values(
        (
            "priority",
            "weighted",
            "least-latency",
            "least-busy",
            "cost",
            "learned",
            "rules",
            "bogus",
            "",
            " ",
            "PRIORITY",
            "x" * 300,
            "cost,priority",
            "../priority",
        )
    ),
    "x-modelyard-tags": _header_values(("a,b", "", ",,,", "t" * 5000, "a," * 2000, "\xe9,\xfc", "x=1;y=2")),
    "x-modelyard-task": _header_values(("coding", "", "x" * 3000, "reasoning", "None")),
    "x-modelyard-priority": _header_values(
        ("interactive", "batch", "default", " batch ", "BATCH", "", "x" * 5000, "interactive,batch", "\xe9", "0", "-1")
    ),
    "x-modelyard-explain": _header_values(("1", "true", "0", "yes", "")),
    "content-type": _header_values(
        (
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            "",
        )
    ),
    "accept": _header_values(("text/event-stream", "*/*", "application/xml", "")),
    "anthropic-version": _header_values(("2023-06-01", "1999-01-01", "", "x" * 500)),
    "anthropic-beta": _header_values(("prompt-caching-2024-07-31", "a,b,c", "")),
    "x-request-id": _header_values(("abc", "", "r" * 2000)),
    "accept-encoding": _header_values(("gzip", "br", "identity;q=0")),
    "x-sim-fault": _header_values(("server_error", "unavailable", "hang")),  # must never reach the simulator
    "cache-control": _header_values(
        ("no-cache", "no-store", "NO-STORE", "max-age=0", "no-cache, no-store", 'no-cache="x"', "\x00", "x" * 3000)
    ),
}


def headers(names: tuple[str, ...] = tuple(MODELYARD_HEADERS)) -> st.SearchStrategy[tuple[tuple[str, bytes], ...]]:
    """A subset of `names` with hostile values; content-type: application/json unless one was drawn."""
    chosen = st.fixed_dictionaries({}, optional={n: MODELYARD_HEADERS[n] for n in names})
    return chosen.map(lambda h: tuple({"content-type": b"application/json", **h}.items()))


def keys(
    weights: tuple[tuple[str, int], ...] = (("master", 4), ("restricted", 3), ("fresh", 1), ("bad", 1), ("none", 1)),
) -> st.SearchStrategy[str]:
    """Which credential a probe carries, weighted towards keys that get past authentication."""
    return st.sampled_from(tuple(name for name, weight in weights for _ in range(weight)))


def key_headers() -> st.SearchStrategy[str]:
    return sometimes(st.sampled_from(("bearer", "x-api-key")), st.sampled_from(tuple(KEY_HEADERS)), 10)
