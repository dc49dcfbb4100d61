"""The seam between the workflow engine and the gateway: a model call in, an answer with its price out.

The engine never speaks HTTP or a provider's wire format. It hands a `ModelCall` to a `ModelBackend`:
in-process, the gateway's router and executor (`modelyard.workflows.inprocess`); remotely, a modelyard
server over HTTP (`HttpBackend`); in tests, `scripted.ScriptedBackend`.

`ModelCall.route` carries the routing hints, typed (`RouteHints`: task, strategy, constraints, candidates,
tags); every backend maps them onto the gateway's per-request options (`ChatRequest.modelyard`) with
`RouteHints.options`, the HTTP one as the `modelyard` extra body. `ModelCall.metadata` holds labels only
(`workflow`, `run`, `step`, `step_name`), for logs and scripted answers. `estimate_output_tokens` is the
expected answer size `plan` wants priced.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp
import msgspec

from modelyard.config.imports import CallableImportError, import_callable
from modelyard.providers.base import kind_from_status, parse_retry_after
from modelyard.schema.chat import ModelyardOptions, Usage
from modelyard.schema.constraints import Constraints
from modelyard.schema.errors import ErrorKind, GatewayError, ModelyardError, ProviderError


class RouteHints(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """How the gateway should route one call: a step's `task` and `route:` plus the run's tags.

    Typed, so a misspelt constraint is an error when the workflow is loaded, not a string the gateway
    refuses mid-run; `Constraints` is the gateway's own Struct, so both sides read the same names.
    """

    task: str | None = None
    strategy: str | None = None
    constraints: Constraints | None = None
    candidates: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()

    def options(self) -> ModelyardOptions | None:
        """The gateway's per-request routing options (`ChatRequest.modelyard`); None when there are none."""
        if self == _NO_HINTS:
            return None
        return ModelyardOptions(
            task=self.task,
            strategy=self.strategy,
            constraints=self.constraints,
            candidates=list(self.candidates) if self.candidates is not None else None,
            tags=list(self.tags) or None,
        )


_NO_HINTS = RouteHints()


@dataclass
class ModelCall:
    """One model step's request, in OpenAI chat terms, with its routing hints."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    response_format: dict[str, Any] | None = None
    timeout_s: float | None = None
    route: RouteHints = field(default_factory=RouteHints)
    #: The answer size to price an estimate at (a step's `estimate.output_tokens`); None: the backend's guess.
    estimate_output_tokens: int | None = None
    #: The gateway's admission-queue class (`queue.classes`; `modelyard batch` sends `batch`); None: the default.
    priority: str | None = None
    #: Labels, not routing: `workflow`, `run`, `step`, `step_name` (logs, scripted answers).
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelAnswer:
    text: str
    model: str
    deployment: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    attempts: int = 1


@dataclass
class ModelEstimate:
    """What a call would cost and take, from the price table and latency figures; nothing is called."""

    deployment: str
    prompt_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float


class ModelBackend(Protocol):
    async def call(self, call: ModelCall) -> ModelAnswer:
        """The answer; raises ProviderError or GatewayError when no deployment could serve it."""
        ...

    def estimate(self, call: ModelCall) -> ModelEstimate:
        """A price and latency forecast; may raise NotImplementedError (then plans and budgets say n/a)."""
        ...


@runtime_checkable
class PricingBackend(Protocol):
    """Optional: what given token counts cost on the deployment `model` would route to first.

    The report's "all-premium vs smart routing" comparison prices the run's real usage at a premium model
    with this; backends without it are asked for an `estimate` sized to the same token counts instead.
    """

    def price(self, model: str, usage: Usage) -> float | None: ...


BackendFactory = Callable[[str | None, str | None], AbstractAsyncContextManager[ModelBackend]]


class BackendUnavailable(ModelyardError, RuntimeError):
    pass


def chat_body(call: ModelCall) -> dict[str, Any]:
    """The OpenAI chat request (with the gateway's routing options) for one model call."""
    body: dict[str, Any] = {"model": call.model, "messages": call.messages}
    if call.max_tokens is not None:
        body["max_tokens"] = call.max_tokens
    if call.temperature is not None:
        body["temperature"] = call.temperature
    if call.response_format is not None:
        body["response_format"] = call.response_format
    options = call.route.options()
    if call.priority is not None:
        options = msgspec.structs.replace(options or ModelyardOptions(), priority=call.priority)
    if options is not None:
        body["modelyard"] = msgspec.to_builtins(options)
    return body


class HttpBackend:
    """A remote modelyard gateway over HTTP (`/v1/chat/completions` plus the `x-modelyard-*` headers).

    `estimate` raises NotImplementedError: the gateway has no estimate endpoint yet, so `plan` and budget
    pre-checks need the in-process backend (budgets still stop on the money actually spent).
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"content-type": "application/json"}
            if self.api_key:
                headers["authorization"] = f"Bearer {self.api_key}"
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    def request_body(self, call: ModelCall) -> dict[str, Any]:
        return chat_body(call)

    async def call(self, call: ModelCall) -> ModelAnswer:
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=call.timeout_s or self.timeout_s)
        url = f"{self.base_url}/chat/completions"
        try:
            async with self._client().post(url, json=self.request_body(call), timeout=timeout) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise http_error(response.status, dict(response.headers), raw)
                return parse_answer(raw, dict(response.headers), (time.perf_counter() - started) * 1000)
        except TimeoutError:
            raise ProviderError(ErrorKind.TIMEOUT, f"no answer from {self.base_url} in time") from None
        except aiohttp.ClientError as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"{type(exc).__name__}: {exc}") from None

    async def call_streaming(self, call: ModelCall, on_text: Callable[[str], None]) -> ModelAnswer:
        """`call` as a `stream: true` request (SSE), each content delta passed to `on_text` as it arrives;
        the price comes from the priced usage chunk the gateway sends last."""
        from modelyard.workflows.sse import read_stream  # the SSE reader, loaded only when streaming

        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=call.timeout_s or self.timeout_s)
        body = {**self.request_body(call), "stream": True, "stream_options": {"include_usage": True}}
        url = f"{self.base_url}/chat/completions"
        try:
            async with self._client().post(url, json=body, timeout=timeout) as response:
                if response.status >= 400:
                    raise http_error(response.status, dict(response.headers), await response.read())
                return await read_stream(response, on_text, started)
        except TimeoutError:
            raise ProviderError(ErrorKind.TIMEOUT, f"no answer from {self.base_url} in time") from None
        except aiohttp.ClientError as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"{type(exc).__name__}: {exc}") from None

    def estimate(self, call: ModelCall) -> ModelEstimate:
        raise NotImplementedError("the HTTP gateway backend cannot estimate; plan with the in-process one")


def delta_texts(chunk: dict[str, Any]) -> list[str]:
    """The content deltas of one OpenAI stream chunk (usually one, none in the usage chunk)."""
    texts: list[str] = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            texts.append(content)
    return texts


def parse_answer(raw: bytes, headers: dict[str, str], measured_ms: float) -> ModelAnswer:
    """A chat completion body plus modelyard's response headers, as a ModelAnswer."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        body = json.loads(raw)
        message = body["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ProviderError(ErrorKind.SERVER, "the gateway answered with a malformed completion") from None
    model = str(body.get("model") or "")
    return ModelAnswer(
        text=message.get("content") or "",
        model=model,
        deployment=lowered.get("x-modelyard-model") or model,
        usage=Usage.from_openai(body.get("usage")),
        cost_usd=_number(lowered.get("x-modelyard-cost-usd"), 0.0),
        latency_ms=_number(lowered.get("x-modelyard-latency-ms"), measured_ms),
        attempts=int(_number((lowered.get("x-modelyard-attempts") or "1").split(";")[0], 1)),
    )


def http_error(status: int, headers: dict[str, str], raw: bytes) -> Exception:
    """The gateway's error answer as ProviderError (retryable side) or GatewayError (the caller's fault)."""
    message, type_, code = f"HTTP {status}", "api_error", None
    try:
        error = json.loads(raw).get("error") or {}
        message = str(error.get("message") or message)
        type_ = str(error.get("type") or type_)
        code = error.get("code")
    except (ValueError, AttributeError):
        pass
    if status == 429 or status >= 500:
        lowered = {k.lower(): v for k, v in headers.items()}
        retry_after = parse_retry_after(lowered)
        return ProviderError(kind_from_status(status), message, status=status, retry_after=retry_after)
    return GatewayError(status, message, type=type_, code=code)


def _number(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


# --------------------------------------------------------------------------- factories (the CLI's hook)


@asynccontextmanager
async def default_backend_factory(
    config_path: str | None = None, gateway_url: str | None = None
) -> AsyncIterator[ModelBackend]:
    """A remote gateway when `gateway_url` is given, else the in-process gateway from `config_path`."""
    if gateway_url:
        async with HttpBackend(gateway_url, os.environ.get("MODELYARD_API_KEY")) as remote:
            yield remote
        return
    from modelyard.workflows.inprocess import open_inprocess_backend  # the router, loaded only when used

    async with open_inprocess_backend(config_path) as backend:
        yield backend


def load_backend_factory(ref: str | None) -> BackendFactory:
    """`None` → the default; `scripted` → the fake backend; `package.module:function` → that factory."""
    if not ref:
        return default_backend_factory
    if ref == "scripted":
        ref = "modelyard.workflows.scripted:scripted_backend_factory"
    try:
        return import_callable(ref)
    except CallableImportError as exc:
        raise BackendUnavailable(f"cannot load backend factory {ref!r}: {exc}") from None
