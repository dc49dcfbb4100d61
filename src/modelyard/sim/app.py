"""The simulator's ASGI app: the three providers' endpoints on one port, faults, latency and controls.

Endpoints (every model of the fleet is served on every wire format):

* OpenAI: ``POST /v1/chat/completions`` and ``POST /v1/responses`` (plain and SSE), ``POST /v1/embeddings``,
  ``GET /v1/models[/{id}]``
* Anthropic: ``POST /v1/messages`` (plain and SSE), ``POST /v1/messages/count_tokens``; ``GET /v1/models``
  answers in Anthropic's shape when the request carries an ``anthropic-version`` header
* Gemini: ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent[?alt=sse]``,
  ``:embedContent``, ``:batchEmbedContents``, ``GET /v1beta/models[/{model}]`` (``/v1/`` works too)
* Control: ``GET /_sim/health``, ``GET /_sim/stats``, ``GET /_sim/fleet``, ``POST /_sim/reset``,
  ``GET /_sim/requests/{model}`` (the last bodies and non-secret headers that model received),
  ``PATCH /_sim/models/{name}`` (JSON body merged into the model, e.g. ``{"faults": {"rate_limit": 0.3}}``
  or ``{"rate_limit": {"rpm": 600, "burst_s": 1}}``: per-model token buckets, sim/rate_limits.py)

Per-request overrides: ``x-sim-fault`` (``rate_limit``, ``server_error``, ``unavailable``, ``hang``,
``reset``, ``malformed``, ``cut_stream`` or ``none``) and ``x-sim-ttft-ms: <ms>``. Every random draw
comes from an RNG seeded by (seed, model, that model's request counter, request body), so a seed replays
the same answers and the same faults.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import msgspec

from modelyard.sim import asgi, batch_api, cloud_azure, cloud_bedrock, cloud_vertex, media, media_rerank
from modelyard.sim.answer_keys import AnswerKeys
from modelyard.sim.asgi import Receive, Scope, Send
from modelyard.sim.behaviour import cached_tokens as draw_cached
from modelyard.sim.behaviour import count_tokens, generate
from modelyard.sim.embedding import embed
from modelyard.sim.faults import OVERRIDES, Fault, draw_fault, fault_edges, generation_seconds, ttft_seconds
from modelyard.sim.fleet import Fleet, FleetError, SimModel, default_fleet, patch_model
from modelyard.sim.prompt_cache import PromptCache, segments_from_body
from modelyard.sim.rate_limits import RateLimits
from modelyard.sim.received import RequestLog
from modelyard.sim.shapes import Answer, BadRequest, ErrKind, Event, Wire
from modelyard.sim.stats import ModelStats, Stats
from modelyard.sim.wire_anthropic import AnthropicWire, secret_for_seed
from modelyard.sim.wire_gemini import GeminiWire
from modelyard.sim.wire_openai import OpenAIWire
from modelyard.sim.wire_responses import ResponsesWire

_CLOUD_AND_MEDIA = (cloud_azure, cloud_bedrock, cloud_vertex, media, media_rerank, batch_api)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_STATUS_FAULTS: dict[Fault, ErrKind] = {
    Fault.RATE_LIMIT: "rate_limit",
    Fault.SERVER_ERROR: "server_error",
    Fault.UNAVAILABLE: "unavailable",
}
_GEMINI_CHAT = {"generateContent": False, "streamGenerateContent": True}
_GEMINI_EMBED = {"embedContent": False, "batchEmbedContents": True}
_MAX_DIMENSIONS = 8192


@dataclass(slots=True)
class _Headers:
    """The few request headers the simulator reads, found in one pass."""

    key: str | None = None
    fault: str | None = None
    ttft_ms: str | None = None
    anthropic: bool = False


@dataclass(slots=True)
class _Call:
    """A request admitted to a model: its RNG, drawn fault and time to first token."""

    wire: Wire
    model: SimModel
    rng: random.Random
    fault: Fault | None
    ttft: float
    stats: ModelStats


def create_app(fleet: Fleet | None = None, seed: int | None = None) -> SimApp:
    """The simulator as an ASGI app; `seed` defaults to the fleet's own, the fleet to the built-in one."""
    fleet = fleet if fleet is not None else default_fleet()
    return SimApp(fleet, fleet.seed if seed is None else seed)


class SimApp:
    """A plain ASGI callable with a lifespan handler. All state lives on the instance."""

    def __init__(self, fleet: Fleet, seed: int = 0) -> None:
        self.fleet = fleet
        self.seed = seed
        self.models: dict[str, SimModel] = {m.name: m for m in fleet.models}
        self._edges = {m.name: fault_edges(m.faults) for m in fleet.models}
        self.stats = Stats(list(self.models))
        self.counters: dict[str, int] = {}
        #: Each model's `rate_limit` buckets (sim/rate_limits.py), on `time.monotonic`.
        self.rate_limits = RateLimits()
        self.openai, self.anthropic, self.gemini = OpenAIWire(), AnthropicWire(secret_for_seed(seed)), GeminiWire()
        self.responses = ResponsesWire()  # keeps what it answered, for `previous_response_id`
        #: The last bodies each model received (`GET /_sim/requests/{model}`), for upstream-side assertions.
        self.received = RequestLog()
        self._release = asyncio.Event()
        self._created = int(time.time())
        self.prompt_cache = PromptCache()
        #: What a cloud module keeps between requests (issued tokens, service accounts), by module: each
        #: simulator has its own.
        self.cloud_state: dict[str, Any] = {}
        #: Acceptance suites whose cases the models answer right or wrong by their accuracy (answer_keys.py).
        self.answer_keys = AnswerKeys()
        for path in fleet.answer_keys:
            self.answer_keys.add_file(path)

    # ------------------------------------------------------------------ control (also used in-process)

    def release(self) -> None:
        """End every hanging request and stream now (on shutdown). Call on the app's event loop."""
        self._release.set()

    def reset(self) -> None:
        """Zero the stats and the per-model request counters (so a seed replays from the start); every rate
        limit bucket starts full again."""
        self.stats = Stats(list(self.models))
        self.counters = {}
        self.rate_limits.clear()
        self.prompt_cache.clear()
        self.received.clear()

    def add_answer_keys(self, path: str | os.PathLike[str]) -> int:
        """Answer the cases of this acceptance suite file too (again: its keys replaced); the number of cases
        read. FleetError when the file is unreadable or not a suite."""
        return self.answer_keys.add_file(path)

    def patch(self, name: str, changes: Any) -> SimModel:
        """Merge `changes` into model `name`; KeyError if unknown, FleetError if invalid. A change of its
        `rate_limit` starts its buckets full under the new limit."""
        updated = patch_model(self.models[name], changes)
        self.models[name] = updated
        self._edges[name] = fault_edges(updated.faults)
        if "rate_limit" in changes:
            self.rate_limits.forget(name)
        return updated

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                asgi.quiet_server_aborts()
                self._release = asyncio.Event()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.release()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "POST":
            if path == "/v1/chat/completions":
                return await self._chat(self.openai, scope, receive, send, None, None)
            if path == "/v1/messages":
                return await self._chat(self.anthropic, scope, receive, send, None, None)
            if path == "/v1/responses":
                return await self._chat(self.responses, scope, receive, send, None, None)
            if path == "/v1/messages/count_tokens":
                return await self._count_tokens(scope, receive, send)
            if path == "/v1/embeddings":
                return await self._embed(self.openai, scope, receive, send, None, False)
            if ":" in path and path.startswith(("/v1beta/models/", "/v1/models/")):
                return await self._gemini(scope, receive, send)
        if path.startswith("/v1/responses/") and method in ("GET", "DELETE"):
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            status, stored = self.responses.stored(method, path[len("/v1/responses/") :], query)
            return await asgi.respond(send, status, stored)
        if path.startswith("/_sim/"):
            return await self._control(method, path, receive, send)
        for module in _CLOUD_AND_MEDIA:  # Azure, Bedrock, Vertex and their token endpoints; audio, images, rerank
            if module.claims(method, path):
                await module.handle(self, scope, receive, send)
                return
        if method == "GET" and path.startswith(("/v1beta/models", "/v1/models")):
            return await self._models(scope, path, send)
        status, body = self.openai.error("not_found", f"Unknown request URL: {method} {path}.")
        await asgi.respond(send, status, body)

    # ------------------------------------------------------------------ chat

    async def _chat(
        self,
        wire: Wire,
        scope: Scope,
        receive: Receive,
        send: Send,
        path_model: str | None,
        stream: bool | None,
        sse: bool = True,
        *,
        checked: bool = False,
    ) -> None:
        """A chat call on `wire`; `checked`: the caller verified the credential itself (a Vertex bearer token,
        a SigV4 signature), so the fleet's `api_key` is not asked for."""
        headers = _read_headers(scope)
        if not checked and not self._authorised(headers, scope):
            return await self._reject(send, wire, "auth")
        body = await asgi.read_body(receive)
        try:
            ask = wire.parse_chat(body, path_model)
        except BadRequest as exc:
            return await self._reject(send, wire, "bad_request", detail=str(exc))
        if stream is not None:
            ask.stream, ask.sse = stream, sse
        self.received.record(ask.model, scope["path"], scope["headers"], body)
        model = self.models.get(ask.model)
        if model is None:
            return await self._reject(send, wire, "not_found", model=ask.model)
        if model.kind != "chat":
            detail = f"`{model.name}` is an embedding model"
            return await self._reject(send, wire, "bad_request", detail=detail)
        if ask.prompt_tokens > model.context_window:
            return await self._reject(
                send, wire, "context_length", prompt=ask.prompt_tokens, limit=model.context_window
            )
        reserved = ask.prompt_tokens + (ask.max_tokens or model.most_output_tokens()) * max(1, ask.n)
        call = await self._admit(wire, model, headers, body, receive, send, reserved)
        if call is None:
            return
        rng = call.rng
        keys = self.answer_keys
        replies = [generate(ask, model, rng, keys) for _ in range(ask.n)]
        answer = Answer(
            ask,
            replies,
            f"{rng.getrandbits(96):024x}",
            int(time.time()),
            ask.prompt_tokens,
            draw_cached(ask.prompt_tokens, model, rng),
        )
        prefix = ask.prefix if ask.prefix is not None else segments_from_body(body)
        cache = self.prompt_cache.use(model.name, prefix, ask.prompt_tokens)
        if cache.read or cache.written:  # else the model's random `cache_hit_rate` draw stands
            answer.cached_tokens = cache.read or answer.cached_tokens
            answer.cache_write_tokens = min(cache.written, ask.prompt_tokens - answer.cached_tokens)
        call.ttft += generation_seconds(answer.reasoning_tokens, model)
        if ask.stream:
            await self._send_stream(call, answer, send)
        else:
            await self._send_completion(call, answer, send)

    async def _send_completion(self, call: _Call, answer: Answer, send: Send) -> None:
        body = call.wire.completion(answer)
        if call.fault in (Fault.RESET, Fault.CUT_STREAM):
            await asgi.pause(call.ttft)
            await asgi.abort_midway(send, body)
        visible = answer.completion_tokens - answer.reasoning_tokens
        await asgi.pause(call.ttft + generation_seconds(visible, call.model))
        if call.fault is Fault.MALFORMED:
            body = body[: len(body) // 2]
        else:
            self._succeeded(call.stats, answer.prompt_tokens, answer.completion_tokens)
        await asgi.respond(send, 200, body)

    async def _send_stream(self, call: _Call, answer: Answer, send: Send) -> None:
        plan = call.wire.stream(answer)
        events, rng, fault = plan.events, call.rng, call.fault
        complete = fault not in (Fault.CUT_STREAM, Fault.RESET)
        if fault is Fault.MALFORMED and events:
            at = min(rng.randrange(max(1, plan.cut_limit)), len(events) - 1)
            broken = events[at]
            events = [
                *events[:at],
                Event(broken.data[: len(broken.data) // 2], broken.name, broken.tokens),
                *events[at + 1 :],
            ]
        elif fault is Fault.RESET:
            events = []  # the connection drops as the answer begins: headers, then nothing
        elif not complete:
            events = events[: rng.randint(min(1, plan.cut_limit), plan.cut_limit)]
        elif fault is None:
            self._succeeded(call.stats, answer.prompt_tokens, answer.completion_tokens)
        frames = call.wire.frame(events, answer.ask, complete)
        tps = call.model.tokens_per_second
        offsets = _offsets(events, call.ttft, tps) if frames else []
        # A wire with its own framing (Bedrock's binary event stream) names its content type.
        content_type = getattr(call.wire, "stream_content_type", None) or (
            asgi.SSE_TYPE if answer.ask.sse else asgi.JSON_TYPE
        )
        await asgi.send_stream(
            send, frames, offsets, self._release, content_type=content_type, abort=fault is Fault.RESET
        )

    async def _count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Anthropic's `POST /v1/messages/count_tokens`: the prompt's tokens, no generation, no fault."""
        wire = self.anthropic
        if not self._authorised(_read_headers(scope), scope):
            return await self._reject(send, wire, "auth")
        body = await asgi.read_body(receive)
        try:
            ask = wire.parse_count(body)
        except BadRequest as exc:
            return await self._reject(send, wire, "bad_request", detail=str(exc))
        self.received.record(ask.model, scope["path"], scope["headers"], body)
        if ask.model not in self.models:
            return await self._reject(send, wire, "not_found", model=ask.model)
        await asgi.respond(send, 200, wire.count_tokens_answer(ask))

    # ------------------------------------------------------------------ embeddings

    async def _embed(
        self,
        wire: Wire,
        scope: Scope,
        receive: Receive,
        send: Send,
        path_model: str | None,
        batch: bool,
        *,
        checked: bool = False,
    ) -> None:
        """An embeddings call on `wire`; `checked` as for `_chat` (the caller verified the credential)."""
        headers = _read_headers(scope)
        if not checked and not self._authorised(headers, scope):
            return await self._reject(send, wire, "auth")
        body = await asgi.read_body(receive)
        try:
            ask = wire.parse_embed(body, path_model, batch)
        except BadRequest as exc:
            return await self._reject(send, wire, "bad_request", detail=str(exc))
        self.received.record(ask.model, scope["path"], scope["headers"], body)
        model = self.models.get(ask.model)
        if model is None:
            return await self._reject(send, wire, "not_found", model=ask.model)
        dims = ask.dimensions or model.dimensions
        if not 1 <= dims <= _MAX_DIMENSIONS:
            detail = f"dimensions must be 1..{_MAX_DIMENSIONS}"
            return await self._reject(send, wire, "bad_request", detail=detail)
        prompt = sum(max(1, count_tokens(t)) for t in ask.texts)
        call = await self._admit(wire, model, headers, body, receive, send, prompt)
        if call is None:
            return
        payload = wire.embeddings(ask, [embed(t, dims) for t in ask.texts], prompt, batch)
        await asgi.pause(call.ttft)
        if call.fault in (Fault.RESET, Fault.CUT_STREAM):
            await asgi.abort_midway(send, payload)
        if call.fault is Fault.MALFORMED:
            payload = payload[: len(payload) // 2]
        else:
            self._succeeded(call.stats, prompt, 0)
        await asgi.respond(send, 200, payload)

    # ------------------------------------------------------------------ shared steps

    async def _admit(
        self,
        wire: Wire,
        model: SimModel,
        headers: _Headers,
        body: bytes,
        receive: Receive,
        send: Send,
        tokens: int,
    ) -> _Call | None:
        """Count the request, put it to the model's rate limit (`tokens` against TPM), draw its fault and
        latency; answer rate limits, status faults and hangs here (→ None)."""
        forced = headers.fault
        if forced is not None and forced not in OVERRIDES:
            detail = f"x-sim-fault must be one of {sorted(OVERRIDES)}"
            await self._reject(send, wire, "bad_request", detail=detail)
            return None
        stats = self.stats.model(model.name)
        now = time.monotonic()
        wait = self.rate_limits.admit(model.name, model.rate_limit, now, tokens)
        if wait > 0.0:  # refused before the model sees it: no RNG draw, so admitted requests replay alike
            stats.requests += 1
            stats.by_wire[wire.name] = stats.by_wire.get(wire.name, 0) + 1  # clouds and rerankers too
            stats.rate_limited += 1
            seconds = max(1, math.ceil(wait))
            await self._reject(
                send,
                wire,
                "rate_limit",
                count=False,
                model=model.name,
                retry=str(seconds),
                retry_after=seconds,
                retry_after_ms=max(1, math.ceil(wait * 1000.0)),
            )
            return None
        stats.admitted(now)
        rng = self._rng(model.name, body)
        u = rng.random()
        ttft = ttft_seconds(model, rng)
        if headers.ttft_ms is not None:
            try:
                ttft = max(0.0, float(headers.ttft_ms)) / 1000.0
            except ValueError:
                await self._reject(send, wire, "bad_request", detail="x-sim-ttft-ms must be a number")
                return None
        if forced is None:
            fault = draw_fault(self._edges[model.name], u)
        else:
            fault = None if forced == "none" else Fault(forced)
        stats.requests += 1
        stats.by_wire[wire.name] = stats.by_wire.get(wire.name, 0) + 1  # clouds and rerankers too
        if fault is not None:
            stats.faults[fault.value] += 1
        kind = _STATUS_FAULTS.get(fault) if fault is not None else None
        if kind is not None:
            retry = model.faults.retry_after_s
            await self._reject(send, wire, kind, count=False, model=model.name, retry=f"{retry:g}", retry_after=retry)
            return None
        if fault is Fault.HANG:
            if not await asgi.wait_for_disconnect(receive, model.faults.hang_s, self._release):
                await asgi.abort_midway(send, b"")
            return None
        return _Call(wire, model, rng, fault, ttft, stats)

    def _rng(self, model: str, body: bytes) -> random.Random:
        count = self.counters.get(model, 0)
        self.counters[model] = count + 1
        digest = hashlib.blake2b(b"%d|%s|%d|" % (self.seed, model.encode(), count), digest_size=16)
        digest.update(body)
        return random.Random(int.from_bytes(digest.digest(), "little"))

    def _authorised(self, headers: _Headers, scope: Scope) -> bool:
        required = self.fleet.api_key
        if required is None:
            return True
        key = headers.key
        if key is None and scope.get("query_string"):
            key = (parse_qs(scope["query_string"].decode()).get("key") or [None])[0]
        return key == required

    @staticmethod
    def _succeeded(stats: ModelStats, tokens_in: int, tokens_out: int) -> None:
        stats.successes += 1
        stats.tokens_in += tokens_in
        stats.tokens_out += tokens_out

    async def _reject(
        self,
        send: Send,
        wire: Wire,
        kind: ErrKind,
        *,
        count: bool = True,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        **facts: Any,
    ) -> None:
        if count:
            self.stats.rejected += 1
        facts.setdefault("detail", "")
        facts.setdefault("model", "")
        message = wire.messages[kind].format(**facts)
        status, body = wire.error(kind, message, retry_after)
        headers = None
        if retry_after is not None:
            headers = [
                (b"retry-after", f"{retry_after:g}".encode()),
                (b"retry-after-ms", str(retry_after_ms or int(retry_after * 1000)).encode()),
            ]
        await asgi.respond(send, status, body, headers)

    # ------------------------------------------------------------------ gemini routing

    async def _gemini(self, scope: Scope, receive: Receive, send: Send) -> None:
        tail = scope["path"].split("/models/", 1)[1]
        name, _, method = tail.rpartition(":")
        if method in _GEMINI_CHAT:
            query = parse_qs(scope.get("query_string", b"").decode())
            sse = (query.get("alt") or [""])[0] == "sse"
            return await self._chat(self.gemini, scope, receive, send, name, _GEMINI_CHAT[method], sse)
        if method in _GEMINI_EMBED:
            return await self._embed(self.gemini, scope, receive, send, name, _GEMINI_EMBED[method])
        status, body = self.gemini.error("not_found", f"Method not found: {method}")
        await asgi.respond(send, status, body)

    # ------------------------------------------------------------------ model lists and control

    async def _models(self, scope: Scope, path: str, send: Send) -> None:
        if path.startswith("/v1beta/") or _is_gemini(scope):
            return await self._gemini_models(path, send)
        if path == "/v1/models" or path.startswith("/v1/models/"):
            return await self._list_models(scope, path, send)
        status, body = self.openai.error("not_found", f"Unknown request URL: GET {path}.")
        await asgi.respond(send, status, body)

    async def _list_models(self, scope: Scope, path: str, send: Send) -> None:
        anthropic = _read_headers(scope).anthropic
        wanted = path[len("/v1/models/") :] if path.startswith("/v1/models/") else None
        entries = [
            _anthropic_model(m) if anthropic else self._openai_model(m)
            for m in self.models.values()
            if wanted is None or m.name == wanted
        ]
        if wanted is not None:
            if not entries:
                wire: Wire = self.anthropic if anthropic else self.openai
                return await self._reject(send, wire, "not_found", model=wanted)
            return await asgi.respond(send, 200, _encode(entries[0]))
        if anthropic:
            first, last = (entries[0]["id"], entries[-1]["id"]) if entries else (None, None)
            page = {"data": entries, "has_more": False, "first_id": first, "last_id": last}
            return await asgi.respond(send, 200, _encode(page))
        await asgi.respond(send, 200, _encode({"object": "list", "data": entries}))

    def _openai_model(self, model: SimModel) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": self._created, "owned_by": "modelyard-sim"}

    async def _gemini_models(self, path: str, send: Send) -> None:
        tail = path.split("/models", 1)[1].lstrip("/")
        entries = [_gemini_model(m) for m in self.models.values() if not tail or m.name == tail]
        if tail:
            if not entries:
                return await self._reject(send, self.gemini, "not_found", model=tail)
            return await asgi.respond(send, 200, _encode(entries[0]))
        await asgi.respond(send, 200, _encode({"models": entries}))

    async def _control(self, method: str, path: str, receive: Receive, send: Send) -> None:
        if method == "GET" and path == "/_sim/health":
            return await asgi.respond(send, 200, b'{"status":"ok"}')
        if method == "GET" and path == "/_sim/stats":
            return await asgi.respond(send, 200, _encode(self.stats.snapshot()))
        if method == "GET" and path == "/_sim/fleet":
            fleet = {"seed": self.seed, "models": list(self.models.values())}
            return await asgi.respond(send, 200, _encode(fleet))
        if method == "POST" and path == "/_sim/reset":
            self.reset()
            return await asgi.respond(send, 200, b'{"status":"reset"}')
        if method == "GET" and path.startswith("/_sim/requests/"):
            name = path[len("/_sim/requests/") :]
            return await asgi.respond(send, 200, _encode({"model": name, "requests": self.received.snapshot(name)}))
        if method == "PATCH" and path.startswith("/_sim/models/"):
            return await self._control_patch(path[len("/_sim/models/") :], receive, send)
        await asgi.respond(send, 404, b'{"error":"unknown control endpoint"}')

    async def _control_patch(self, name: str, receive: Receive, send: Send) -> None:
        body = await asgi.read_body(receive)
        if name not in self.models:
            return await asgi.respond(send, 404, _encode({"error": f"unknown model `{name}`"}))
        try:
            updated = self.patch(name, _decode(body))
        except (msgspec.DecodeError, FleetError) as exc:
            return await asgi.respond(send, 400, _encode({"error": str(exc)}))
        await asgi.respond(send, 200, _encode(updated))


def _offsets(events: list[Event], ttft: float, tps: float) -> list[float]:
    """When each event is due: the first after `ttft`, the next ones as their tokens are 'generated'."""
    if tps <= 0:
        return [ttft] * len(events)
    out = []
    produced = 0.0
    for event in events:
        out.append(ttft + produced / tps)
        produced += event.tokens
    return out


def _read_headers(scope: Scope) -> _Headers:
    found = _Headers()
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            found.key = text[7:] if text[:7].lower() == "bearer " else text
        elif name in (b"x-api-key", b"x-goog-api-key", b"api-key"):  # api-key: Azure OpenAI
            found.key = value.decode("latin-1")
        elif name == b"x-sim-fault":
            found.fault = value.decode("latin-1").strip().lower()
        elif name == b"x-sim-ttft-ms":
            found.ttft_ms = value.decode("latin-1")
        elif name == b"anthropic-version":
            found.anthropic = True
    return found


def _is_gemini(scope: Scope) -> bool:
    return any(name == b"x-goog-api-key" for name, _ in scope["headers"])


def _anthropic_model(model: SimModel) -> dict[str, Any]:
    created = "2025-01-01T00:00:00Z"
    return {"type": "model", "id": model.name, "display_name": model.name, "created_at": created}


def _gemini_model(model: SimModel) -> dict[str, Any]:
    methods = (
        ["embedContent", "batchEmbedContents"]
        if model.kind == "embedding"
        else ["generateContent", "streamGenerateContent"]
    )
    return {
        "name": f"models/{model.name}",
        "version": "001",
        "displayName": model.name,
        "description": "A modelyard simulator model.",
        "inputTokenLimit": model.context_window,
        "outputTokenLimit": 8192,
        "supportedGenerationMethods": methods,
    }
