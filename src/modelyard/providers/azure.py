"""Azure OpenAI egress: OpenAI's wire format at Azure's URLs, with Azure's credentials and refusals.

What differs from OpenAI, and only that, lives here (the bodies and answers are OpenAI's: `OpenAIAdapter`):

* **where**: `{api_base}/openai/deployments/{deployment}/{path}?api-version={api_version}` (the dated API;
  `model:` is the Azure *deployment* name), or the v1 API (`api_version: v1`: `{api_base}/openai/v1/{path}`,
  the deployment name as the body's `model`), which Azure made GA in August 2025 and which the Responses API
  needs;
* **who**: an `api-key` header, or Microsoft Entra ID bearer tokens from azure-identity (a client secret, or
  `DefaultAzureCredential`'s chain), fetched on a worker thread, cached per deployment and refreshed before
  they expire (`CredentialRefresh`);
* **refusals**: Azure's content filter (a 400 `content_filter` for the prompt, `finish_reason:
  "content_filter"` for the answer) is `ErrorKind.CONTENT_FILTER`, so `failover_on_content_filter` applies;
  a 429's wait comes from `retry-after-ms`, `retry-after`, `x-ratelimit-reset-*` or the message's "retry
  after N seconds".
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import msgspec

from modelyard.config.model import Deployment
from modelyard.providers.base import (
    Completion,
    HttpCall,
    SSEEvent,
    StreamStamp,
    decode_object,
    parse_retry_after,
    upstream_error,
)
from modelyard.providers.bearer_token import BearerToken
from modelyard.providers.openai import OpenAIAdapter, OpenAIOptions, OpenAIStreamTranslator, classify
from modelyard.schema.chat import ChatRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["DEFAULT_API_VERSION", "ENTRA_SCOPE", "AzureAdapter", "AzureOptions", "AzureStreamTranslator"]

#: The latest GA version of the dated data-plane API (inference). `v1` selects the version-less v1 API.
DEFAULT_API_VERSION = "2024-10-21"
V1 = "v1"
#: The scope of an Entra ID token for Azure OpenAI (Cognitive Services).
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"

_RETRY_IN_MESSAGE = re.compile(r"retry after (\d+(?:\.\d+)?) seconds?", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: Headers that say when a limit resets (Azure sends seconds; OpenAI's style `6m0s` is read too).
_RESET_HEADERS = (
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-rate-limit-reset-requests",
    "x-rate-limit-reset-tokens",
)
#: Paths outside a deployment on the dated API (the Responses API lives at `/openai/responses`).
_UNSCOPED = ("responses",)


class AzureOptions(OpenAIOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of an Azure OpenAI deployment (OpenAI's options, plus where and how to authenticate)."""

    #: A dated data-plane version (`2024-10-21`, `2025-04-01-preview`) or `v1` for the v1 API.
    api_version: str = DEFAULT_API_VERSION
    #: Authenticate with Microsoft Entra ID instead of `api_key` (DefaultAzureCredential unless a client
    #: secret is given; `client_id` then names a user-assigned managed identity).
    entra_id: bool = False
    tenant_id: str | None = None
    client_id: str | None = None
    #: A service principal's secret: with `tenant_id` and `client_id`, ClientSecretCredential (implies entra_id).
    client_secret: str | None = None
    #: The Entra authority host for sovereign or private clouds (`login.microsoftonline.us`).
    authority_host: str | None = None
    #: Skip MSAL's instance discovery (an authority MSAL does not know: Azure Stack, a private cloud).
    disable_instance_discovery: bool = False
    token_scope: str = ENTRA_SCOPE

    def __post_init__(self) -> None:
        if self.client_secret is not None and not (self.tenant_id and self.client_id):
            raise ValueError("client_secret needs tenant_id and client_id")
        if not self.api_version.strip():
            raise ValueError("api_version must not be empty")

    @property
    def uses_entra(self) -> bool:
        return self.entra_id or self.client_secret is not None


class AzureAdapter(OpenAIAdapter):
    """Azure OpenAI deployments. One instance per gateway: it keeps each Entra deployment's credential and
    token (the only state, as `CredentialRefresh` allows)."""

    name: ClassVar[str] = "azure"
    options_type: ClassVar[type[AzureOptions]] = AzureOptions

    def __init__(self) -> None:
        self._tokens: dict[str, BearerToken] = {}
        self._credentials: dict[str, TokenCredential] = {}

    # ------------------------------------------------------------------ where and who

    def url(self, dep: Deployment, path: str) -> str:
        opts: AzureOptions = dep.options
        base = _base(dep)
        if not base:
            raise GatewayError(400, f"deployment {dep.name!r} has no api_base (https://<resource>.openai.azure.com)")
        version = opts.api_version
        if version == V1:
            return f"{base}/openai/v1/{path}"
        if path.startswith(_UNSCOPED):
            return f"{base}/openai/{path}?api-version={quote(version, safe='')}"
        deployment = quote(dep.model, safe="")
        return f"{base}/openai/deployments/{deployment}/{path}?api-version={quote(version, safe='')}"

    def auth_headers(self, dep: Deployment) -> dict[str, str]:
        """`api-key` (Entra deployments get their bearer token in `authorize`)."""
        headers = {"Content-Type": "application/json"}
        opts: AzureOptions = dep.options
        if dep.api_key and not opts.uses_entra:
            headers["api-key"] = dep.api_key
        if dep.headers:
            headers.update(dep.headers)
        return headers

    def response_object_call(self, dep: Deployment, method: str, response_id: str, tail: str = "") -> HttpCall:
        """As OpenAI's, with the tail's own path before Azure's `api-version` query."""
        tail_path, _, tail_query = tail.partition("?")
        url = self.url(dep, f"responses/{quote(response_id, safe='')}{tail_path}")
        if tail_query:
            url += ("&" if "?" in url else "?") + tail_query
        return HttpCall(method, url, self.auth_headers(dep), b"")

    # ------------------------------------------------------------------ Entra ID (CredentialRefresh)

    async def authorize(self, dep: Deployment, call: HttpCall) -> HttpCall:
        """An Entra deployment's call with its bearer token (providers/bearer_token.py: cached, fetched on a
        worker thread when due, one fetch per deployment at a time; a failed fetch keeps an unexpired token)."""
        opts: AzureOptions = dep.options
        if not opts.uses_entra:
            return call
        token = self._tokens.get(dep.name)
        if token is None:
            token = self._tokens[dep.name] = BearerToken(
                lambda: self._fetch(dep), clock=lambda: time.time(), keep_on_failure=True
            )
        call.headers["Authorization"] = f"Bearer {await token.token()}"
        return call

    def credentials_rejected(self, dep: Deployment) -> None:
        """Azure refused the token: forget it and the credential (whose own cache would hand it out again)."""
        token = self._tokens.get(dep.name)
        if token is not None:
            token.reject()
        self._credentials.pop(dep.name, None)

    def _fetch(self, dep: Deployment) -> tuple[str, float]:
        """A fresh token and its expiry (worker thread: azure-identity's chains block)."""
        credential = self._credentials.get(dep.name)
        if credential is None:
            credential = self._credentials[dep.name] = _credential(dep.options)
        opts: AzureOptions = dep.options
        got = credential.get_token(opts.token_scope)
        return got.token, float(got.expires_on)

    # ------------------------------------------------------------------ answers

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        """OpenAI's parse; an answer whose every choice Azure's filter withheld is a CONTENT_FILTER error."""
        completion = super().parse_chat(dep, req, body)
        choices = completion.body["choices"]
        if choices and all(c.get("finish_reason") == "content_filter" for c in choices if isinstance(c, dict)):
            raise _output_filtered(choices[0])
        return completion

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> AzureStreamTranslator:
        return AzureStreamTranslator(StreamStamp(model=dep.model))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        message, err_type, code, inner = _error_fields(body)
        if code == "content_filter" or inner.get("code") == "ResponsibleAIPolicyViolation":
            kind = ErrorKind.CONTENT_FILTER
            filtered = _filtered(inner.get("content_filter_result") or inner.get("content_filter_results"))
            if filtered:
                message = f"{message} (filtered: {filtered})".strip()
        elif code == "DeploymentNotFound":
            kind = ErrorKind.BAD_REQUEST
        elif status in (401, 403):
            kind = ErrorKind.AUTH
        else:
            kind = classify(status, message, err_type, code)
        retry_after = rate_limit_wait(headers, message) if kind is ErrorKind.RATE_LIMITED else None
        if retry_after is None:
            retry_after = parse_retry_after(headers)
        return upstream_error(
            kind, f"provider answered {status}", message or f"HTTP {status}", status=status, retry_after=retry_after
        )


class AzureStreamTranslator(OpenAIStreamTranslator):
    """OpenAI's stream translator; an answer Azure's filter stops before any content was produced is a
    CONTENT_FILTER error (so the walk can fail over), after content it ends with `finish_reason:
    "content_filter"` as Azure sent it (the client has seen the beginning)."""

    def __init__(self, stamp: StreamStamp) -> None:
        super().__init__(stamp)
        self.answered = False

    def feed(self, event: SSEEvent) -> list[dict[str, Any] | msgspec.Raw]:
        out = super().feed(event)
        for chunk in out:
            if isinstance(chunk, msgspec.Raw):
                self.answered = True  # only plain content deltas pass through raw
                continue
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason") == "content_filter" and not self.answered:
                    raise _output_filtered(choice)
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
                    self.answered = True
        return out


# ----------------------------------------------------------------------------- helpers


def _base(dep: Deployment) -> str:
    """The resource endpoint (`https://<resource>.openai.azure.com`), with a pasted `/openai` suffix cut."""
    base = (dep.api_base or "").rstrip("/")
    for suffix in ("/openai/v1", "/openai"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _credential(opts: AzureOptions) -> TokenCredential:
    """The azure-identity credential the options describe (imported here: azure-identity is an extra)."""
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    extra: dict[str, Any] = {}
    if opts.authority_host:
        extra["authority"] = opts.authority_host
    if opts.client_secret is not None:
        assert opts.tenant_id and opts.client_id  # AzureOptions checks it
        return ClientSecretCredential(
            opts.tenant_id,
            opts.client_id,
            opts.client_secret,
            disable_instance_discovery=opts.disable_instance_discovery,
            **extra,
        )
    if opts.tenant_id:
        extra["tenant_id"] = opts.tenant_id
    if opts.client_id:
        extra["managed_identity_client_id"] = opts.client_id
    return DefaultAzureCredential(**extra)


def rate_limit_wait(headers: Mapping[str, str], message: str = "") -> float | None:
    """Seconds a 429 asks to wait: `retry-after-ms`, `retry-after`, else the latest `x-ratelimit-reset-*`
    (Azure sends seconds, OpenAI durations such as `6m0s`), else the message's "retry after N seconds"."""
    found = parse_retry_after(headers)
    if found is not None:
        return found
    lowered = {k.lower(): v for k, v in headers.items()}
    resets = [wait for name in _RESET_HEADERS if (wait := _duration(lowered.get(name))) is not None]
    if resets:
        return max(resets)
    match = _RETRY_IN_MESSAGE.search(message)
    return float(match.group(1)) if match else None


def _duration(value: str | None) -> float | None:
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _error_fields(body: bytes) -> tuple[str, str, str, dict[str, Any]]:
    """(message, type, code, innererror) of an Azure error body (OpenAI's shape plus `innererror`)."""
    try:
        data = decode_object(body)
    except ProviderError:
        return body[:200].decode("utf-8", "replace").strip(), "", "", {}
    err = data.get("error")
    if not isinstance(err, dict):
        return str(data.get("message") or ""), "", str(data.get("code") or ""), {}
    inner = err.get("innererror") or err.get("inner_error")
    return (
        str(err.get("message") or ""),
        str(err.get("type") or ""),
        str(err.get("code") or ""),
        inner if isinstance(inner, dict) else {},
    )


def _filtered(results: Any) -> str:
    """`violence (medium), jailbreak` from Azure's `content_filter_result(s)`: the categories that filtered."""
    if not isinstance(results, dict):
        return ""
    names = []
    for category, verdict in results.items():
        if isinstance(verdict, dict) and verdict.get("filtered"):
            severity = verdict.get("severity")
            names.append(f"{category} ({severity})" if isinstance(severity, str) else str(category))
    return ", ".join(names)


def _output_filtered(choice: Any) -> ProviderError:
    results = choice.get("content_filter_results") if isinstance(choice, dict) else None
    filtered = _filtered(results)
    text = "Azure's content filter withheld the answer" + (f" (filtered: {filtered})" if filtered else "")
    return upstream_error(ErrorKind.CONTENT_FILTER, "provider filtered the answer", text)
