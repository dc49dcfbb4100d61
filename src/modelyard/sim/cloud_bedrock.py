"""The simulator's AWS Bedrock routes: Converse and ConverseStream behind SigV4 signatures.

Routes: ``POST /model/{modelId}/converse`` and ``/converse-stream`` (sim/wire_bedrock.py), for every fleet
model. The model id is percent-decoded and mapped to a fleet model simply: the id itself, else its last
``/`` segment (an ARN), else the longest fleet model name it contains (a cross-region profile id such as
``us.sim-small`` or ``us.anthropic.sim-small-v1:0``); an id naming none is a 404 ResourceNotFoundException.

Authentication, checked before the model sees the request, as AWS does:

* ``Authorization: AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/bedrock/aws4_request, SignedHeaders=...,
  Signature=...``: the signature is recomputed with botocore's own SigV4 implementation from the request as
  received (method, raw path, query, the signed headers, the body's SHA-256, ``x-amz-date``) and the secret
  of the simulator's one key pair (``ACCESS_KEY``/``SECRET_KEY``); an unknown key is a 403
  UnrecognizedClientException, a wrong signature (or one more than 15 minutes old) a 403
  InvalidSignatureException, like AWS;
* ``Authorization: Bearer <API_KEY>``: a Bedrock API key.

Everything after that (faults, ``x-sim-fault``, latency, ``/_sim/requests/{model}``) is the app's, via
``app._chat``; error answers get Bedrock's ``x-amzn-ErrorType`` header added here.
"""

from __future__ import annotations

import hmac
import re
import time
from calendar import timegm
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from modelyard.sim import asgi
from modelyard.sim.asgi import Message, Receive, Scope, Send
from modelyard.sim.wire_bedrock import BedrockWire, error_type

if TYPE_CHECKING:
    from modelyard.sim.app import SimApp

#: The simulator's one AWS key pair (and its Bedrock API key): tests configure the gateway with these.
ACCESS_KEY = "AKIDSIMULATOR"
SECRET_KEY = "sk-test-bedrock-secret"
API_KEY = "sk-test-bedrock-secret"
_ROUTE = re.compile(r"^/model/(?P<model>[^/]+(?:/[^/]+)*)/(?P<op>converse|converse-stream)$")
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,]+)/(?P<date>\d{8})/(?P<region>[^/,]+)/(?P<service>[^/,]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_MAX_SKEW_S = 15 * 60
_ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


def claims(method: str, path: str) -> bool:
    """Whether this module serves the request."""
    return method == "POST" and path.startswith("/model/") and _ROUTE.match(path) is not None


async def handle(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    match = _ROUTE.match(scope["path"])
    assert match is not None  # claims() said so
    body = await asgi.read_body(receive)
    headers = _headers(scope)
    refusal = verify(scope, headers, body)
    if refusal is not None:
        name, message = refusal
        return await _error(send, 403, name, message)
    model = resolve_model(unquote(match["model"]), app.models)
    wire = BedrockWire()
    stream = match["op"] == "converse-stream"
    await app._chat(wire, scope, _replay(body, receive), _typed_errors(send), model, stream, checked=True)


def resolve_model(model_id: str, fleet: Any) -> str:
    """The fleet model a model id, profile id or ARN names (see the module docstring); the id if none."""
    if model_id in fleet:
        return model_id
    tail = model_id.rsplit("/", 1)[-1]
    if tail in fleet:
        return tail
    named = [name for name in fleet if name in model_id]
    return max(named, key=len) if named else model_id


# ----------------------------------------------------------------------------- SigV4


def verify(scope: Scope, headers: dict[str, str], body: bytes) -> tuple[str, str] | None:
    """None when the request carries a valid credential, else (exception name, message) of the 403."""
    authorization = headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        if hmac.compare_digest(authorization[7:].encode(), API_KEY.encode()):
            return None
        return "UnrecognizedClientException", "The security token included in the request is invalid."
    match = _AUTH.match(authorization)
    if match is None:
        return "MissingAuthenticationTokenException", "Missing Authentication Token"
    if match["key"] != ACCESS_KEY:
        return "UnrecognizedClientException", "The security token included in the request is invalid."
    stamp = headers.get("x-amz-date", "")
    if match["service"] != "bedrock" or not stamp.startswith(match["date"]) or not _fresh(stamp):
        return "InvalidSignatureException", "Signature expired or its credential scope is wrong."
    expected = _signature(scope, headers, body, match, stamp)
    if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
        return "InvalidSignatureException", (
            "The request signature we calculated does not match the signature you provided. Check your AWS "
            "Secret Access Key and signing method. Consult the service documentation for details."
        )
    return None


def _signature(scope: Scope, headers: dict[str, str], body: bytes, match: re.Match[str], stamp: str) -> str:
    """The signature botocore computes for the request as received, with the simulator's secret. botocore is
    imported here, not with the module: the simulator runs without the `aws` extra (`modelyard demo`)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signed = match["signed"].split(";")
    raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
    query = scope.get("query_string", b"").decode("latin-1")
    url = f"http://{headers.get('host', 'localhost')}{raw_path.decode('latin-1')}" + (f"?{query}" if query else "")
    request = AWSRequest(method=scope["method"], url=url, headers={n: headers.get(n, "") for n in signed}, data=body)
    request.context["timestamp"] = stamp
    credentials = Credentials(ACCESS_KEY, SECRET_KEY, headers.get("x-amz-security-token"))
    auth = SigV4Auth(credentials, match["service"], match["region"])
    canonical = auth.canonical_request(request)
    signature: str = auth.signature(auth.string_to_sign(request, canonical), request)
    return signature


def _fresh(stamp: str) -> bool:
    try:
        when = timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return False
    return abs(time.time() - when) <= _MAX_SKEW_S


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        found[key] = f"{found[key]},{text}" if key in found else text
    return found


# ----------------------------------------------------------------------------- ASGI plumbing


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out the already-read body once, then the client's own messages (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _typed_errors(send: Send) -> Send:
    """`send` with Bedrock's `x-amzn-ErrorType` header on every error answer."""

    async def typed(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            name = error_type(message["status"]) + _ERROR_NAMESPACE
            message = {**message, "headers": [*message.get("headers", []), (b"x-amzn-errortype", name.encode())]}
        await send(message)

    return typed


async def _error(send: Send, status: int, name: str, message: str) -> None:
    body = BedrockWire().error("auth", message)[1]
    await asgi.respond(send, status, body, [(b"x-amzn-errortype", (name + _ERROR_NAMESPACE).encode())])
