"""The executor: walks a plan, attempt by attempt, under timeouts, retries, failover and hedging.

It owns everything the planner may not touch: the clock, I/O (through the transport and adapters) and
the state updates (health, RPM/TPM windows). Each attempt leaves an `AttemptRecord`; the records of a
request add up to its history, its attempt count and its cost (a hedged loser included).

Streaming: failover happens before the first byte reaches the client, because an attempt only counts as
answered once its first chunk is in hand. A failure after that ends the client's stream with an error
event (the server's job), never with a silent clean end.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from modelyard.accounting.prices import cost_usd, estimate_cost_usd
from modelyard.accounting.tokens import count_text
from modelyard.config.model import Deployment, Price, Timeouts
from modelyard.providers.base import (
    Adapter,
    Completion,
    CredentialRefresh,
    Endpoints,
    HttpCall,
    NativePassthrough,
    StreamFraming,
    StreamTranslator,
    discover,
)
from modelyard.providers.transport import EventStream, Transport
from modelyard.routing.admission import Grant
from modelyard.routing.attempts import AttemptRecord, Next, RetryPolicy
from modelyard.routing.candidates import limit_reason
from modelyard.routing.features import RequestFeatures
from modelyard.routing.health import HealthTracker
from modelyard.routing.limits import DeploymentLimits
from modelyard.routing.plan import OUTSIDE_SCOPE, Plan, no_deployment_error
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, Usage
from modelyard.schema.endpoints import EndpointRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

log = logging.getLogger("modelyard.executor")

Replan = Callable[[str], Plan]
#: A stream chunk: a dict in the canonical shape, or canonical JSON passed through undecoded.
Chunk = dict[str, Any] | msgspec.Raw
#: Vets an attempt's whole answer (the gateway's output guardrails: routing never imports them). None accepts
#: it (the vet may rewrite the body: a redaction); an error fails the attempt: `GUARDRAIL` fails over to the
#: next candidate, `GUARDRAIL_BLOCKED` stops. The attempt's cost counts either way.
VetAnswer = Callable[[Completion], ProviderError | None]
#: The same for a streamed answer read whole before the client sees a byte (`open_stream(vet_chunks=...)`).
VetChunks = Callable[[list["Chunk"]], ProviderError | None]
_T = TypeVar("_T")
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class NativeBody:
    """The client's own request, kept for native pass-through (server/codecs decide when it applies).

    `format` names the wire (`anthropic-messages`, `openai-responses`); an attempt at a deployment whose
    adapter accepts that format sends `body` as the client wrote it (only `model` rewritten by the adapter)
    with `headers` (the client headers the gateway lets through); any other attempt takes the canonical path.
    """

    format: str
    body: dict[str, Any]
    headers: dict[str, str]
    #: The bytes the client sent (the adapter splices `model` into them: the upstream gets the client's bytes).
    raw: bytes = b""


@dataclass(slots=True)
class Success:
    """A non-streaming answer and how it was obtained."""

    completion: Completion
    deployment: Deployment
    records: list[AttemptRecord]
    latency_ms: float
    #: Time spent in the admission queue before the first attempt (x-modelyard-queue-ms).
    queue_ms: float = 0.0

    @property
    def cost_usd(self) -> float:
        return records_cost(self.records)


@dataclass(slots=True)
class _Opened:
    """A stream whose first chunks are in hand (the point of no failover)."""

    stream: EventStream
    events: AsyncIterator[Any]
    translator: StreamTranslator
    first: list[Chunk]
    record: AttemptRecord
    started: float
    ttft_ms: float
    #: The native format its events are in (re-framed upstream events), or None (canonical chunks).
    native: str | None = None


async def _authorized(credentials: CredentialRefresh, dep: Deployment, call: HttpCall, bound_s: float) -> HttpCall:
    """`call` with its credential (a refreshed token, a signature), within the attempt's `total` bound (a token
    endpoint that hangs must not hold the request past it); failing to get one in time is this attempt's AUTH
    error, so the walk fails over, and the message never carries the credential chain's own text beyond its
    type (it may name files and roles)."""
    try:
        async with asyncio.timeout(bound_s):
            return await credentials.authorize(dep, call)
    except TimeoutError:
        log.warning("credentials for %s took longer than %.1f s", dep.name, bound_s)
        raise ProviderError(
            ErrorKind.AUTH, f"no credentials for {dep.name} within {bound_s:g} s", untranslatable=True
        ) from None
    except (ProviderError, asyncio.CancelledError):
        raise
    except Exception as exc:  # a credential chain's own error (botocore, google-auth, a token endpoint)
        log.warning("credentials for %s failed: %s", dep.name, type(exc).__name__)
        raise ProviderError(
            ErrorKind.AUTH, f"could not get credentials for {dep.name}: {type(exc).__name__}", untranslatable=True
        ) from None


@dataclass(slots=True)
class _Request:
    req: ChatRequest | EmbeddingRequest | EndpointRequest
    raw: dict[str, Any]
    features: RequestFeatures
    stream: bool
    timeout_s: float | None
    native: NativeBody | None = None
    records: list[AttemptRecord] = field(default_factory=list)
    vet: VetAnswer | None = None
    #: Capacity the admission queue took for this request (its first attempt uses it).
    grant: Grant | None = None
    #: Set: the stream is read whole before the attempt counts as answered, then vetted (whole-answer checks).
    vet_chunks: VetChunks | None = None


class _Walk:
    """Deployments in plan order, then the fallbacks' plans; each deployment at most once.

    `admit` is asked about each deployment as the walk reaches it (RPM/TPM/concurrency headroom, checked
    lazily: see `candidates.filter_candidates`); a refusal is recorded as a skip in the plan.
    """

    def __init__(
        self,
        plan: Plan,
        replan: Replan,
        admit: Callable[[Deployment], str | None],
        granted: Deployment | None = None,
    ) -> None:
        self._plan = plan
        self._queue = list(plan.order)
        #: A deployment the admission queue took capacity at for this request: walked first, not re-checked.
        self._granted = granted
        if granted is not None:
            self._queue = [granted, *(dep for dep in self._queue if dep.name != granted.name)]
        self._fallbacks = list(plan.fallbacks)
        self._replan = replan
        self._admit = admit
        self._seen: set[str] = set()
        self._min_window = 0
        self._allowed = plan.ctx.features.allowed

    def require_window_above(self, tokens: int) -> None:
        self._min_window = max(self._min_window, tokens)

    def _fits(self, dep: Deployment) -> bool:
        if dep.name in self._seen:
            return False
        if dep is self._granted:
            return True
        if self._allowed is not None and dep.name not in self._allowed:
            self._plan.ctx.skip(dep, OUTSIDE_SCOPE)  # a fallback's plan, or a hedge, never escapes
            self._seen.add(dep.name)
            return False
        if self._min_window and dep.context_window is not None and dep.context_window <= self._min_window:
            return False
        reason = self._admit(dep)
        if reason is not None:
            self._plan.ctx.skip(dep, "{}", reason)
            self._seen.add(dep.name)
            return False
        return True

    def peek(self) -> Deployment | None:
        while True:
            while self._queue:
                if self._fits(self._queue[0]):
                    return self._queue[0]
                self._queue.pop(0)
            if not self._fallbacks:
                return None
            name = self._fallbacks.pop(0)
            try:
                self._queue = list(self._replan(name).order)
            except GatewayError:
                log.warning("fallback %s cannot be planned", name)

    def next(self) -> Deployment | None:
        dep = self.peek()
        if dep is not None:
            self._queue.pop(0)
            self._seen.add(dep.name)
        return dep


class _HedgeSpent(Exception):
    """Every leg of a hedge failed, and the retry policy said to go on after each: the walk goes on, without
    another hedge. (A failure the policy stops on ends the race with that error itself.)"""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


class Executor:
    def __init__(
        self,
        *,
        transport: Transport,
        adapters: dict[str, Adapter],
        health: HealthTracker,
        limits: DeploymentLimits,
        prices: dict[str, Price | None],
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.adapters = adapters
        self.health = health
        self.limits = limits
        self.prices = prices
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random()
        self.clock = clock
        capabilities = {name: discover(adapter) for name, adapter in adapters.items()}
        #: The adapters that forward some wire formats as they are, discovered once (never per request).
        self._native: dict[str, NativePassthrough] = {
            name: cap.native for name, cap in capabilities.items() if cap.native is not None
        }
        #: Adapters whose credentials are short-lived or whose calls are signed (awaited on every attempt).
        self._credentials: dict[str, CredentialRefresh] = {
            name: cap.credentials for name, cap in capabilities.items() if cap.credentials is not None
        }
        #: Adapters whose streams are not server-sent events (Bedrock's binary event stream).
        self._framing: dict[str, StreamFraming] = {
            name: cap.framing for name, cap in capabilities.items() if cap.framing is not None
        }
        #: Adapters serving the non-chat endpoints (audio, images, rerank).
        self._endpoints: dict[str, Endpoints] = {
            name: cap.endpoints for name, cap in capabilities.items() if cap.endpoints is not None
        }

    # ------------------------------------------------------------------ public

    async def complete(
        self,
        plan: Plan,
        replan: Replan,
        req: ChatRequest,
        raw: dict[str, Any],
        features: RequestFeatures,
        *,
        timeout_s: float | None = None,
        native: NativeBody | None = None,
        vet: VetAnswer | None = None,
        grant: Grant | None = None,
    ) -> Success:
        """A whole answer; `vet` (when given) judges each attempt's answer (see `VetAnswer`); `grant`: capacity
        the admission queue took (the caller gives it back if no attempt used it)."""
        request = _Request(req, raw, features, False, timeout_s, native, vet=vet, grant=grant)
        return await self._whole(plan, replan, request)

    async def embed(
        self,
        plan: Plan,
        replan: Replan,
        req: EmbeddingRequest,
        raw: dict[str, Any],
        features: RequestFeatures,
        *,
        timeout_s: float | None = None,
    ) -> Success:
        """Embeddings: the same walk, retry policy, RPM/TPM windows and error attribution as chat (no hedge)."""
        return await self._whole(plan, replan, _Request(req, raw, features, False, timeout_s))

    async def call_endpoint(
        self,
        plan: Plan,
        replan: Replan,
        req: EndpointRequest,
        features: RequestFeatures,
        *,
        timeout_s: float | None = None,
    ) -> Success:
        """A non-chat endpoint (audio, images, rerank): the same walk, retry policy, RPM/TPM windows and error
        attribution as chat, never hedged (an image or a transcription is paid for each time)."""
        return await self._whole(plan, replan, _Request(req, req.fields, features, False, timeout_s))

    async def _whole(self, plan: Plan, replan: Replan, request: _Request) -> Success:
        """A non-streaming answer (chat or embeddings) through the one walk, timed."""
        started = self.clock()
        completion, dep = await self._run(plan, replan, request)
        assert isinstance(completion, Completion)
        return Success(completion, dep, request.records, (self.clock() - started) * 1000)

    async def open_stream(
        self,
        plan: Plan,
        replan: Replan,
        req: ChatRequest,
        raw: dict[str, Any],
        features: RequestFeatures,
        *,
        timeout_s: float | None = None,
        native: NativeBody | None = None,
        vet_chunks: VetChunks | None = None,
        grant: Grant | None = None,
    ) -> StreamResult:
        """A stream whose first chunks are in hand; with `vet_chunks`, the whole answer is buffered and vetted
        before the attempt counts (so a failed check can still fail over invisibly)."""
        request = _Request(req, raw, features, True, timeout_s, native, vet_chunks=vet_chunks, grant=grant)
        started = self.clock()
        opened, dep = await self._run(plan, replan, request)
        assert isinstance(opened, _Opened)
        return StreamResult(self, dep, request, opened, started)

    # ------------------------------------------------------------------ the walk

    async def _run(self, plan: Plan, replan: Replan, request: _Request) -> tuple[Completion | _Opened, Deployment]:
        tokens = request.features.prompt_tokens + request.features.output_estimate()
        grant = request.grant
        walk = _Walk(plan, replan, lambda d: self._headroom(d, tokens), grant.deployment if grant else None)
        dep = walk.next()
        if dep is None:
            raise no_deployment_error(plan)
        policy = self._policy_for(plan)
        hedge_s = plan.hedge_after_ms / 1000.0 if plan.hedge_after_ms else None
        if not isinstance(request.req, ChatRequest):
            hedge_s = None  # an embedding is cheap and quick, an image or a transcription paid twice: never two
        retries_used = 0
        last_error: ProviderError | None = None
        while dep is not None and len(request.records) < policy.max_attempts:
            try:
                if hedge_s is not None and walk.peek() is not None:
                    # One hedge per request, spent only when an attempt is actually slow.
                    return await self._race(dep, walk, hedge_s, request, policy)
                return await self._attempt(dep, request, hedge=False), dep
            except _HedgeSpent as spent:
                # Each leg's failure was put to the policy in the race (none said stop): fail over.
                hedge_s = None
                error = spent.error
                error.records = request.records
                dep = walk.next()
                retries_used = 0
                last_error = error
                continue
            except ProviderError as error:
                last_error = error
                error.records = request.records
                step = _step(policy, error, retries_used)
                if step is Next.STOP:
                    raise
                if step is Next.RETRY:
                    await asyncio.sleep(policy.backoff(error, retries_used, self.rng))
                    retries_used += 1
                    continue
                if error.kind is ErrorKind.CONTEXT_LENGTH:
                    walk.require_window_above(dep.context_window or request.features.prompt_tokens)
                dep = walk.next()
                retries_used = 0
        if last_error is None:
            raise no_deployment_error(plan)
        raise last_error

    def _headroom(self, dep: Deployment, tokens: int) -> str | None:
        if not dep.limits.configured:
            return None
        return limit_reason(dep, self.health, self.limits, self.clock(), tokens)

    def _policy_for(self, plan: Plan) -> RetryPolicy:
        options = plan.ctx.options
        policy = self.policy
        if plan.retries is None and not options.overrides_retries:
            return policy
        return RetryPolicy(
            retries=plan.retries if plan.retries is not None else policy.retries,
            base_s=_or(options.backoff_base_s, policy.base_s),
            max_backoff_s=_or(options.max_backoff_s, policy.max_backoff_s),
            retry_after_cap_s=_or(options.retry_after_cap_s, policy.retry_after_cap_s),
            max_attempts=_or(options.max_attempts, policy.max_attempts),
            failover_on_content_filter=_or(options.failover_on_content_filter, policy.failover_on_content_filter),
        )

    async def _race(
        self, first: Deployment, walk: _Walk, delay: float, request: _Request, policy: RetryPolicy
    ) -> tuple[Completion | _Opened, Deployment]:
        """Hedging: if `first` has not answered after `delay`, start the next candidate too; first wins.

        While the hedge is on, a leg that fails is put to the plan's retry policy like any attempt: a stop
        (a bad request, a content filter the model does not fail over on) ends the race with that error;
        otherwise the leg is replaced by the next candidate at once (a retry is a failover here: the race
        moves on), so a fast failure of the hedge does not leave the request waiting on the slow leg alone.
        Legs count against the plan's `max_attempts` like any attempt.
        """
        first_task: asyncio.Future[Completion | _Opened] = asyncio.ensure_future(
            self._attempt(first, request, hedge=False)
        )
        owners: dict[asyncio.Future[Completion | _Opened], Deployment] = {first_task: first}
        pending: set[asyncio.Future[Completion | _Opened]] = {first_task}
        errors: list[ProviderError] = []

        def launch() -> None:
            if len(request.records) >= policy.max_attempts:
                return
            dep = walk.next()
            if dep is not None:
                leg: asyncio.Future[Completion | _Opened] = asyncio.ensure_future(
                    self._attempt(dep, request, hedge=True)
                )
                owners[leg] = dep
                pending.add(leg)

        # Every leg is cancelled (and awaited) on the way out, whatever ends the race: a cancelled request,
        # an unexpected exception in one leg, or a winner; an answer that is not returned is discarded.
        try:
            done, _ = await asyncio.wait({first_task}, timeout=delay)
            if done:
                pending.clear()
                return first_task.result(), first  # answered (or failed) before the hedge was due
            launch()
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                winners = [t for t in done if t.exception() is None]
                unexpected = [
                    exc for t in done if (exc := t.exception()) is not None and not isinstance(exc, ProviderError)
                ]
                if unexpected:
                    for extra in winners:
                        self._discard(extra.result())
                    raise unexpected[0]
                if winners:
                    for extra in winners[1:]:
                        self._discard(extra.result())
                    return winners[0].result(), owners[winners[0]]
                for leg in done:
                    error = leg.exception()
                    assert isinstance(error, ProviderError)
                    errors.append(error)
                    _leg_failed(policy, walk, request, owners[leg], error)  # raises on a stop
                    launch()
        finally:
            for leg in pending:
                leg.cancel()
            if pending:
                results = await asyncio.gather(*pending, return_exceptions=True)
                for answer in results:  # a leg that answered just as it was cancelled
                    if isinstance(answer, Completion | _Opened):
                        self._discard(answer)
        # Every leg failed: let the walk continue with the remaining candidates.
        raise _HedgeSpent(errors[-1])

    def _discard(self, answer: Completion | _Opened) -> None:
        if isinstance(answer, _Opened):
            answer.stream.close()
            answer.record.outcome = "cancelled"
            self.health.on_cancel(answer.record.deployment)

    # ------------------------------------------------------------------ one attempt

    def _timeouts(self, dep: Deployment, request: _Request) -> Timeouts:
        if request.timeout_s is None:
            return dep.timeouts
        t = request.timeout_s  # a client's x-modelyard-timeout-ms: it may only shorten the operator's bounds
        base = dep.timeouts
        if t >= base.total:
            return base
        return Timeouts(
            connect=min(base.connect, t), first_token=min(base.first_token, t), response=min(base.response, t), total=t
        )

    async def _attempt(self, dep: Deployment, request: _Request, *, hedge: bool) -> Completion | _Opened:
        """One try at one deployment. Its in-flight slot and RPM/TPM window record are given back whatever
        ends it: a verdict for a ProviderError, no verdict for a cancellation or any other exception (a
        bug of ours, or of an adapter, must never take a deployment's capacity with it)."""
        adapter = self.adapters[dep.provider]
        features = request.features
        native = request.native
        passthrough: NativePassthrough | None = None
        if native is not None:
            passthrough = self._native.get(dep.provider)
            if passthrough is not None and native.format not in passthrough.native_formats:
                passthrough = None
        started = self.clock()
        record = AttemptRecord(dep.name, dep.provider, "pending", 0.0, hedge=hedge, started=started)
        request.records.append(record)
        estimate = features.prompt_tokens + features.output_estimate()
        limited = dep.limits.rate_limited
        settled = False
        recorded = self._claim(dep, request, started, estimate)
        try:
            if limited and not recorded:
                self.limits.take(dep.name, dep.limits, started, estimate)
                recorded = True
            call = self._call(dep, adapter, request, passthrough)
            timeouts = self._timeouts(dep, request)
            credentials = self._credentials.get(dep.provider)
            if credentials is not None:  # awaited only for adapters that have it: no coroutine per attempt else
                call = await _authorized(credentials, dep, call, timeouts.total)
            if request.stream:
                opened = await self._open(dep, adapter, call, timeouts, request, record, started, passthrough)
                settled = True  # the slot now belongs to the stream (StreamResult._finish gives it back)
                return opened
            body, headers = await self.transport.send(call, timeouts, adapter)
            completion, usage = self._parse(dep, adapter, request, passthrough, body, headers)
            cost = cost_usd(usage, self.prices.get(dep.name))
            settled = True  # settled just below, by on_success
        except asyncio.CancelledError:
            settled = True
            self._cancelled(dep, record, started, features)
            raise
        except ProviderError as error:
            settled = True
            if error.kind is ErrorKind.AUTH and dep.provider in self._credentials:
                self._credentials[dep.provider].credentials_rejected(dep)  # the next attempt gets a fresh one
            if error.untranslatable and recorded:
                self._unrecord(dep, started, estimate)  # nothing was sent
            base = dep.timeouts
            operator_s = min(base.total, base.first_token if request.stream else base.response)
            self._failed(
                dep,
                record,
                started,
                error,
                client_bound=_client_bound(request, error, self.clock() - started, operator_s),
            )
            raise
        finally:
            if not settled:
                self._abandoned(dep, record, started, estimate if recorded else None)
        now = self.clock()
        total_ms = (now - started) * 1000
        record.outcome = "ok"
        record.latency_ms = total_ms
        record.cost_usd = cost
        self.health.on_success(dep.name, now, total_ms, total_ms)
        if limited:
            self.limits.correct_tokens(dep.name, usage.total - estimate)
        _vet(request.vet, completion, dep, record)
        return completion

    def _call(
        self, dep: Deployment, adapter: Adapter, request: _Request, passthrough: NativePassthrough | None
    ) -> HttpCall:
        """The attempt's HTTP request: a request this wire cannot express is an untranslatable BAD_REQUEST
        (nothing was sent: the walk fails over)."""
        req = request.req
        native = request.native
        try:
            if passthrough is not None:
                assert native is not None
                call = passthrough.native_call(
                    dep, native.format, native.body, request.stream, native.headers, raw=native.raw
                )
            elif isinstance(req, EmbeddingRequest):
                call = adapter.embeddings_call(dep, req, request.raw)
            elif isinstance(req, EndpointRequest):
                call = self._endpoint_adapter(dep, req).endpoint_call(dep, req)
            else:
                call = adapter.chat_call(dep, req, request.raw, request.stream)
        except GatewayError as exc:
            raise ProviderError(ErrorKind.BAD_REQUEST, exc.message, untranslatable=True) from None
        return call

    def _parse(
        self,
        dep: Deployment,
        adapter: Adapter,
        request: _Request,
        passthrough: NativePassthrough | None,
        body: bytes,
        headers: Mapping[str, str],
    ) -> tuple[Completion, Usage]:
        """A whole 2xx answer in the canonical shape, with the usage it is priced by."""
        req = request.req
        native = request.native
        if passthrough is not None:
            assert native is not None
            completion = passthrough.parse_native(dep, native.format, body)
            return completion, _native_usage(completion, request.features)
        if isinstance(req, EmbeddingRequest):
            completion = adapter.parse_embeddings(dep, req, body)
            return completion, completion.usage
        if isinstance(req, EndpointRequest):
            completion = self._endpoint_adapter(dep, req).parse_endpoint(dep, req, body, headers)
            return completion, completion.usage
        completion = adapter.parse_chat(dep, req, body)
        return completion, ensure_usage(completion, request.features)

    def _endpoint_adapter(self, dep: Deployment, req: EndpointRequest) -> Endpoints:
        """The adapter serving `req.endpoint` for `dep`, or a 400 naming what is missing (the config check
        refuses such a deployment at load; an outside adapter may still lack it)."""
        served = self._endpoints.get(dep.provider)
        if served is None or req.endpoint not in served.endpoints:
            raise GatewayError(
                400, f"provider {dep.provider!r} of deployment {dep.name!r} does not serve /v1/{req.endpoint}"
            )
        return served

    def _claim(self, dep: Deployment, request: _Request, started: float, estimate: int) -> bool:
        """Take the attempt's in-flight slot, or use the admission queue's grant for `dep` (its slot and
        bucket share were taken when it was granted). True when its bucket share is already taken."""
        grant = request.grant
        if grant is not None and grant.deployment is dep and not grant.used and grant.tokens == estimate:
            grant.used = True
            return dep.limits.rate_limited
        self.health.on_start(dep.name, started)
        return False

    def _abandoned(self, dep: Deployment, record: AttemptRecord, started: float, recorded: int | None) -> None:
        """An attempt ended by an unexpected exception: free its slot and its window record, no verdict."""
        record.outcome = "error"
        record.error = "ended by an unexpected exception in the gateway"
        record.latency_ms = (self.clock() - started) * 1000
        self.health.on_cancel(dep.name)
        if recorded is not None:
            self._unrecord(dep, started, recorded)
        log.warning("attempt at %s ended by an unexpected exception (logged with the request)", dep.name)

    def _unrecord(self, dep: Deployment, started: float, tokens: int) -> None:
        self.limits.give_back(dep.name, tokens)

    async def _open(
        self,
        dep: Deployment,
        adapter: Adapter,
        call: Any,
        timeouts: Timeouts,
        request: _Request,
        record: AttemptRecord,
        started: float,
        passthrough: NativePassthrough | None,
    ) -> _Opened:
        framing = self._framing.get(dep.provider)
        if framing is None:
            stream = await self.transport.open_stream(call, timeouts, adapter)
        else:
            stream = await self.transport.open_stream(call, timeouts, adapter, framing.stream_decoder(dep))
        fmt: str | None = None
        try:
            if passthrough is not None:
                assert request.native is not None
                fmt = request.native.format
                translator = passthrough.native_stream(dep, fmt)
            else:
                assert isinstance(request.req, ChatRequest)
                translator = adapter.stream_translator(dep, request.req)
            events = stream.batches()
            # Buffer until the answer has substance (content, a tool call or a finish): a stream that breaks
            # after only the role preamble can still fail over without the client seeing anything. Native
            # events are opaque here: their translator says when it has seen substance (`answered`).
            first: list[Chunk] = []
            async for batch in events:
                for event in batch:
                    first.extend(translator.feed(event))
                    if translator.done:
                        break
                if translator.done:
                    break
                if request.vet_chunks is not None:
                    continue  # read whole: the answer is vetted before anything reaches the client
                if fmt is None:
                    if first and any(map(_substantive, first)):
                        break
                elif getattr(translator, "answered", False):
                    break
            else:
                first.extend(translator.finish())  # a complete answer, or a cut stream (raises)
            if request.vet_chunks is not None:
                problem = request.vet_chunks(first)
                if problem is not None:
                    usage = translator.usage
                    if usage.prompt == 0 and usage.completion == 0:
                        usage = Usage(
                            prompt=request.features.prompt_tokens, completion=count_text(_streamed_text(first))
                        )
                    record.cost_usd = cost_usd(usage, self.price(dep.name))  # a rejected answer is still paid
                    raise problem
        except BaseException:
            stream.close()
            raise
        ttft_ms = (self.clock() - started) * 1000
        record.outcome = "ok"
        record.latency_ms = ttft_ms
        return _Opened(stream, events, translator, first, record, started, ttft_ms, fmt)

    def _failed(
        self,
        dep: Deployment,
        record: AttemptRecord,
        started: float,
        error: ProviderError,
        *,
        client_bound: bool = False,
    ) -> None:
        error.deployment = dep.name
        error.provider = dep.provider
        record.fail(error)
        record.status = error.status
        record.retry_after = error.retry_after
        record.latency_ms = (self.clock() - started) * 1000
        if client_bound:
            self.health.on_cancel(dep.name)  # the client's own deadline says nothing about the deployment
        else:
            self.health.on_failure(dep.name, self.clock(), error.kind)
        log.info("attempt failed: %s %s %s %.300s", dep.name, error.kind.value, error.status or "", error.detail)

    def _cancelled(self, dep: Deployment, record: AttemptRecord, started: float, features: RequestFeatures) -> None:
        record.outcome = "cancelled"
        record.latency_ms = (self.clock() - started) * 1000
        # The provider has read the prompt by now; bill it (an estimate) rather than pretend it was free.
        record.cost_usd = estimate_cost_usd(features.prompt_tokens, 0, self.prices.get(dep.name))
        self.health.on_cancel(dep.name)

    def price(self, name: str) -> Price | None:
        return self.prices.get(name)


class StreamResult:
    """An answering stream: its first chunks are in hand; iterate `chunks()` for the rest, then read usage."""

    def __init__(
        self, executor: Executor, deployment: Deployment, request: _Request, opened: _Opened, started: float
    ) -> None:
        self._executor = executor
        self.deployment = deployment
        self.records = request.records
        self._request = request
        self._opened = opened
        self._started = started
        self.ttft_ms = (executor.clock() - started) * 1000
        #: Time spent in the admission queue before the first attempt (x-modelyard-queue-ms).
        self.queue_ms = 0.0
        self.usage = Usage()
        self.finished = False
        #: The wire format of the events when this attempt went through native pass-through (each chunk is
        #: then `msgspec.Raw` of an upstream event, framed), or None: canonical chunks.
        self.native = opened.native
        #: Every chunk passed on, in case the provider reports no usage and the answer must be counted.
        self._texts: list[Chunk] = []

    @property
    def model(self) -> str:
        return self._opened.translator.model or self.deployment.model

    @property
    def cost_usd(self) -> float:
        return records_cost(self.records)

    @property
    def upstream_done(self) -> bool:
        """The provider has sent its end-of-stream marker: no more batches will follow."""
        return self._opened.translator.done

    @property
    def latency_ms(self) -> float:
        return (self._executor.clock() - self._started) * 1000

    async def batches(self) -> AsyncGenerator[list[Chunk]]:
        """The answer's chunks, in batches of what arrived together; raises ProviderError(after_first_byte)
        if the stream breaks."""
        opened = self._opened
        translator = opened.translator
        # Native events are not canonical chunks: a missing usage is estimated from the prompt alone.
        texts: list[Chunk] = self._texts if opened.native is None else []
        try:
            if opened.first:
                texts.extend(opened.first)
                yield opened.first
            if not translator.done:
                async for events in opened.events:
                    out: list[Chunk] = []
                    for event in events:
                        out.extend(translator.feed(event))
                        if translator.done:
                            break
                    if out:
                        texts.extend(out)
                        yield out
                    if translator.done:
                        break
                tail: list[Chunk] = [*translator.finish()]
                if tail:
                    yield tail
        except ProviderError as error:
            error.after_first_byte = True
            self._finish(error)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._finish(None, cancelled=True)
            raise
        except Exception:
            self._finish(ProviderError(ErrorKind.SERVER, "stream failed"))
            raise
        else:
            self._finish(None)
        finally:
            opened.stream.close()

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """Every chunk of the answer as a dict, one at a time (`batches` is the hot path: it may hand out
        `msgspec.Raw` chunks that pass through undecoded). Canonical streams only (not `native`)."""
        async for batch in self.batches():
            for chunk in batch:
                yield as_dict(chunk)

    async def aclose(self) -> None:
        """The client went away: stop reading the provider."""
        if not self.finished:
            self._opened.stream.close()
            self._finish(None, cancelled=True)

    def _finish(self, error: ProviderError | None, *, cancelled: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        executor = self._executor
        opened = self._opened
        dep = self.deployment
        features = self._request.features
        now = executor.clock()
        total_ms = (now - opened.started) * 1000
        record = opened.record
        record.latency_ms = total_ms
        usage = opened.translator.usage
        try:
            if usage.prompt == 0 and usage.completion == 0:
                usage = Usage(prompt=features.prompt_tokens, completion=count_text(_streamed_text(self._texts)))
            self.usage = usage
            record.cost_usd = cost_usd(usage, executor.price(dep.name))
        finally:  # the in-flight slot is given back even if the accounting above failed
            self._settle(error, cancelled, now, total_ms)
        if dep.limits.rate_limited:
            executor.limits.correct_tokens(dep.name, usage.total - features.prompt_tokens - features.output_estimate())

    def _settle(self, error: ProviderError | None, cancelled: bool, now: float, total_ms: float) -> None:
        executor, dep, record = self._executor, self.deployment, self._opened.record
        if error is not None:
            error.deployment = dep.name
            record.fail(error)
            if error.status is not None:
                record.status = error.status
            if _client_bound(self._request, error, now - self._opened.started, dep.timeouts.total):
                executor.health.on_cancel(dep.name)
            else:
                executor.health.on_failure(dep.name, now, error.kind)
        elif cancelled:
            record.outcome = "cancelled"
            executor.health.on_cancel(dep.name)
        else:
            executor.health.on_success(dep.name, now, total_ms, self._opened.ttft_ms)


def _step(policy: RetryPolicy, error: ProviderError, retries_used: int) -> Next:
    """What to do after a failed attempt: a request this deployment's wire cannot express fails over (the
    next one may); anything else is the policy's call."""
    return Next.FAILOVER if error.untranslatable else policy.next_step(error, retries_used)


def _leg_failed(policy: RetryPolicy, walk: _Walk, request: _Request, dep: Deployment, error: ProviderError) -> None:
    """A hedge leg failed: raise the error if the policy stops on it (the race cancels the other legs), else
    narrow the walk as the sequential loop would (a context-length failure wants a larger window)."""
    if _step(policy, error, 0) is Next.STOP:
        error.records = request.records
        raise error
    if error.kind is ErrorKind.CONTEXT_LENGTH:
        walk.require_window_above(dep.context_window or request.features.prompt_tokens)


def _vet(vet: VetAnswer | None, completion: Completion, dep: Deployment, record: AttemptRecord) -> None:
    """Raise the vet's verdict on a non-streamed answer, if it has one: the attempt was answered (its health
    and cost are recorded as such); its outcome in the history says why it did not count."""
    problem = vet(completion) if vet is not None else None
    if problem is None:
        return
    problem.deployment = dep.name
    problem.provider = dep.provider
    record.fail(problem)
    raise problem


def _native_usage(completion: Completion, features: RequestFeatures) -> Usage:
    """A native answer's usage as its adapter read it, or the prompt estimate (its body is the provider's own
    shape: nothing to count the answer from, and nothing of it is rewritten)."""
    usage = completion.usage
    if usage.prompt == 0 and usage.completion == 0:
        usage = completion.usage = Usage(prompt=features.prompt_tokens)
    return usage


def records_cost(records: list[AttemptRecord]) -> float:
    """What a request's attempts cost, a hedged loser's included (one attempt, the usual case, without a
    generator: this runs twice per answer on the hot path)."""
    if len(records) == 1:
        return records[0].cost_usd
    return sum([r.cost_usd for r in records])


def _or(value: _T | None, default: _T) -> _T:
    """A model's override when it sets one, else the gateway's default."""
    return default if value is None else value


def _client_bound(request: _Request, error: ProviderError, elapsed_s: float, operator_s: float) -> bool:
    """A timeout of the client's own making: the attempt ran to the client's `x-modelyard-timeout-ms`, which
    was shorter than the operator's bound for that phase, so the operator's deployment did not fail its own
    bound. Counting it against the deployment would let any tenant open the breaker for everyone with a few
    tiny timeouts."""
    t = request.timeout_s
    if t is None or error.kind is not ErrorKind.TIMEOUT:
        return False
    return t < operator_s and elapsed_s >= t * 0.9


def as_dict(chunk: Chunk) -> dict[str, Any]:
    """A chunk as a dict, decoding one that passed through raw."""
    if isinstance(chunk, msgspec.Raw):
        decoded: dict[str, Any] = _decode(chunk)
        return decoded
    return chunk


def _substantive(chunk: Chunk) -> bool:
    if isinstance(chunk, msgspec.Raw):
        return True  # only content deltas pass through raw
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason") is not None:
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal") or delta.get("reasoning_content"):
            return True
    return False


def _streamed_text(chunks: list[Chunk]) -> str:
    parts = []
    for chunk in chunks:
        for choice in as_dict(chunk).get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                parts.append(content)
    return "".join(parts)


def ensure_usage(completion: Completion, features: RequestFeatures) -> Usage:
    """Usage as reported, or estimated when the provider reported none (so a cost is never silently 0)."""
    usage = completion.usage
    if usage.prompt == 0 and usage.completion == 0:
        text = "".join(
            str((choice.get("message") or {}).get("content") or "") for choice in completion.body.get("choices", ())
        )
        usage = Usage(prompt=features.prompt_tokens, completion=count_text(text))
        completion.usage = usage
        completion.body["usage"] = usage.to_openai()
    return usage
