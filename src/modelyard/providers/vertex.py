"""Vertex AI egress: Gemini (`provider: vertex`) and Claude (`provider: vertex_anthropic`) on Google Cloud.

Both speak their publisher's own wire format at a Vertex URL,
`{api_base}/v1/projects/{project}/locations/{location}/publishers/{google|anthropic}/models/{model}:{method}`,
and authenticate with an OAuth2 access token (`Authorization: Bearer`), never an API key. So each class is
its first-party adapter with the URL and headers replaced, plus the `CredentialRefresh` capability
(`VertexCredentials`): tokens from google-auth (a service-account file or Application Default Credentials),
refreshed before they expire (providers/vertex_auth.py).

Gemini: generateContent / streamGenerateContent?alt=sse with the Gemini body unchanged; embeddings through
`:predict` (Vertex has no batchEmbedContents). Claude: `:rawPredict` / `:streamRawPredict` with Anthropic's
Messages body, less `model` (it is in the URL) and with `anthropic_version: vertex-2023-10-16`; answers and
streams are Anthropic's. `/v1/messages` passes through natively (thinking signatures, cache_control and the
client's other fields as sent; `anthropic-beta` forwarded), and token counting uses Vertex's
`count-tokens:rawPredict`. Errors: Vertex's own front end (auth, quota) answers in Google's error shape,
the Claude model itself in Anthropic's; `VertexAnthropicAdapter.error` reads both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Protocol

import msgspec

from modelyard.config.model import Deployment
from modelyard.providers import gemini_parse
from modelyard.providers.anthropic import AnthropicAdapter, AnthropicOptions, split_betas
from modelyard.providers.anthropic_body import build_body
from modelyard.providers.anthropic_native import check_format
from modelyard.providers.anthropic_parse import error_from_response as anthropic_error
from modelyard.providers.base import Completion, HttpCall, embeddings_answer
from modelyard.providers.gemini import GeminiAdapter, GeminiOptions, build_request
from modelyard.providers.vertex_auth import TokenSource, load_default, load_service_account
from modelyard.schema.chat import ChatRequest, EmbeddingRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

#: The `anthropic_version` Claude on Vertex takes in the body (no `anthropic-version` header there).
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
DEFAULT_LOCATION = "us-central1"

_encode = msgspec.json.Encoder().encode
_VERSION_SEGMENT = re.compile(r"^v\d+\w*$")
_Location = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]+$")]
_Project = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]+$")]


# ============================================================================ options


class VertexGeminiOptions(GeminiOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of a Gemini-on-Vertex deployment: the Gemini options plus where and as whom."""

    #: The Google Cloud project id.
    project: _Project
    #: The region (`us-central1`, `europe-west4`), a multi-region (`us`, `eu`) or `global`.
    location: _Location = DEFAULT_LOCATION
    #: A service-account key file; unset: Application Default Credentials.
    credentials_file: str | None = None
    #: A fixed access token instead (tests, or a token minted elsewhere): never refreshed.
    access_token: str | None = None
    #: The Vertex API version in the URL (`v1`, `v1beta1`).
    api_version: Annotated[str, msgspec.Meta(pattern=r"^v\d+\w*$")] = "v1"


class VertexAnthropicOptions(AnthropicOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of a Claude-on-Vertex deployment: the Anthropic options plus where and as whom.

    `api_version` (inherited) still decides the body's rules (e.g. sampling fields); what Vertex reads is
    the body's `anthropic_version`.
    """

    project: _Project
    location: _Location = DEFAULT_LOCATION
    credentials_file: str | None = None
    access_token: str | None = None
    #: The body's `anthropic_version`.
    anthropic_version: str = VERTEX_ANTHROPIC_VERSION


class _Place(Protocol):
    """What both options Structs share: the project, the location and the credentials source."""

    project: str
    location: str
    credentials_file: str | None
    access_token: str | None


# ============================================================================ URLs


def default_base(location: str) -> str:
    """Vertex's endpoint for a location: the global one, a multi-region's, or the region's own."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    if location in ("us", "eu"):
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def _versioned_base(dep: Deployment, opts: _Place, version: str) -> str:
    base = (dep.api_base or default_base(opts.location)).rstrip("/")
    if _VERSION_SEGMENT.match(base.rsplit("/", 1)[-1]):  # api_base may already name the version
        return base
    return f"{base}/{version}"


def publisher_url(dep: Deployment, publisher: str, method: str, *, version: str = "v1", model: str = "") -> str:
    """`.../projects/{project}/locations/{location}/publishers/{publisher}/models/{model}:{method}`; a model
    that is a full resource name (`projects/.../endpoints/123`, a tuned model) is used as its path."""
    opts: _Place = dep.options
    base = _versioned_base(dep, opts, version)
    model = model or dep.model
    if "/" in model:
        return f"{base}/{model.lstrip('/')}:{method}"
    return f"{base}/projects/{opts.project}/locations/{opts.location}/publishers/{publisher}/models/{model}:{method}"


def _json_headers(dep: Deployment) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if dep.headers:
        headers.update(dep.headers)
    return headers


# ============================================================================ credentials


class VertexCredentials:
    """The `CredentialRefresh` capability both Vertex adapters share: one `TokenSource` per credentials
    source (a key file, or ADC), so deployments that use the same file share one token."""

    def __init__(self) -> None:
        self._sources: dict[str, TokenSource] = {}

    def token_source(self, opts: _Place) -> TokenSource:
        key = f"file:{opts.credentials_file}" if opts.credentials_file else "adc"
        source = self._sources.get(key)
        if source is None:
            path = opts.credentials_file
            source = TokenSource((lambda: load_service_account(path)) if path else load_default)
            self._sources[key] = source
        return source

    async def authorize(self, dep: Deployment, call: HttpCall) -> HttpCall:
        """`call` with `Authorization: Bearer <token>` (refreshed before expiry, on a worker thread)."""
        opts: _Place = dep.options
        token = opts.access_token or await self.token_source(opts).token()
        headers = dict(call.headers)
        headers["Authorization"] = f"Bearer {token}"
        return HttpCall(call.method, call.url, headers, call.body)

    def credentials_rejected(self, dep: Deployment) -> None:
        opts: _Place = dep.options
        if not opts.access_token:
            self.token_source(opts).reject()


# ============================================================================ Gemini on Vertex


class VertexGeminiAdapter(GeminiAdapter, VertexCredentials):
    """Gemini on Vertex AI: the Gemini wire format at a Vertex publisher URL, with OAuth2 tokens."""

    name: ClassVar[str] = "vertex"
    options_type: ClassVar[type[VertexGeminiOptions]] = VertexGeminiOptions

    def __init__(self) -> None:
        VertexCredentials.__init__(self)

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        body = build_request(dep, req, raw)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return HttpCall("POST", self._url(dep, method), _json_headers(dep), _encode(body))

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        """Vertex's text-embedding `:predict`: one instance per input, `outputDimensionality` as a parameter."""
        opts: VertexGeminiOptions = dep.options
        instances: list[dict[str, Any]] = []
        for text in _embedding_texts(req):
            instance: dict[str, Any] = {"content": text}
            if opts.task_type:
                instance["task_type"] = opts.task_type
            instances.append(instance)
        body: dict[str, Any] = {"instances": instances}
        if req.dimensions is not None:
            body["parameters"] = {"outputDimensionality": req.dimensions}
        return HttpCall("POST", self._url(dep, "predict"), _json_headers(dep), _encode(body))

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        """`{"predictions": [{"embeddings": {"values", "statistics": {"token_count"}}}]}` → OpenAI's shape."""
        data = gemini_parse.decode_object(body)
        predictions = data.get("predictions")
        if not isinstance(predictions, list):
            raise ProviderError(ErrorKind.SERVER, "malformed embeddings response: no predictions")
        items: list[dict[str, Any]] = []
        prompt = 0
        for index, prediction in enumerate(predictions):
            found = prediction.get("embeddings") if isinstance(prediction, dict) else None
            if not isinstance(found, dict) or not isinstance(found.get("values"), list):
                raise ProviderError(ErrorKind.SERVER, "malformed embeddings response: a prediction has no values")
            values = [float(v) for v in found["values"]]
            stats = found.get("statistics")
            prompt += int(stats.get("token_count") or 0) if isinstance(stats, dict) else 0
            embedding: Any = _float32_base64(values) if req.encoding_format == "base64" else values
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        return embeddings_answer(items, dep.model, prompt)

    @staticmethod
    def _url(dep: Deployment, method: str) -> str:
        opts: VertexGeminiOptions = dep.options
        return publisher_url(dep, "google", method, version=opts.api_version)


def _embedding_texts(req: EmbeddingRequest) -> list[str]:
    value = req.input
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, str) for item in value):
        return [str(item) for item in value]
    raise GatewayError(400, "Vertex AI embeds text only; token-id input is not supported", param="input")


def _float32_base64(values: list[float]) -> str:
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


# ============================================================================ Claude on Vertex


class VertexAnthropicAdapter(AnthropicAdapter, VertexCredentials):
    """Claude on Vertex AI: Anthropic's Messages wire at `:rawPredict` / `:streamRawPredict`, OAuth2 tokens.

    Besides the contract: `NativePassthrough` (`/v1/messages` as the client sent it), `TokenCounter`
    (Vertex's `count-tokens:rawPredict`) and `CredentialRefresh`.
    """

    name: ClassVar[str] = "vertex_anthropic"
    options_type: ClassVar[type[VertexAnthropicOptions]] = VertexAnthropicOptions

    def __init__(self) -> None:
        VertexCredentials.__init__(self)

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        body = vertex_body(dep, build_body(dep, req, raw, stream))
        return HttpCall("POST", _predict_url(dep, stream), _vertex_headers(dep, {}), _encode(body))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """Vertex's front end answers in Google's error shape (`{"error": {"code", "status"}}`), the model in
        Anthropic's (`{"type": "error", "error": {"type"}}`)."""
        if _google_shaped(body):
            return gemini_parse.error_from_response(status, headers, body)
        return anthropic_error(status, headers, body)

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        raise GatewayError(400, f"deployment {dep.name!r} (Claude on Vertex AI) does not serve embeddings")

    # ------------------------------------------------------------------ native pass-through

    def native_call(
        self,
        dep: Deployment,
        fmt: str,
        body: dict[str, Any],
        stream: bool,
        headers: Mapping[str, str],
        *,
        raw: bytes = b"",
    ) -> HttpCall:
        """The client's Messages body with `model` moved to the URL and `anthropic_version` set: its own bytes
        where `"model": ...` can be swapped for `"anthropic_version": ...` exactly once, else re-encoded in
        its key order. Thinking signatures, cache_control and every other field go out as the client sent
        them; the client's `anthropic-beta` values are forwarded with the deployment's."""
        check_format(fmt)
        opts: VertexAnthropicOptions = dep.options
        return HttpCall(
            "POST",
            _predict_url(dep, stream),
            _vertex_headers(dep, headers),
            native_vertex_body(body, raw, opts.anthropic_version, stream),
        )

    # ------------------------------------------------------------------ token counting

    def count_tokens_call(self, dep: Deployment, req: ChatRequest) -> HttpCall:
        body = build_body(dep, req, {}, stream=False)
        for key in ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata"):
            body.pop(key, None)
        return self._count_call(dep, body, {})

    def native_count_tokens_call(self, dep: Deployment, body: dict[str, Any], headers: Mapping[str, str]) -> HttpCall:
        out = dict(body)
        out["model"] = dep.model
        return self._count_call(dep, out, headers)

    @staticmethod
    def _count_call(dep: Deployment, body: dict[str, Any], headers: Mapping[str, str]) -> HttpCall:
        """Vertex's count-tokens endpoint: the model stays in the body, `anthropic_version` is added."""
        opts: VertexAnthropicOptions = dep.options
        body.setdefault("anthropic_version", opts.anthropic_version)
        url = publisher_url(dep, "anthropic", "rawPredict", model="count-tokens")
        return HttpCall("POST", url, _vertex_headers(dep, headers), _encode(body))


def vertex_body(dep: Deployment, body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body as Vertex takes it: no `model`, `anthropic_version` first."""
    opts: VertexAnthropicOptions = dep.options
    out: dict[str, Any] = {"anthropic_version": opts.anthropic_version}
    out.update((key, value) for key, value in body.items() if key not in ("model", "anthropic_version"))
    return out


def native_vertex_body(body: dict[str, Any], raw: bytes, version: str, stream: bool) -> bytes:
    """The bytes to send for a client's Messages body (see `VertexAnthropicAdapter.native_call`)."""
    spliced = _swap_model(raw, body, version) if bool(body.get("stream")) == stream else None
    if spliced is not None:
        return spliced
    out: dict[str, Any] = {"anthropic_version": version}
    out.update((key, value) for key, value in body.items() if key not in ("model", "anthropic_version"))
    if stream:
        out["stream"] = True
    else:
        out.pop("stream", None)
    return _encode(out)


def _swap_model(raw: bytes, body: Mapping[str, Any], version: str) -> bytes | None:
    """`raw` with its one top-level `"model": "<value>"` pair replaced by `"anthropic_version": "<version>"`;
    None when that pair is not found exactly once as the client spelled it, or the body names a version."""
    value = body.get("model")
    if not raw or not isinstance(value, str) or "anthropic_version" in body:
        return None
    pattern = rb'"model"\s*:\s*' + re.escape(msgspec.json.encode(value))
    found = re.findall(pattern, raw)
    if len(found) != 1:
        return None
    start = raw.find(found[0])
    return raw[:start] + b'"anthropic_version":' + msgspec.json.encode(version) + raw[start + len(found[0]) :]


def _predict_url(dep: Deployment, stream: bool) -> str:
    return publisher_url(dep, "anthropic", "streamRawPredict" if stream else "rawPredict")


def _vertex_headers(dep: Deployment, client: Mapping[str, str]) -> dict[str, str]:
    """JSON, the deployment's `beta` and the client's `anthropic-beta` values (the ingress filtered them)."""
    opts: VertexAnthropicOptions = dep.options
    headers = _json_headers(dep)
    betas = split_betas(opts.beta)
    for beta in split_betas(client.get("anthropic-beta")):
        if beta not in betas:
            betas.append(beta)
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    return headers


def _google_shaped(body: bytes) -> bool:
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    return isinstance(err, dict) and data.get("type") != "error" and ("status" in err or "code" in err)


__all__ = [
    "DEFAULT_LOCATION",
    "VERTEX_ANTHROPIC_VERSION",
    "VertexAnthropicAdapter",
    "VertexAnthropicOptions",
    "VertexCredentials",
    "VertexGeminiAdapter",
    "VertexGeminiOptions",
    "default_base",
    "native_vertex_body",
    "publisher_url",
    "vertex_body",
]
