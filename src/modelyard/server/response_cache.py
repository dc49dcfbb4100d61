"""The exact-match response cache (docs/caching.md): an answer reused for the same request from the same key.

One object per process, kept across reloads: it holds the backend (state/response_cache_store.py) and the
counters; every decision about a request (enabled, TTL, the bound on one answer) is read from the config of
the request's own gateway, at request time.

The key is a SHA-256 of: the key namespace (the API key's id, `-` without one), the ingress wire, the canonical
request (sorted-key JSON of the client's body less `IGNORED_FIELDS` and the `modelyard.cache` switch) and the
request headers that can change the answer (`KEYED_HEADERS`, the Anthropic headers let through upstream). No
client text is ever part of a key. The value is the non-streamed answer as the ingress sends it, its usage and
deployment; a streamed request is answered from it by replay (server/codecs/replay.py) and a streamed answer
is stored by reading its SSE back into that body.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.config.model import Config
from modelyard.schema.chat import Usage
from modelyard.server.codecs.replay import (
    chat_from_sse,
    chat_hit,
    chat_replay,
    message_from_sse,
    message_hit,
    message_replay,
    response_hit,
    response_replay,
)
from modelyard.state.response_cache_store import CacheStats, CacheStore, MemoryCacheStore, RedisCacheStore

if TYPE_CHECKING:
    from modelyard.providers.base import Completion
    from modelyard.server.app import Gateway
    from modelyard.server.codecs.base import Inbound
    from modelyard.server.context import RequestContext
    from modelyard.server.guards import RequestGuards
    from modelyard.server.http import Request

log = logging.getLogger("modelyard.cache")

CHAT = "openai-chat"
MESSAGES = "anthropic-messages"
RESPONSES = "openai-responses"
#: Ingresses served from the cache. The Responses API only when translated (a pass-through answer's id and
#: conversation live upstream), and a streamed Responses answer is not stored (only replayed).
WIRES = frozenset({CHAT, MESSAGES, RESPONSES})

#: Top-level request fields that do not change the answer, left out of the key: how it is delivered (`stream`,
#: `stream_options`), who asks (`user`, `safety_identifier`), the provider's own storage and caching hints
#: (`store`, `prompt_cache_key`) and its processing tier (`service_tier`). `metadata` stays in: the gateway
#: reads a task from it, which can change the deployment.
IGNORED_FIELDS = frozenset(
    {"stream", "stream_options", "user", "safety_identifier", "store", "prompt_cache_key", "service_tier"}
)
#: Request headers that steer routing (so which model answers), part of the key.
KEYED_HEADERS = (b"x-modelyard-strategy", b"x-modelyard-task", b"x-modelyard-tags")

#: The response header: `hit` (served from the cache), `miss` (cacheable, not served from it; stored once
#: answered unless `no-store`); no header when the request is not cacheable.
HEADER = b"x-modelyard-cache"
HIT = (HEADER, b"hit")
MISS = (HEADER, b"miss")
#: A streamed answer is read back for storing only while its SSE stays within this many times the bound on
#: one stored answer (SSE framing repeats ids and names in every chunk).
SSE_OVERHEAD = 4

_canonical = msgspec.json.Encoder(order="sorted").encode
_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.decode


class CachedAnswer(msgspec.Struct, array_like=True):
    """One stored answer: the ingress's JSON body, the usage it cost when it was made, who made it."""

    body: bytes
    usage: Usage
    deployment: str


_encode_entry = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(CachedAnswer).decode


class Ticket:
    """One cacheable request: its key, and what the request allows (lookup, store) under which bounds."""

    __slots__ = ("key", "lookup", "max_bytes", "store", "ttl_s", "wire")

    def __init__(self, key: str, wire: str, ttl_s: float, max_bytes: int, *, lookup: bool, store: bool) -> None:
        self.key = key
        self.wire = wire
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.lookup = lookup
        self.store = store


class ResponseCache:
    """Answers reused for the same request from the same key; one per process, kept across reloads."""

    def __init__(self, store: CacheStore, *, recording_limit: int = 64 * 1024 * 1024) -> None:
        self.store = store
        #: hits, misses, stores, bytes, evictions, redis errors (for /metrics).
        self.stats: CacheStats = store.stats
        #: Bytes of streamed answers being kept for storing, over all streams at once, and their bound: many
        #: long streams at a time cannot hold more than this (beyond it, a stream is simply not stored).
        self.recording = 0
        self.recording_limit = recording_limit

    def reserve_recording(self, size: int) -> bool:
        if self.recording + size > self.recording_limit:
            return False
        self.recording += size
        return True

    def release_recording(self, size: int) -> None:
        self.recording = max(0, self.recording - size)

    @property
    def unavailable(self) -> bool:
        """True while the backend's Redis is unreachable (the `/metrics` gauge); always False in memory."""
        return bool(getattr(self.store, "unavailable", False))

    async def start(self) -> None:
        """Start the backend's background work (the Redis store's writer and key listener)."""
        await self.store.start()

    async def close(self) -> None:
        """Release the backend."""
        await self.store.close()

    # ------------------------------------------------------------------ the request path

    def ticket(
        self,
        gw: Gateway,
        wire: str,
        inbound: Inbound,
        request: Request,
        ctx: RequestContext,
        guards: RequestGuards | None,
    ) -> Ticket | None:
        """The request's ticket, or None when it is not cacheable: the model's cache is off, the request is
        neither deterministic (temperature 0, one choice) nor opted in, it opted out, it has output guardrails
        (a cached answer was never checked against them), or `Cache-Control` says both no-cache and no-store."""
        if wire not in WIRES or (wire == RESPONSES and inbound.native is not None):
            return None
        req = inbound.req
        options = req.modelyard
        choice = options.cache if options is not None else None
        if choice is False:
            return None
        config = gw.config
        enabled, ttl_s = model_settings(config, gw.router.table.resolve(req.model))
        if not enabled:
            return None
        if choice is not True and not (req.temperature == 0 and (req.n is None or req.n == 1)):
            return None
        if guards is not None and guards.has_output:
            return None
        lookup = store = True
        control = request.header(b"cache-control")
        if control:
            directives = {part.strip().lower().partition("=")[0].strip() for part in control.split(",")}
            # `no-cache` (with or without a field list) and `max-age=0` both mean: do not answer from a cache.
            lookup = "no-cache" not in directives and not _max_age_zero(control)
            store = "no-store" not in directives
            if not (lookup or store):
                return None
        if wire == RESPONSES and req.stream:
            store = False  # its events are not read back (docs/caching.md); a later JSON request stores
        key = request_key(ctx.key_id, wire, inbound, request)
        return Ticket(key, wire, ttl_s, config.cache.max_entry_bytes, lookup=lookup, store=store)

    async def lookup(self, ticket: Ticket) -> CachedAnswer | None:
        """The stored answer (counted as a hit or a miss); a value that does not decode is a miss."""
        value = await self.store.get(ticket.key)
        entry: CachedAnswer | None = None
        if value is not None:
            try:
                entry = _decode_entry(value)
            except msgspec.DecodeError:
                log.warning("an unreadable response-cache entry was ignored")
        if entry is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return entry

    def missed(self) -> None:
        """A hit that could not be served (its deployment is gone from the config): counted as a miss."""
        self.stats.hits -= 1
        self.stats.misses += 1

    async def keep(
        self, ticket: Ticket, body: bytes, completion: Completion, deployment: str, *, explained: bool
    ) -> bool:
        """Store a non-streamed answer: `body` as the ingress sent it (an explanation taken out), or for the
        Responses API the canonical completion. Local work only: the Redis store writes in the background."""
        usage = completion.usage
        if ticket.wire == RESPONSES:
            return completion.native is None and await self._put(ticket, _json(completion.body), usage, deployment)
        if explained and ticket.wire == CHAT:
            answer = _decode_json(body)
            if isinstance(answer, dict):
                answer.pop("modelyard", None)
                body = _json(answer)
        return await self._put(ticket, body, usage, deployment)

    async def keep_stream(self, ticket: Ticket, sse: bytes, usage: Usage, deployment: str) -> bool:
        """Store a streamed answer, read back from the SSE the client got; False when it does not read back
        as one whole answer (an error event, several choices, logprobs, an event this reader does not know)."""
        try:
            answer = chat_from_sse(sse, usage) if ticket.wire == CHAT else message_from_sse(sse)
        except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError):
            answer = None
        if answer is None:
            return False
        return await self._put(ticket, _json(answer), usage, deployment)

    async def _put(self, ticket: Ticket, body: bytes, usage: Usage, deployment: str) -> bool:
        value = _encode_entry(CachedAnswer(body, usage, deployment))
        if len(value) > ticket.max_bytes:
            self.stats.too_large += 1
            return False
        kept = await self.store.put(ticket.key, value, ticket.ttl_s)
        if kept:
            self.stats.stores += 1
        return kept


def _max_age_zero(control: str) -> bool:
    for part in control.split(","):
        name, _, value = part.strip().lower().partition("=")
        if name.strip() == "max-age" and value.strip().strip('"') in ("0", "-0"):
            return True
    return False


def model_settings(config: Config, model: str) -> tuple[bool, float]:
    """(enabled, ttl_s) for a configured model name: its own `cache:` over the top-level one."""
    top = config.cache
    group = config.models.get(model)
    own = group.cache if group is not None else None
    if own is None:
        return top.enabled, top.ttl_s
    enabled = own.enabled if own.enabled is not None else top.enabled
    return enabled, own.ttl_s if own.ttl_s is not None else top.ttl_s


def request_key(key_id: str | None, wire: str, inbound: Inbound, request: Request) -> str:
    """The hex SHA-256 of everything that can change the answer (module docstring)."""
    native = inbound.native
    body: Any = native.body if native is not None else inbound.raw
    kept = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    options = kept.get("modelyard")
    if isinstance(options, dict) and "cache" in options:
        rest = {k: v for k, v in options.items() if k != "cache"}
        if rest:
            kept["modelyard"] = rest
        else:
            del kept["modelyard"]
    digest = hashlib.sha256()
    digest.update((key_id or "-").encode())
    digest.update(b"\0" + wire.encode() + (b"\0n\0" if native is not None else b"\0r\0"))
    digest.update(_canonical(kept))
    for name in KEYED_HEADERS:
        value = request.header(name)
        if value is not None:
            digest.update(b"\0" + name + b"=" + value.encode())
    if native is not None and native.headers:
        digest.update(b"\0" + _canonical(native.headers))
    return digest.hexdigest()


def usable_body(wire: str, entry: CachedAnswer) -> dict[str, Any] | None:
    """The stored answer, decoded, when it has the shape its wire's replay needs; None otherwise (not written
    by this version, a bug, a hand edit in Redis: served as a miss, never a 500 or an empty 200)."""
    try:
        answer = _decode_json(entry.body)
    except msgspec.DecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    if wire == MESSAGES:
        content = answer.get("content")
        return answer if isinstance(content, list) and all(isinstance(b, dict) for b in content) else None
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            return None
    return answer


def answer_body(wire: str, answer: dict[str, Any], entry: CachedAnswer, inbound: Inbound) -> bytes:
    """A JSON hit in the ingress's wire (`answer`: the entry's body, checked by `usable_body`)."""
    if wire == RESPONSES:
        return _json(response_hit(inbound.state, answer, entry.usage))
    return _json(chat_hit(answer) if wire == CHAT else message_hit(answer))


def replay_stream(wire: str, answer: dict[str, Any], entry: CachedAnswer, inbound: Inbound) -> bytes:
    """A streamed hit: the whole event stream of the answer, in the ingress's wire."""
    if wire == CHAT:
        return chat_replay(chat_hit(answer), entry.usage, wants_usage=inbound.req.wants_usage_in_stream)
    if wire == RESPONSES:
        return response_replay(inbound.state, answer, entry.usage)
    return message_replay(message_hit(answer))


def build_response_cache(config: Config) -> ResponseCache | None:
    """The cache the config asks for, or None when neither the top-level `cache:` nor any model enables it
    (a reload that enables it later needs a restart: the backend is made once per process)."""
    settings = config.cache
    if not settings.enabled and not any(
        group.cache is not None and group.cache.enabled for group in config.models.values()
    ):
        return None
    state = config.state
    backend = settings.backend or ("redis" if state.redis_url else "memory")
    if backend == "redis":
        if state.redis_url is None:
            log.warning("cache.backend is redis but state.redis_url is not set: the response cache is in memory")
        else:
            store = RedisCacheStore(
                state.redis_url,
                prefix=state.prefix,
                timeout_s=state.redis_timeout_s,
                max_entries=settings.max_entries,
                max_bytes=settings.max_bytes,
            )
            return ResponseCache(store, recording_limit=settings.max_bytes)
    return ResponseCache(MemoryCacheStore(settings.max_entries, settings.max_bytes), recording_limit=settings.max_bytes)
