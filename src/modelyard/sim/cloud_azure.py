"""The simulator's Azure OpenAI routes: OpenAI's wire at Azure's URLs, Azure's credentials and refusals.

* ``POST /openai/deployments/{deployment}/chat/completions|embeddings?api-version=…`` (the dated API: the
  path's deployment is the fleet model that answers, whatever the body's ``model`` says; no
  ``api-version`` → 404 ``Resource not found`` as Azure answers), ``POST /openai/responses?api-version=…``;
* the v1 API: ``POST /openai/v1/chat/completions|embeddings|responses`` (``model`` in the body names the
  deployment), ``GET|DELETE /openai/v1/responses/{id}``;
* credentials: an ``api-key`` header (the fleet's ``api_key`` when it has one; the v1 API also takes it as
  ``Authorization: Bearer``, as the plain OpenAI SDK sends it), or ``Authorization: Bearer`` with a token
  this simulator's Entra endpoint issued: ``POST /{tenant}/oauth2/v2.0/token`` (client
  credentials; the secret must be the fleet's ``api_key`` when it has one; a client id ending ``-ttl-N``
  gets N-second tokens, for refresh tests) and ``GET /{tenant}/v2.0/.well-known/openid-configuration``
  (what MSAL reads first). Tokens are signed, not stored: nothing here keeps state;
* Azure's content filter, asked for by a marker in the request body: ``AZURE-FILTER-PROMPT`` (or the header
  ``x-sim-fault: content_filter``) → the 400 ``content_filter`` / ``ResponsibleAIPolicyViolation`` refusal,
  ``AZURE-FILTER-ANSWER`` → a 200 whose choice ends with ``finish_reason: "content_filter"`` (streamed too);
* 429s carry Azure's headers (``retry-after``, ``retry-after-ms``, ``x-ratelimit-remaining-*``,
  ``x-ratelimit-reset-requests|tokens`` in seconds); ``x-sim-azure-retry: reset-only`` leaves only the
  ``x-ratelimit-reset-tokens`` header (what Azure sent for a while in 2023).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, parse_qsl

import msgspec

from modelyard.sim import asgi
from modelyard.sim.asgi import Message, Receive, Scope, Send
from modelyard.sim.behaviour import count_tokens
from modelyard.sim.shapes import Answer, Ask, EmbedAsk, ErrKind, Event, StreamPlan, Wire

if TYPE_CHECKING:
    from modelyard.sim.app import SimApp

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
PROMPT_MARKER = b"AZURE-FILTER-PROMPT"
ANSWER_MARKER = b"AZURE-FILTER-ANSWER"
#: The name token requests are recorded under (`GET /_sim/requests/entra-token`), without the secret.
TOKEN_LOG = "entra-token"
DEFAULT_TOKEN_S = 3599

_DEPLOYMENT = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings)$")
_V1 = re.compile(r"^/openai/v1/(chat/completions|embeddings|responses)$")
_STORED = re.compile(r"^/openai/(?:v1/)?responses/(.+)$")
_TOKEN = re.compile(r"^/[^/]+/oauth2/v2\.0/token$")
_DISCOVERY = re.compile(r"^/([^/]+)/v2\.0/\.well-known/openid-configuration$")
_TTL = re.compile(r"-ttl-(\d+)$")

_AUTH_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for "
    "an active subscription and use a correct regional API endpoint for your resource."
)
_AUTH_TOKEN = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), "
    "or have expired."
)
_NO_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within the last 5 "
    "minutes, please wait a moment and try again."
)
_PROMPT_FILTERED = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please "
    "modify your prompt and retry. To learn more about our content filtering policies please read our "
    "documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
_SAFE = {"filtered": False, "severity": "safe"}


def claims(method: str, path: str) -> bool:
    """Whether this module serves the request."""
    if method == "POST":
        return bool(_DEPLOYMENT.match(path) or _V1.match(path) or path == "/openai/responses" or _TOKEN.match(path))
    if method == "GET" and _DISCOVERY.match(path):
        return True
    return method in ("GET", "DELETE") and bool(_STORED.match(path))


async def handle(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    method: str = scope["method"]
    if _TOKEN.match(path):
        return await _issue_token(app, scope, receive, send)
    found = _DISCOVERY.match(path)
    if found:
        return await asgi.respond(send, 200, _encode(_openid_configuration(scope, found.group(1))))
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    version = query.get("api-version")
    v1 = path.startswith("/openai/v1/")
    if not v1 and not version:
        return await _error(send, 404, "404", "Resource not found")
    bearer = _bearer(scope)
    checked = bearer is not None and _valid_token(app, bearer)
    if bearer is not None and not checked and not v1:  # the v1 API also takes the api-key as a bearer
        return await _error(send, 401, "401", _AUTH_TOKEN)
    if bearer is None and _header(scope, b"api-key") is None:
        return await _error(send, 401, "401", _AUTH_KEY)
    stored = _STORED.match(path)
    if stored and method in ("GET", "DELETE"):
        status, body = app.responses.stored(method, stored.group(1), query)
        return await asgi.respond(send, status, body)
    scoped = _DEPLOYMENT.match(path)
    deployment = scoped.group(1) if scoped else None
    operation = scoped.group(2) if scoped else path.rsplit("/openai/", 1)[1].removeprefix("v1/")
    if deployment is not None and deployment not in app.models:
        return await _error(send, 404, "DeploymentNotFound", _NO_DEPLOYMENT)
    body = await asgi.read_body(receive)
    replay = _replay(body, receive)
    send = _with_azure_limits(send, scope)
    if operation == "responses":
        return await app._chat(app.responses, scope, replay, send, None, None, checked=checked)
    wire = AzureWire(app.openai, deployment, version or "v1")
    if operation == "embeddings":
        if checked:  # _embed asks for the fleet's key itself: a verified bearer stands for it
            scope = _without_bearer(scope, app)
        return await app._embed(wire, scope, replay, send, deployment, False)
    if PROMPT_MARKER in body or _header(scope, b"x-sim-fault") == "content_filter":
        return await _prompt_filtered(send)
    if ANSWER_MARKER in body:
        return await _answer_filtered(send, body, deployment)
    await app._chat(wire, scope, replay, send, deployment, None, checked=checked)


# ----------------------------------------------------------------------------- the wire


class AzureWire:
    """OpenAI's wire as an Azure deployment speaks it: the path's deployment answers, errors in Azure's
    words and shape (a `code` string, no `type`) where Azure differs from OpenAI."""

    name = "openai"

    def __init__(self, inner: Wire, deployment: str | None, version: str) -> None:
        self.inner = inner
        self.deployment = deployment
        self.messages: dict[str, str] = {
            **inner.messages,
            "auth": _AUTH_KEY,
            "not_found": _NO_DEPLOYMENT,
            "rate_limit": (
                f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {version} have "
                "exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after {retry} "
                "seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further "
                "increase the default rate limit."
            ),
        }

    def parse_chat(self, body: bytes, model: str | None) -> Ask:
        ask = self.inner.parse_chat(body, None)
        if self.deployment is not None:
            ask.model = self.deployment
        return ask

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk:
        ask = self.inner.parse_embed(body, None, batch)
        if self.deployment is not None:
            ask.model = self.deployment
        return ask

    def completion(self, answer: Answer) -> bytes:
        return self.inner.completion(answer)

    def stream(self, answer: Answer) -> StreamPlan:
        return self.inner.stream(answer)

    def frame(self, events: list[Event], ask: Ask, complete: bool) -> list[bytes]:
        return self.inner.frame(events, ask, complete)

    def embeddings(self, ask: EmbedAsk, vectors: list[list[float]], prompt_tokens: int, batch: bool) -> bytes:
        return self.inner.embeddings(ask, vectors, prompt_tokens, batch)

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]:
        if kind == "auth":
            return 401, _encode({"error": {"code": "401", "message": message}})
        if kind == "not_found":
            return 404, _encode({"error": {"code": "DeploymentNotFound", "message": message}})
        if kind == "rate_limit":
            return 429, _encode({"error": {"code": "429", "message": message}})
        return self.inner.error(kind, message, retry_after)


# ----------------------------------------------------------------------------- content filter


def filter_results(filtered: str | None = None) -> dict[str, Any]:
    """Azure's per-category verdicts; `filtered` names the category that tripped (severity high)."""
    results: dict[str, Any] = {name: dict(_SAFE) for name in ("hate", "self_harm", "sexual", "violence")}
    if filtered is not None:
        results[filtered] = {"filtered": True, "severity": "high"}
    return results


async def _prompt_filtered(send: Send) -> None:
    inner = {
        "code": "ResponsibleAIPolicyViolation",
        "content_filter_result": {**filter_results("violence"), "jailbreak": {"filtered": False, "detected": False}},
    }
    error = {
        "message": _PROMPT_FILTERED,
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": inner,
    }
    await asgi.respond(send, 400, _encode({"error": error}))


async def _answer_filtered(send: Send, body: bytes, deployment: str | None) -> None:
    """A 200 whose answer Azure's output filter withheld (stream or not, as the request asked)."""
    try:
        request = _decode(body)
    except msgspec.DecodeError:
        request = {}
    request = request if isinstance(request, dict) else {}
    model = deployment or str(request.get("model") or "")
    prompt = max(1, count_tokens(body.decode("utf-8", "replace")))
    usage = {"prompt_tokens": prompt, "completion_tokens": 3, "total_tokens": prompt + 3}
    prompt_results = [{"prompt_index": 0, "content_filter_results": filter_results()}]
    head = {"id": f"chatcmpl-azf{int(time.time() * 1000):x}", "created": int(time.time()), "model": model}
    if not request.get("stream"):
        choice = {
            "index": 0,
            "finish_reason": "content_filter",
            "message": {"role": "assistant", "content": None},
            "content_filter_results": filter_results("violence"),
        }
        answer = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        answer["prompt_filter_results"] = prompt_results
        return await asgi.respond(send, 200, _encode(answer))
    first = {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": prompt_results}
    last = {
        **head,
        "object": "chat.completion.chunk",
        "choices": [
            {
                "index": 0,
                "delta": {},
                "finish_reason": "content_filter",
                "content_filter_results": filter_results("violence"),
            }
        ],
    }
    frames = [b"data: " + _encode(first) + b"\n\n", b"data: " + _encode(last) + b"\n\n"]
    if (request.get("stream_options") or {}).get("include_usage"):
        tail = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        frames.append(b"data: " + _encode(tail) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", asgi.SSE_TYPE)]})
    await send({"type": "http.response.body", "body": b"".join(frames)})


# ----------------------------------------------------------------------------- Entra ID tokens


def _token_key(app: SimApp) -> bytes:
    return hashlib.blake2b(b"azure-entra|%d|%s" % (app.seed, (app.fleet.api_key or "").encode())).digest()[:32]


def issue(app: SimApp, client_id: str, scope: str, lifetime: int, now: float | None = None) -> str:
    """A signed token naming its client, audience and expiry (checked by signature: nothing is stored)."""
    claims_ = {"sub": client_id, "aud": scope, "exp": int((time.time() if now is None else now) + lifetime)}
    payload = base64.urlsafe_b64encode(_encode(claims_)).rstrip(b"=")
    mac = hmac.new(_token_key(app), payload, hashlib.sha256).hexdigest()[:32]
    return f"sim-entra.{payload.decode()}.{mac}"


def _valid_token(app: SimApp, token: str, now: float | None = None) -> bool:
    prefix, _, rest = token.partition(".")
    payload, _, mac = rest.partition(".")
    if prefix != "sim-entra" or not payload or not mac:
        return False
    expected = hmac.new(_token_key(app), payload.encode(), hashlib.sha256).hexdigest()[:32]
    if not hmac.compare_digest(expected, mac):
        return False
    try:
        claims_ = _decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, msgspec.DecodeError):
        return False
    when = time.time() if now is None else now
    return isinstance(claims_, dict) and claims_.get("aud") == ENTRA_SCOPE and int(claims_.get("exp", 0)) > when


async def _issue_token(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    """The client-credentials grant of Entra's v2.0 token endpoint."""
    form = {k: v[0] for k, v in parse_qs((await asgi.read_body(receive)).decode("utf-8", "replace")).items()}
    client_id = form.get("client_id", "")
    kept = {k: form[k] for k in ("grant_type", "client_id", "scope") if k in form}
    app.received.record(TOKEN_LOG, scope["path"], scope["headers"], _encode(kept))
    if form.get("grant_type") != "client_credentials" or not client_id:
        return await _oauth_error(send, 400, "unsupported_grant_type", "AADSTS70003: unsupported grant type.")
    secret = form.get("client_secret")
    required = app.fleet.api_key
    if not secret or (required is not None and not hmac.compare_digest(secret, required)):
        return await _oauth_error(
            send, 401, "invalid_client", "AADSTS7000215: Invalid client secret provided.", code=7000215
        )
    if form.get("scope") != ENTRA_SCOPE:
        return await _oauth_error(send, 400, "invalid_scope", "AADSTS70011: The provided scope is not valid.")
    ttl = _TTL.search(client_id)
    lifetime = int(ttl.group(1)) if ttl else DEFAULT_TOKEN_S
    token = issue(app, client_id, ENTRA_SCOPE, lifetime)
    answer = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}
    await asgi.respond(send, 200, _encode(answer))


async def _oauth_error(send: Send, status: int, error: str, description: str, code: int = 0) -> None:
    body = {"error": error, "error_description": description, "error_codes": [code] if code else []}
    await asgi.respond(send, status, _encode(body))


def _openid_configuration(scope: Scope, tenant: str) -> dict[str, Any]:
    """What MSAL reads before its first token request (the issuer on this host, as MSAL checks)."""
    host = _header(scope, b"host") or "127.0.0.1"
    root = f"{scope.get('scheme', 'http')}://{host}/{tenant}"
    return {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
        "issuer": f"{root}/v2.0",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
    }


# ----------------------------------------------------------------------------- plumbing


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1").strip())
    return None


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None or value[:7].lower() != "bearer ":
        return None
    return value[7:].strip()


def _without_bearer(scope: Scope, app: SimApp) -> Scope:
    """The request as the fleet's key would have sent it (the bearer was verified here)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
    if app.fleet.api_key is not None:
        headers.append((b"api-key", app.fleet.api_key.encode()))
    return {**scope, "headers": headers}


async def _error(send: Send, status: int, code: str, message: str) -> None:
    await asgi.respond(send, status, _encode({"error": {"code": code, "message": message}}))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body read here once more, then the connection's own messages."""
    pending = [body]

    async def again() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return again


def _with_azure_limits(send: Send, scope: Scope) -> Callable[[Message], Awaitable[None]]:
    """`send` that gives a 429 Azure's rate-limit headers (seconds, from the simulator's `retry-after`)."""
    reset_only = _header(scope, b"x-sim-azure-retry") == "reset-only"

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 429:
            headers = list(message.get("headers") or [])
            wait = next((v for k, v in headers if k == b"retry-after"), b"1")
            if reset_only:
                headers = [(k, v) for k, v in headers if k not in (b"retry-after", b"retry-after-ms")]
            headers += [
                (b"x-ratelimit-remaining-requests", b"0"),
                (b"x-ratelimit-remaining-tokens", b"0"),
                (b"x-ratelimit-reset-tokens", wait),
                (b"x-ms-region", b"Sim Central"),
                (b"apim-request-id", b"00000000-0000-4000-8000-000000000000"),
            ]
            if not reset_only:
                headers.append((b"x-ratelimit-reset-requests", wait))
            message = {**message, "headers": headers}
        await send(message)

    return sending
