"""AWS Bedrock egress: the Converse and ConverseStream APIs, signed with SigV4.

`POST {api_base}/model/{modelId}/converse` (`/converse-stream`), api_base by default
`https://bedrock-runtime.{region}.amazonaws.com`. `model:` is a model id (`anthropic.claude-3-haiku-...`), a
cross-region inference profile id (`us.anthropic.claude-3-5-sonnet-20241022-v2:0`) or an ARN; it is
percent-encoded into the path (`:` and `/` too), as the AWS SDKs do.

Credentials (`CredentialRefresh`), in this order:

* `api_key:` a Bedrock API key, sent as `Authorization: Bearer` (no signing);
* `options.aws_access_key_id` + `aws_secret_access_key` (+ `aws_session_token`): static keys;
* `options.profile`: a profile of the shared AWS config (SSO, assumed roles, credential_process...);
* otherwise botocore's default chain (environment, shared files, container and instance roles).

The chain is resolved once per deployment on a worker thread and cached; botocore's refreshable credentials
are refreshed (again on a worker thread) when they say they are about to expire, and a refused credential
(`credentials_rejected`) drops the cache. Each call is signed with botocore's `SigV4Auth` (service
`bedrock`, `options.region`) after its body is final; the signature covers the body's SHA-256.

The work is split by job: the request body (providers/bedrock_body.py), answers, usage and errors
(bedrock_parse.py), and the event-stream decoder and stream translator (bedrock_stream.py); this module
holds the adapter, its options, its URLs and the signing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

import msgspec

try:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
    from botocore.session import Session
except ImportError as exc:  # the `aws` extra: a config naming `provider: bedrock` says what to install
    raise ImportError("Bedrock deployments need botocore: pip install 'modelyard[aws]'") from exc

from modelyard.config.model import Deployment
from modelyard.config.providers import ProviderOptions
from modelyard.providers.base import Completion, HttpCall, StreamStamp
from modelyard.providers.bedrock_body import build_body, json_tool_name
from modelyard.providers.bedrock_parse import error_from_response, parse_converse
from modelyard.providers.bedrock_stream import BedrockStreamTranslator, EventStreamDecoder
from modelyard.schema.chat import ChatRequest, EmbeddingRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

#: The signing name of the Bedrock runtime (its endpoint is `bedrock-runtime`, its SigV4 service `bedrock`).
SIGNING_SERVICE = "bedrock"
_encode = msgspec.json.Encoder().encode


class BedrockOptions(ProviderOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of a Bedrock deployment."""

    #: The AWS region (`us-east-1`): the endpoint's and the signature's.
    region: Annotated[str, msgspec.Meta(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")]
    #: A profile of the shared AWS config files (`~/.aws/config`), instead of the default chain.
    profile: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    #: Send a json_schema `response_format` as Converse's `outputConfig.textFormat` (structured outputs, for
    #: models that have them) instead of the forced-tool emulation (providers/bedrock_body.py).
    structured_output: bool = False
    #: `guardrailConfig` of every request (`{guardrailIdentifier: ..., guardrailVersion: "1"}`).
    guardrail_config: dict[str, Any] | None = None
    #: `additionalModelRequestFields`: model-specific fields (`{top_k: 50}`, Claude's `thinking`).
    additional_model_request_fields: dict[str, Any] | None = None
    #: `performanceConfig` (`{latency: optimized}`).
    performance_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("aws_access_key_id and aws_secret_access_key go together")
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ValueError("aws_session_token needs aws_access_key_id and aws_secret_access_key")
        if self.profile is not None and self.aws_access_key_id is not None:
            raise ValueError("give either profile or explicit keys, not both")


@dataclass(slots=True)
class _Cached:
    """A deployment's resolved credentials, and what they were resolved from (a reload may change it)."""

    source: tuple[str | None, ...]
    credentials: Credentials


class BedrockAdapter:
    """The Bedrock Converse wire format, with SigV4 signing and AWS event-stream framing."""

    name: ClassVar[str] = "bedrock"
    options_type: ClassVar[type[BedrockOptions]] = BedrockOptions

    def __init__(self) -> None:
        #: Deployment name → its resolved credentials (the one state this adapter keeps).
        self._cache: dict[str, _Cached] = {}

    # ------------------------------------------------------------------ requests

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        opts: BedrockOptions = dep.options
        body = build_body(opts, req)
        url = f"{_base(dep)}/model/{quote(dep.model, safe='')}/{'converse-stream' if stream else 'converse'}"
        headers = {"Content-Type": "application/json", "Accept": _accept(stream)}
        if dep.headers:
            headers.update(dep.headers)
        return HttpCall("POST", url, headers, _encode(body))

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        raise GatewayError(400, f"deployment {dep.name!r} (Bedrock Converse) does not serve embeddings", param="model")

    # ------------------------------------------------------------------ answers

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        return parse_converse(body, dep.model, _json_tool(dep, req))

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        raise ProviderError(ErrorKind.BAD_REQUEST, "Bedrock Converse does not serve embeddings")

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> BedrockStreamTranslator:
        return BedrockStreamTranslator(StreamStamp(model=dep.model), _json_tool(dep, req))

    def stream_decoder(self, dep: Deployment) -> EventStreamDecoder:
        return EventStreamDecoder()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        return error_from_response(status, headers, body)

    # ------------------------------------------------------------------ credentials (CredentialRefresh)

    async def authorize(self, dep: Deployment, call: HttpCall) -> HttpCall:
        if dep.api_key:  # a Bedrock API key: a bearer token, nothing to sign
            return HttpCall(
                call.method, call.url, {**call.headers, "Authorization": f"Bearer {dep.api_key}"}, call.body
            )
        credentials = await self._frozen(dep)
        opts: BedrockOptions = dep.options
        return sign(call, credentials, opts.region)

    def credentials_rejected(self, dep: Deployment) -> None:
        self._cache.pop(dep.name, None)

    async def _frozen(self, dep: Deployment) -> ReadOnlyCredentials:
        source = _source(dep.options)
        cached = self._cache.get(dep.name)
        if cached is None or cached.source != source:
            credentials = await asyncio.to_thread(resolve_credentials, dep.options)
            cached = self._cache[dep.name] = _Cached(source, credentials)
        creds = cached.credentials
        if isinstance(creds, RefreshableCredentials) and creds.refresh_needed():
            frozen: ReadOnlyCredentials = await asyncio.to_thread(creds.get_frozen_credentials)
            return frozen
        return creds.get_frozen_credentials()


# ============================================================================ signing and credentials


def sign(call: HttpCall, credentials: ReadOnlyCredentials, region: str) -> HttpCall:
    """`call` with SigV4 headers (`Authorization`, `X-Amz-Date`, `X-Amz-Security-Token`) by botocore.

    The host is signed as the URL names it (the transport sends that same `host` header itself)."""
    request = AWSRequest(method=call.method, url=call.url, headers=dict(call.headers), data=call.body)
    SigV4Auth(credentials, SIGNING_SERVICE, region).add_auth(request)
    headers = dict(call.headers)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value
    return HttpCall(call.method, call.url, headers, call.body)


def resolve_credentials(opts: BedrockOptions) -> Credentials:
    """The deployment's credentials: explicit keys, a profile, or botocore's default chain (blocking: it
    may read files and call endpoints; run it on a worker thread)."""
    if opts.aws_access_key_id is not None and opts.aws_secret_access_key is not None:
        return Credentials(opts.aws_access_key_id, opts.aws_secret_access_key, opts.aws_session_token)
    session = Session(profile=opts.profile)
    credentials = session.get_credentials()
    if credentials is None:
        raise ProviderError(
            ErrorKind.AUTH, "no AWS credentials found (environment, shared files, roles)", untranslatable=True
        )
    return credentials


def _source(opts: BedrockOptions) -> tuple[str | None, ...]:
    return (opts.profile, opts.aws_access_key_id, opts.aws_secret_access_key, opts.aws_session_token)


def _base(dep: Deployment) -> str:
    opts: BedrockOptions = dep.options
    return (dep.api_base or f"https://bedrock-runtime.{opts.region}.amazonaws.com").rstrip("/")


def _accept(stream: bool) -> str:
    return "application/vnd.amazon.eventstream" if stream else "application/json"


def _json_tool(dep: Deployment, req: ChatRequest) -> str | None:
    opts: BedrockOptions = dep.options
    return json_tool_name(opts, req)


__all__ = ["SIGNING_SERVICE", "BedrockAdapter", "BedrockOptions", "resolve_credentials", "sign"]
