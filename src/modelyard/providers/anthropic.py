"""Anthropic Messages API egress: canonical (OpenAI-shaped) requests out, Anthropic answers back.

Anthropic differs from OpenAI in ways that each need a rule here: the system prompt is a top-level field,
turns must alternate (so consecutive same-role messages are merged), tool results travel as `tool_result`
blocks inside a user turn, `max_tokens` is required, and streams are typed events (message_start,
content_block_*, message_delta, message_stop) instead of chunks. Usage counts input tokens without the
cached ones, so the prompt count is rebuilt as OpenAI counts it (input + cache read + cache write).

Two paths. Translated (any ingress): thinking blocks keep their `signature` in a `thinking_blocks` extension
on the canonical assistant message and delta (the shape LiteLLM and others use), and signed blocks a client
returns go back to Anthropic as they came; unsigned ones (reasoning another vendor produced) are dropped,
since Anthropic refuses them. Native pass-through (`/v1/messages` to an Anthropic deployment,
`NativePassthrough`): the client's body goes out with only `model` rewritten and the provider's bytes come
back unchanged, parsed only for usage, the model and the first-byte failover decision. `TokenCounter`: the
provider's own `/v1/messages/count_tokens`.

The work is split by job: the request body (providers/anthropic_body.py), answers, usage and errors
(anthropic_parse.py), the translated stream (anthropic_stream.py) and native pass-through
(anthropic_native.py); this module holds the adapter, its options, and the URLs and headers it sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import msgspec

from modelyard.config.model import Deployment
from modelyard.config.providers import ProviderOptions
from modelyard.providers.anthropic_body import TOOL_ERROR_MARKER, build_body, build_messages, signed_thinking_blocks
from modelyard.providers.anthropic_native import (
    NATIVE_FORMAT,
    NativeAnthropicStream,
    check_format,
    native_body,
    native_completion,
)
from modelyard.providers.anthropic_parse import (
    classify,
    decode_object,
    error_from_event,
    error_from_response,
    finish_reason,
    parse_message,
    usage_from,
)
from modelyard.providers.anthropic_stream import AnthropicStreamTranslator
from modelyard.providers.base import Completion, HttpCall, StreamStamp
from modelyard.schema.chat import ChatRequest, EmbeddingRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

DEFAULT_BASE = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"

_encode = msgspec.json.Encoder().encode


class AnthropicOptions(ProviderOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of an Anthropic deployment."""

    #: The `anthropic-version` header (quote it in YAML: an unquoted date is not a string).
    api_version: Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")] = DEFAULT_VERSION
    #: False for models that reject temperature/top_p/top_k (versions from 2026-10-21 reject them anyway).
    sampling: bool = True
    #: The `anthropic-beta` header: one feature name or a list of them.
    beta: str | list[str] | None = None


# --------------------------------------------------------------------------- URLs and headers


def _headers(dep: Deployment) -> dict[str, str]:
    opts: AnthropicOptions = dep.options
    headers = {"content-type": "application/json", "anthropic-version": opts.api_version}
    if dep.api_key:
        headers["x-api-key"] = dep.api_key
    beta = opts.beta
    if beta:
        headers["anthropic-beta"] = beta if isinstance(beta, str) else ",".join(beta)
    if dep.headers:
        headers.update(dep.headers)
    return headers


def _url(dep: Deployment, endpoint: str = "/messages") -> str:
    base = (dep.api_base or DEFAULT_BASE).rstrip("/")
    return base + (endpoint if base.endswith("/v1") else "/v1" + endpoint)


def split_betas(value: str | list[str] | None) -> list[str]:
    """`anthropic-beta` values: a comma-separated header or a list, trimmed, empty ones dropped."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def _native_headers(dep: Deployment, client: Mapping[str, str]) -> dict[str, str]:
    """The deployment's headers, with the client's `anthropic-version` and its betas added to the deployment's.

    `client` holds only what the gateway let through (the ingress filters `anthropic-beta` by its
    allowlist before this point); the credential is always the deployment's.
    """
    headers = _headers(dep)
    version = client.get("anthropic-version")
    if version:
        headers["anthropic-version"] = version
    betas = split_betas(headers.get("anthropic-beta"))
    for beta in split_betas(client.get("anthropic-beta")):
        if beta not in betas:
            betas.append(beta)
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    return headers


def _no_embeddings(dep: Deployment) -> GatewayError:
    return GatewayError(400, f"deployment {dep.name!r} (Anthropic) does not serve embeddings", param="model")


# --------------------------------------------------------------------------- adapter


class AnthropicAdapter:
    """Anthropic's Messages API (api.anthropic.com or a compatible endpoint).

    Besides the contract: `NativePassthrough` for `anthropic-messages` bodies and `TokenCounter`.
    """

    name: ClassVar[str] = "anthropic"
    options_type: ClassVar[type[AnthropicOptions]] = AnthropicOptions
    native_formats: ClassVar[frozenset[str]] = frozenset({NATIVE_FORMAT})

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        body = build_body(dep, req, raw, stream)
        return HttpCall("POST", _url(dep), _headers(dep), _encode(body))

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        data = decode_object(body)
        if data.get("type") == "error":
            raise error_from_event(data, after_first_byte=False)
        return parse_message(data, dep.model)

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(StreamStamp(model=dep.model))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        return error_from_response(status, headers, body)

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        raise _no_embeddings(dep)

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        raise _no_embeddings(dep)

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
        """The client's Messages body with only `model` rewritten: its own bytes where the model can be spliced
        in (`with_model`), else re-encoded with the key order kept; everything else (thinking and its
        signatures, cache_control, citations, documents, server tools, metadata, context_management) goes out
        as the client sent it."""
        check_format(fmt)
        return HttpCall("POST", _url(dep), _native_headers(dep, headers), native_body(body, raw, dep.model, stream))

    def parse_native(self, dep: Deployment, fmt: str, body: bytes) -> Completion:
        """The provider's bytes kept as `native` (sent on unchanged); usage and model read for accounting."""
        check_format(fmt)
        return native_completion(body, dep.model)

    def native_stream(self, dep: Deployment, fmt: str) -> NativeAnthropicStream:
        check_format(fmt)
        return NativeAnthropicStream(dep.model)

    # ------------------------------------------------------------------ token counting

    def count_tokens_call(self, dep: Deployment, req: ChatRequest) -> HttpCall:
        """`/v1/messages/count_tokens` for a canonical request (the Messages body without max_tokens)."""
        body = build_body(dep, req, {}, stream=False)
        for key in ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata"):
            body.pop(key, None)
        return HttpCall("POST", _url(dep, "/messages/count_tokens"), _headers(dep), _encode(body))

    def native_count_tokens_call(self, dep: Deployment, body: dict[str, Any], headers: Mapping[str, str]) -> HttpCall:
        """`/v1/messages/count_tokens` for the client's own count_tokens body (only `model` rewritten)."""
        out = dict(body)
        out["model"] = dep.model
        return HttpCall("POST", _url(dep, "/messages/count_tokens"), _native_headers(dep, headers), _encode(out))

    def parse_count_tokens(self, dep: Deployment, body: bytes) -> int:
        data = decode_object(body)
        count = data.get("input_tokens")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ProviderError(ErrorKind.SERVER, "malformed count_tokens answer: no input_tokens")
        return count


__all__ = [
    "NATIVE_FORMAT",
    "TOOL_ERROR_MARKER",
    "AnthropicAdapter",
    "AnthropicStreamTranslator",
    "NativeAnthropicStream",
    "build_body",
    "build_messages",
    "classify",
    "finish_reason",
    "parse_message",
    "signed_thinking_blocks",
    "split_betas",
    "usage_from",
]
