"""The simulator's Vertex AI routes: Gemini and Claude at Vertex URLs, behind OAuth2 access tokens.

Routes (every fleet model on both publishers; any project and location):

* ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent``,
  ``:streamGenerateContent[?alt=sse]`` (the Gemini wire) and ``:predict`` (text embeddings, Vertex's shape)
* ``POST .../publishers/anthropic/models/{m}:rawPredict`` and ``:streamRawPredict``: Anthropic's Messages
  body *without* ``model`` (the URL names it) and with ``anthropic_version: vertex-2023-10-16``; a body that
  still carries ``model`` or another version is a 400, so a gateway that forwards the first-party body fails
  here as it would on Vertex. ``.../publishers/anthropic/models/count-tokens:rawPredict`` counts tokens.
* ``POST /oauth2/token``: the JWT-bearer grant google-auth sends for a service account. The assertion is
  verified as Google does: RS256 over the service account's registered public key (its ``kid``), ``iss`` the
  account's email, ``aud`` Google's token endpoint (google-auth always writes that one, whatever the key
  file's ``token_uri``), ``exp`` in the future and at most an hour after ``iat``. It answers
  ``{"access_token", "expires_in", "token_type"}``.
* Control (outside ``/_sim/``, which the app answers itself): ``GET /_vertex/service-account?project=&
  lifetime_s=`` returns a freshly generated service-account key file whose ``token_uri`` is this simulator
  (its tokens live ``lifetime_s`` seconds, default 3600); ``POST /_vertex/revoke[?client_email=]``
  invalidates every issued token (or one account's); ``GET /_vertex/tokens`` counts what was issued,
  refused and revoked.

A model request without a live token (missing, unknown, expired or revoked) is answered 401
``UNAUTHENTICATED`` in Google's error shape, before the model sees it; everything after that (faults,
``x-sim-fault``, latency, ``/_sim/requests/{model}``) is the Gemini or Anthropic wire's, via ``app._chat``.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from modelyard.sim import asgi
from modelyard.sim.asgi import Receive, Scope, Send
from modelyard.sim.behaviour import count_tokens
from modelyard.sim.shapes import Ask, BadRequest, EmbedAsk, decode_object
from modelyard.sim.wire_anthropic import AnthropicWire
from modelyard.sim.wire_gemini import GeminiWire

if TYPE_CHECKING:
    from modelyard.sim.app import SimApp

#: The audience google-auth writes into every service-account assertion (and Google's endpoint checks).
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TOKEN_PATH = "/oauth2/token"
CONTROL_PREFIX = "/_vertex/"
DEFAULT_LIFETIME_S = 3600.0
#: Google refuses assertions that live longer than an hour.
_MAX_ASSERTION_S = 3600
_CLOCK_SKEW_S = 60

_ROUTE = re.compile(
    r"^/v1(?:beta1)?/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/(?P<publisher>google|anthropic)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)
_GOOGLE_CHAT = {"generateContent": False, "streamGenerateContent": True}
_ANTHROPIC_CHAT = {"rawPredict": False, "streamRawPredict": True}
_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
    "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


# ============================================================================ state


@dataclass(slots=True)
class _Account:
    email: str
    project: str
    public_key: Any
    lifetime_s: float


@dataclass(slots=True)
class VertexState:
    """Registered service accounts (by key id), live tokens (token → expiry on the wall clock, and the
    account's email) and counters."""

    accounts: dict[str, _Account] = field(default_factory=dict)
    tokens: dict[str, tuple[float, str]] = field(default_factory=dict)
    issued: int = 0
    refused: int = 0
    revoked: int = 0
    #: Model requests answered 401 for want of a live token.
    unauthenticated: int = 0

    def live(self, token: str | None, now: float) -> bool:
        found = self.tokens.get(token or "")
        return found is not None and now < found[0]

    def revoke(self, email: str | None) -> int:
        """Invalidate every token (of one account's, when `email` is given); how many were live."""
        gone = [t for t, (_, owner) in self.tokens.items() if email is None or owner == email]
        for token in gone:
            del self.tokens[token]
        self.revoked += len(gone)
        return len(gone)


def state_of(app: SimApp) -> VertexState:
    """This app's Vertex state, made on first use (kept on the app: every simulator has its own)."""
    state = app.cloud_state.get("vertex")
    if not isinstance(state, VertexState):
        state = app.cloud_state["vertex"] = VertexState()
    return state


# ============================================================================ dispatch


def claims(method: str, path: str) -> bool:
    """Whether this module serves the request."""
    if path.startswith(CONTROL_PREFIX) or path == TOKEN_PATH:
        return True
    return method == "POST" and _ROUTE.match(path) is not None


async def handle(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    method: str = scope["method"]
    if path == TOKEN_PATH:
        if method != "POST":
            return await asgi.respond(send, 405, b'{"error":"method_not_allowed"}')
        return await _token(app, scope, receive, send)
    if path.startswith(CONTROL_PREFIX):
        return await _control(app, scope, method, path[len(CONTROL_PREFIX) :], receive, send)
    route = _ROUTE.match(path)
    assert route is not None  # claims() matched it
    gemini = app.gemini
    if not state_of(app).live(_bearer(scope), time.time()):
        state_of(app).unauthenticated += 1
        status, body = gemini.error("auth", _UNAUTHENTICATED)
        return await asgi.respond(
            send, status, body, [(b"www-authenticate", b'Bearer realm="https://accounts.google.com/"')]
        )
    model, verb = route["model"], route["method"]
    if route["publisher"] == "google":
        if verb in _GOOGLE_CHAT:
            sse = (parse_qs(scope.get("query_string", b"").decode()).get("alt") or [""])[0] == "sse"
            return await app._chat(gemini, scope, receive, send, model, _GOOGLE_CHAT[verb], sse, checked=True)
        if verb == "predict":
            return await app._embed(VertexEmbedWire(), scope, receive, send, model, True, checked=True)
    elif verb in _ANTHROPIC_CHAT:
        if model == "count-tokens":
            return await _count_tokens(app, scope, receive, send)
        wire = VertexAnthropicWire(app.anthropic)
        return await app._chat(wire, scope, receive, send, model, _ANTHROPIC_CHAT[verb], checked=True)
    status, body = gemini.error("not_found", f"Method not found: {verb}")
    await asgi.respond(send, status, body)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() if text[:7].lower() == "bearer " else None
    return None


# ============================================================================ wires


class VertexAnthropicWire(AnthropicWire):
    """Anthropic's wire as Vertex takes it: the model in the URL, `anthropic_version` in the body.

    Shares the first-party wire's thinking signer, so signatures made on either verify on both."""

    def __init__(self, first_party: AnthropicWire) -> None:
        super().__init__()
        self.signer = first_party.signer

    def parse_chat(self, body: bytes, model: str | None) -> Ask:
        data = decode_object(body)
        if "model" in data:
            raise BadRequest("model: Extra inputs are not permitted (Vertex AI takes the model from the URL)")
        version = data.pop("anthropic_version", None)
        if version != VERTEX_ANTHROPIC_VERSION:
            raise BadRequest(f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'")
        data["model"] = model or ""
        return super().parse_chat(_encode(data), model)


class VertexEmbedWire(GeminiWire):
    """Vertex's text-embedding `:predict`: `{"instances": [{"content"}], "parameters"}` in,
    `{"predictions": [{"embeddings": {"values", "statistics"}}]}` out; errors as Gemini's."""

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk:
        data = decode_object(body)
        instances = data.get("instances")
        if not isinstance(instances, list) or not instances:
            raise BadRequest("instances: at least one instance is required")
        texts = []
        for i, instance in enumerate(instances):
            content = instance.get("content") if isinstance(instance, dict) else None
            if not isinstance(content, str):
                raise BadRequest(f"instances[{i}].content: a string is required")
            texts.append(content)
        parameters = data.get("parameters")
        dims = parameters.get("outputDimensionality") if isinstance(parameters, dict) else None
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool)):
            raise BadRequest("parameters.outputDimensionality: an integer is required")
        return EmbedAsk(model=model or "", texts=texts, dimensions=dims)

    def embeddings(self, ask: EmbedAsk, vectors: list[list[float]], prompt_tokens: int, batch: bool) -> bytes:
        predictions = [
            {"embeddings": {"values": vector, "statistics": {"truncated": False, "token_count": count_tokens(text)}}}
            for text, vector in zip(ask.texts, vectors, strict=True)
        ]
        characters = sum(len(text) for text in ask.texts)
        return _encode({"predictions": predictions, "metadata": {"billableCharacterCount": characters}})


async def _count_tokens(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Vertex's `count-tokens:rawPredict`: a Messages body with `model` and `anthropic_version`."""
    wire = app.anthropic
    raw = await asgi.read_body(receive)
    try:
        data = decode_object(raw)
        if data.pop("anthropic_version", None) != VERTEX_ANTHROPIC_VERSION:
            raise BadRequest(f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'")
        ask = wire.parse_count(_encode(data))
    except BadRequest as exc:
        status, body = wire.error("bad_request", str(exc))
        return await asgi.respond(send, status, body)
    app.received.record(ask.model, scope["path"], scope["headers"], raw)
    if ask.model not in app.models:
        status, body = wire.error("not_found", wire.messages["not_found"].format(model=ask.model))
        return await asgi.respond(send, status, body)
    await asgi.respond(send, 200, wire.count_tokens_answer(ask))


# ============================================================================ the token endpoint


async def _token(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    state = state_of(app)
    form = parse_qs((await asgi.read_body(receive)).decode("utf-8", "replace"))
    grant = (form.get("grant_type") or [""])[0]
    assertion = (form.get("assertion") or [""])[0]
    if grant != JWT_GRANT:
        state.refused += 1
        return await _oauth_error(send, "unsupported_grant_type", "Invalid grant_type.")
    now = time.time()
    try:
        account = _verify(state, assertion, now)
    except _Refused as exc:
        state.refused += 1
        return await _oauth_error(send, "invalid_grant", str(exc))
    token = "ya29.sim-" + secrets.token_urlsafe(32)
    state.tokens = {t: held for t, held in state.tokens.items() if held[0] > now}  # forget the dead ones
    state.tokens[token] = (now + account.lifetime_s, account.email)
    state.issued += 1
    lifetime = max(1, round(account.lifetime_s))
    answer = {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}
    await asgi.respond(send, 200, _encode(answer), [(b"cache-control", b"no-store")])


class _Refused(Exception):
    """An assertion the token endpoint refuses; the message is Google's `error_description`."""


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify(state: VertexState, assertion: str, now: float) -> _Account:
    """The account whose key signed `assertion`, once its signature and claims hold."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pieces = assertion.split(".")
    if len(pieces) != 3:
        raise _Refused("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.")
    try:
        header, claims, signature = _decode(_b64url(pieces[0])), _decode(_b64url(pieces[1])), _b64url(pieces[2])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise _Refused("Invalid JWT: malformed.") from None
    if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
        raise _Refused("Invalid JWT: only RS256 assertions are accepted.")
    account = state.accounts.get(str(header.get("kid") or ""))
    if account is None:
        raise _Refused("Invalid JWT Signature.")  # what Google says for a key it does not know
    try:
        account.public_key.verify(signature, f"{pieces[0]}.{pieces[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise _Refused("Invalid JWT Signature.") from None
    if claims.get("iss") != account.email:
        raise _Refused("Invalid JWT: iss does not name the key's service account.")
    if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
        raise _Refused(f"Invalid JWT: aud must be {GOOGLE_TOKEN_AUDIENCE}.")
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int):
        raise _Refused("Invalid JWT: iat and exp are required.")
    if exp <= now or iat > now + _CLOCK_SKEW_S or exp - iat > _MAX_ASSERTION_S:
        raise _Refused("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.")
    if CLOUD_PLATFORM_SCOPE not in str(claims.get("scope") or "").split():
        raise _Refused("Invalid JWT: the scope must include cloud-platform.")
    return account


async def _oauth_error(send: Send, error: str, description: str) -> None:
    await asgi.respond(send, 400, _encode({"error": error, "error_description": description}))


# ============================================================================ control


async def _control(app: SimApp, scope: Scope, method: str, name: str, receive: Receive, send: Send) -> None:
    state = state_of(app)
    if method == "GET" and name == "service-account":
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        try:
            lifetime = float(query.get("lifetime_s", DEFAULT_LIFETIME_S))
        except ValueError:
            lifetime = -1.0
        if not 1.0 <= lifetime <= 86400.0:
            return await asgi.respond(send, 400, b'{"error":"lifetime_s must be 1..86400"}')
        key_file = new_service_account(state, _host_url(scope), query.get("project", "sim-project"), lifetime)
        return await asgi.respond(send, 200, _encode(key_file))
    if method == "POST" and name == "revoke":
        await asgi.read_body(receive)
        email = parse_qs(scope.get("query_string", b"").decode()).get("client_email")
        count = state.revoke(email[0] if email else None)
        return await asgi.respond(send, 200, _encode({"revoked": count}))
    if method == "GET" and name == "tokens":
        now = time.time()
        counts = {
            "issued": state.issued,
            "live": sum(1 for expires, _ in state.tokens.values() if expires > now),
            "refused": state.refused,
            "revoked": state.revoked,
            "unauthenticated": state.unauthenticated,
        }
        return await asgi.respond(send, 200, _encode(counts))
    await asgi.respond(send, 404, b'{"error":"unknown vertex control endpoint"}')


def new_service_account(state: VertexState, base_url: str, project: str, lifetime_s: float) -> dict[str, str]:
    """A service-account key file (Google's JSON) with a fresh RSA key this simulator now trusts."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = secrets.token_hex(20)
    email = f"sim-{key_id[:8]}@{project}.iam.gserviceaccount.com"
    state.accounts[key_id] = _Account(email, project, key.public_key(), lifetime_s)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": str(int(key_id[:15], 16)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": base_url + TOKEN_PATH,
        "universe_domain": "googleapis.com",
    }


def _host_url(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            host: str = value.decode("latin-1")
            return "http://" + host
    server = scope.get("server") or ("127.0.0.1", 80)
    return f"http://{server[0]}:{server[1]}"
